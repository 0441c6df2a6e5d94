"""Provenance: what a model was trained from, signed with it (issue 18).

The trainer writes ``model/provenance.json``, an in-toto Statement v1 with a SLSA provenance v1 predicate,
into the model directory *before* signing, so the one signature bundle (``model.sig``) covers it with the
weights: a verifier that checked the signature can trust every field, nothing can pair a model with another
run's provenance, and the verify Job and the serving pods' init container need no second bundle, key or
trust path. The price: the statement cannot name the directory's own digest as its subject (the digest
covers the statement), so its subjects are the directory's other files by sha256, which the signed
manifest binds in turn. A standalone attestation for `slsa-verifier` or `cosign verify-attestation` is not
produced (see docs/security.md).

Recorded (SLSA v1 field -> content):

- ``buildDefinition.externalParameters``: the training sections of the spec (wire form), their digest
  (the training version) and the model's name and namespace;
- ``buildDefinition.internalParameters``: seed, device;
- ``buildDefinition.resolvedDependencies``: the data (its digest as ``data.sha256`` defines it, each file
  read with its sha256 and S3 versionId), the trainer image (reference, and digest when the reference has
  one), ``model.initialWeights``;
- ``runDetails.builder``: the trainer, with the versions of hardened-model, Python, torch, opacus, ART,
  model-signing, sigstore, numpy and safetensors;
- ``runDetails.metadata``: the pod (invocation id), start and end time.

``check_policy`` enforces ``spec.signing.provenance``; ``explain`` prints a statement for people.

The trainer writes the statement and holds the signing key, so a signature proves only that the trainer
wrote it: an image that writes an allowed name into ``trainer-image`` would pass a check of the claim alone.
The operator therefore hands the verifier what the kubelet ran for the training pod (the pod spec's image
reference and the status imageID, issue 27); given those, the claim must match them and
``allowedTrainerImages`` is checked against the kubelet's reference (``check_observed``).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import dataclass

from .spec import to_wire

PROVENANCE_NAME = "provenance.json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://hardened.dev/HardenedModel/training/v1"
BUILDER_ID = "https://hardened.dev/trainer"
MAX_LISTED_FILES = 1000      # larger data sources record their digest only (recomputable from the files)
PACKAGES = ("hardened-model", "torch", "opacus", "adversarial-robustness-toolbox", "model-signing", "sigstore",
            "numpy", "safetensors")


class ProvenanceError(ValueError):
    """A provenance document that cannot be read (malformed JSON or shape)."""


def image_digest(reference: str | None) -> str | None:
    """The ``sha256:...`` of ``repo@sha256:...`` (or of a bare digest); None for a tag-only reference."""
    if not reference:
        return None
    if reference.startswith("sha256:"):
        return reference
    return reference.split("@", 1)[1] if "@sha256:" in reference else None


def image_repository(reference: str) -> str:
    """``ghcr.io/org/trainer`` of ``ghcr.io/org/trainer:0.1.0`` or ``...@sha256:...``."""
    repo = reference.split("@", 1)[0]
    head, _, last = repo.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def package_versions() -> dict[str, str | None]:
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_statement(model_dir: pathlib.Path, *, model: dict, training_spec: dict, spec_digest: str,
                    data: dict, trainer_image: str | None, initial_weights: dict | None, seed: int, device: str,
                    invocation_id: str | None, started: str, finished: str) -> dict:
    """The in-toto statement for the files now in ``model_dir`` (call it last, before signing).

    ``data``: {"source", "digest", "files": [{"name", "sha256", "size", "versionId"?}]}.
    """
    subjects = [{"name": p.relative_to(model_dir).as_posix(), "digest": {"sha256": file_sha256(p)}}
                for p in sorted(model_dir.rglob("*")) if p.is_file() and p.name != PROVENANCE_NAME]
    deps = [{"name": "data", "uri": data["source"], "digest": {"sha256": data["digest"]},
             "annotations": {"files": len(data["files"])}}]
    if len(data["files"]) <= MAX_LISTED_FILES:
        for f in data["files"]:
            dep = {"name": f"data/{f['name']}", "digest": {"sha256": f["sha256"]}, "annotations": {"size": f["size"]}}
            if f.get("versionId"):
                dep["annotations"]["versionId"] = f["versionId"]
            deps.append(dep)
    if trainer_image:
        dep = {"name": "trainer-image", "uri": f"oci://{trainer_image}"}
        if image_digest(trainer_image):
            dep["digest"] = {"sha256": image_digest(trainer_image).split(":", 1)[1]}
        deps.append(dep)
    if initial_weights:
        deps.append({"name": "initialWeights", "uri": initial_weights["uri"],
                     "digest": {"sha256": initial_weights["sha256"]}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"model": model, "spec": training_spec, "specDigest": spec_digest},
                "internalParameters": {"seed": seed, "device": device},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": package_versions()},
                "metadata": {**({"invocationId": invocation_id} if invocation_id else {}),
                             "startedOn": started, "finishedOn": finished},
            },
        },
    }


@dataclass(frozen=True)
class Summary:
    """The fields a policy and `kubectl get` care about."""

    data_source: str | None
    data_digest: str | None
    data_files: list[dict]
    trainer_image: str | None
    trainer_image_digest: str | None
    spec_digest: str | None
    versions: dict
    seed: int | None
    device: str | None
    started: str | None
    finished: str | None
    invocation_id: str | None
    initial_weights: dict | None
    subjects: list[dict]

    def status(self) -> dict:
        """What the verifier reports to the operator (status.artifact / status.serving)."""
        return {k: v for k, v in {"dataDigest": self.data_digest, "trainerImage": self.trainer_image,
                                  "trainerImageDigest": self.trainer_image_digest}.items() if v}


def summarize(statement: dict) -> Summary:
    try:
        if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
            raise ProvenanceError(f"not an in-toto SLSA v1 provenance statement (_type {statement.get('_type')!r}, "
                                  f"predicateType {statement.get('predicateType')!r})")
        pred = statement["predicate"]
        build, run = pred["buildDefinition"], pred["runDetails"]
        deps = {d.get("name"): d for d in build.get("resolvedDependencies") or []}
        data = deps.get("data") or {}
        image = deps.get("trainer-image") or {}
        image_ref = image.get("uri", "")[len("oci://"):] or None
        weights = deps.get("initialWeights")
        return Summary(
            data_source=data.get("uri"), data_digest=(data.get("digest") or {}).get("sha256"),
            data_files=[{"name": n[len("data/"):], "sha256": d["digest"]["sha256"], **(d.get("annotations") or {})}
                        for n, d in deps.items() if n and n.startswith("data/")],
            trainer_image=image_ref,
            trainer_image_digest=("sha256:" + image["digest"]["sha256"]) if image.get("digest") else None,
            spec_digest=build.get("externalParameters", {}).get("specDigest"),
            versions=dict(run.get("builder", {}).get("version") or {}),
            seed=build.get("internalParameters", {}).get("seed"),
            device=build.get("internalParameters", {}).get("device"),
            started=run.get("metadata", {}).get("startedOn"), finished=run.get("metadata", {}).get("finishedOn"),
            invocation_id=run.get("metadata", {}).get("invocationId"),
            initial_weights={"uri": weights.get("uri"), "sha256": weights["digest"]["sha256"]} if weights else None,
            subjects=list(statement.get("subject") or []))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProvenanceError(f"malformed provenance statement: missing or wrong {exc}") from None


def read(model_dir: pathlib.Path) -> dict | None:
    """The statement in a model directory (trust it only after the directory's signature verified)."""
    path = model_dir / PROVENANCE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProvenanceError(f"{PROVENANCE_NAME} is not JSON: {exc}") from None


def image_allowed(reference: str | None, allowed: list[str]) -> bool:
    """Does the recorded trainer image match an entry of signing.provenance.allowedTrainerImages?"""
    if not reference:
        return False
    digest = image_digest(reference)
    repo = image_repository(reference) if not reference.startswith("sha256:") else None
    for entry in allowed:
        if entry.startswith("sha256:"):
            if digest == entry:
                return True
        elif "@sha256:" in entry:
            if digest and repo and f"{repo}@{digest}" == entry:
                return True
        elif entry.endswith("/"):
            if repo and repo.startswith(entry):
                return True
        elif repo == image_repository(entry):
            return True
    return False


def kubelet_repo_digest(image_id: str | None) -> str | None:
    """The ``sha256:...`` manifest digest in a kubelet imageID (``repo@sha256:...``, Docker's
    ``docker-pullable://repo@sha256:...``); None for a bare ``sha256:...`` (or ``docker://sha256:...``): the
    runtime then reports the image's config digest, as containerd does for an image imported locally (``kind
    load``, ``ctr images import``) with no registry digest, and a config digest is not comparable with the
    manifest digest a reference ``repo@sha256:...`` names."""
    if not image_id:
        return None
    for scheme in ("docker-pullable://", "docker://"):
        if image_id.startswith(scheme):
            image_id = image_id[len(scheme):]
    return "sha256:" + image_id.split("@sha256:", 1)[1] if "@sha256:" in image_id else None


def check_observed(claimed: str | None, claimed_digest: str | None, *, observed_image: str,
                   observed_image_id: str | None) -> list[str]:
    """Refusals of a provenance whose trainer image is not what the kubelet ran. The operator set
    HARDENED_TRAINER_IMAGE to the pod spec's very reference, so the claim must equal it exactly; a digest the
    claim records must equal the repo digest the kubelet resolved. A bare config-digest imageID (see
    ``kubelet_repo_digest``) cannot be compared with a manifest digest: then the reference alone is compared,
    and the pod spec's reference is what the kubelet was told to run."""
    ran = f'"{observed_image}"' + (f" (imageID {observed_image_id})" if observed_image_id else "")
    if claimed != observed_image:
        said = f'says the model was trained by "{claimed}"' if claimed else "names no trainer image"
        return [f"signing.provenance: the provenance {said}, but the kubelet ran {ran}"]
    resolved = kubelet_repo_digest(observed_image_id)
    if claimed_digest and resolved and claimed_digest != resolved:
        return [f'signing.provenance: the provenance says the model was trained by "{claimed}", but the kubelet '
                f"ran {ran}: digest {resolved}, not {claimed_digest}"]
    return []


def check_policy(statement: dict | None, policy: dict, *, model_files: dict[str, str] | None = None,
                 observed_image: str | None = None, observed_image_id: str | None = None) -> list[str]:
    """Refusals (empty: accepted) of a signed provenance under ``policy``: spec.signing.provenance in wire form
    plus ``dataSha256`` (spec.data.sha256). ``model_files``: the signed manifest ({file: sha256}); every
    subject of the statement must be in it with the same digest. ``observed_image`` (and its
    ``observed_image_id``): what the kubelet ran for the training pod; given, the statement's trainer image
    must be it (``check_observed``) and ``allowedTrainerImages`` judges it instead of the trainer's claim,
    which the trainer, holding the signing key, could write as it liked. A missing statement is still refused
    only when the policy requires one."""
    allowed = policy.get("allowedTrainerImages")
    required = policy.get("required") or bool(allowed) or policy.get("requireDataDigest")
    pin = policy.get("dataSha256")
    if statement is None:
        if required:
            return [f"signing.provenance: the model has no {PROVENANCE_NAME} (trained before provenance was "
                    "recorded, or by another trainer) and the policy requires one"]
        return []
    try:
        s = summarize(statement)
    except ProvenanceError as exc:
        return [f"signing.provenance: {exc}"]
    problems = []
    if model_files is not None:
        for subj in s.subjects:
            want = (subj.get("digest") or {}).get("sha256")
            if model_files.get(subj.get("name")) != want:
                problems.append(f"provenance subject {subj.get('name')!r} (sha256 {want}) is not a signed file of "
                                "this model")
    if observed_image is not None:
        problems += check_observed(s.trainer_image, s.trainer_image_digest, observed_image=observed_image,
                                   observed_image_id=observed_image_id)
        judged, digest = observed_image, image_digest(observed_image)
        got = f'"{observed_image}" (the kubelet ran it for the training pod)'
    else:
        judged, digest = s.trainer_image, s.trainer_image_digest
        got = s.trainer_image or "no trainer image (trained outside a cluster?)"
    if allowed and not image_allowed(judged, allowed):
        hint = "" if digest or not judged or not any("sha256:" in a for a in allowed) else \
            " (the reference has no digest: give the trainer image by digest, repo@sha256:..., to match a digest)"
        problems.append(f"signing.provenance.allowedTrainerImages: the model was trained by {got}, which matches "
                        f"none of {allowed}{hint}")
    if policy.get("requireDataDigest") and not s.data_digest:
        problems.append("signing.provenance.requireDataDigest: the provenance records no data digest")
    if pin and s.data_digest and s.data_digest != pin:
        problems.append(f"data.sha256: the model was trained from data with sha256 {s.data_digest}, the spec pins "
                        f"{pin}")
    return problems


def explain(statement: dict) -> str:
    """The provenance for people (`hardened-model verify --explain`)."""
    s = summarize(statement)
    lines = ["Provenance (in-toto Statement v1, SLSA provenance v1), covered by the model's signature",
             f"  data:           {s.data_source}",
             f"    sha256:       {s.data_digest}"]
    for f in s.data_files[:20]:
        extra = f", versionId {f['versionId']}" if f.get("versionId") else ""
        lines.append(f"    {f['name']}: sha256 {f['sha256']} ({f.get('size')} bytes{extra})")
    if len(s.data_files) > 20:
        lines.append(f"    ... and {len(s.data_files) - 20} more files")
    lines += [f"  trainer image:  {s.trainer_image or '(none: trained outside a cluster)'}",
              f"    digest:       {s.trainer_image_digest or '(not recorded: the image was given by tag)'}",
              f"  spec digest:    {s.spec_digest}",
              f"  seed, device:   {s.seed}, {s.device}"]
    if s.initial_weights:
        lines.append(f"  initial weights: {s.initial_weights['uri']} (sha256 {s.initial_weights['sha256']})")
    lines.append(f"  run:            {s.started} .. {s.finished}" + (f" ({s.invocation_id})" if s.invocation_id else ""))
    lines.append("  versions:       " + ", ".join(f"{k} {v}" for k, v in s.versions.items() if v))
    lines.append("  covers:         " + ", ".join(f"{x['name']}" for x in s.subjects))
    return "\n".join(lines)


def policy_for(spec) -> dict | None:
    """The verifier's --provenance-policy for a spec: signing.provenance plus data.sha256 (None: nothing to check)."""
    policy = to_wire(spec.signing.provenance) if spec.signing.provenance is not None else {}
    if spec.data.sha256:
        policy["dataSha256"] = spec.data.sha256
    return policy or None
