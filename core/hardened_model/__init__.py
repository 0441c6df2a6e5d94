"""What the operator, the trainer and the server share, and nothing else (issue 17): every image installs it.

- ``spec``: the HardenedModel spec, the one definition of the API: pydantic models and CEL rules; parse,
  default, validate (pure); and the CRD's structural OpenAPI schema made from them (``spec.schema``);
- ``contracts``: the documents the parts exchange (docs/contracts.md): the trainer config, the serving config;
- ``signing``: signing and verification policy -> OpenSSF model signing calls (the trainer signs, ``verify``
  checks);
- ``provenance``: the in-toto / SLSA provenance statement signed with each model (issue 18);
- ``gates``: the verdict on a model's metrics (pure, torch-free);
- ``architectures``: the architecture registry, the built-ins and plugins' entry points (torch-free);
- ``networks``: the built-in networks and ``build_model`` (torch);
- ``artifacts``: the artifact stores (S3, volumes).
"""
