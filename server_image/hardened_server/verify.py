"""`hardened-model verify`: is this exact artifact signed by whom we trust, and did it pass the gates?

Prints one JSON object (the verification result) and writes it to the
termination log, which is how the operator reads a verification Job's verdict
without ever downloading a model. Exit 0: verified (and gates passed when
given); 3: refused, with the reason; 2: bad arguments.
Used by the verification Job and as the serving pod's init container.
"""
from __future__ import annotations

import json
import pathlib
import sys

from hardened_model.signing import MODEL_DIR_NAME, SIGNATURE_NAME, TrustPolicy, verify_model


def verify(args) -> tuple[int, dict]:
    from hardened_model.gates import STATUS_METRICS, check_gates
    from hardened_model.spec import GatesSection

    root = pathlib.Path(args.artifact)
    if args.uri:  # s3:// -> download into --artifact first
        from hardened_model.artifacts import StoreError, StoreURI, download_version, s3_client

        store = StoreURI.parse(args.uri)
        parts = store.prefix.rsplit("/", 2)
        if store.scheme != "s3" or len(parts) < 2:
            return 2, {"verified": False, "reason": f"--uri must be s3://bucket/[prefix/]model/version, got {args.uri}"}
        prefix, model, version = (parts if len(parts) == 3 else ["", *parts])
        try:
            download_version(StoreURI("s3", store.bucket, prefix), model, version, root,
                             client=s3_client(region=args.region, endpoint=args.endpoint),
                             version_ids=json.loads(args.version_ids) if args.version_ids else None)
        except StoreError as exc:
            return 3, {"verified": False, "reason": str(exc)}
    try:
        policy = TrustPolicy(public_key=args.public_key, public_keys_pem=tuple(args.public_key_pem),
                             identity=args.identity, oidc_issuer=args.oidc_issuer,
                             trust_config=args.trust_config)
    except ValueError as exc:
        return 2, {"verified": False, "reason": str(exc)}
    res = verify_model(root / MODEL_DIR_NAME, root / SIGNATURE_NAME, policy)
    out = json.loads(res.to_json())
    if not res.verified:
        return 3, out
    if args.expect_digest and res.digest != args.expect_digest:
        out.update(verified=False, reason=f"digest {res.digest} is not the pinned {args.expect_digest}")
        return 3, out
    code, refusal = _countersignature(args, res.digest)
    if code:
        out.update(verified=False, reason=refusal)
        out.pop("files", None)
        return code, out
    if refusal:
        out["countersignature"] = refusal
    # the provenance is inside the signed directory: trusted from here on (hardened_model.provenance)
    from hardened_model import provenance as prov

    try:
        statement = prov.read(root / MODEL_DIR_NAME)
        summary = prov.summarize(statement) if statement is not None else None
    except prov.ProvenanceError as exc:
        statement, summary = None, None
        out.update(verified=False, reason=f"provenance: {exc}")
        return 3, out
    if summary is not None:
        out["provenance"] = summary.status()
    out["_statement"] = statement  # for --explain; run() drops it before printing JSON
    observed = _observed_trainer(args)
    if observed is not None:
        if observed.get("error"):
            return 2, {"verified": False, "reason": observed["error"]}
        out["observedTrainer"] = observed  # the operator pins it in the Deployment, for the init container
    if args.provenance_policy or observed is not None:
        try:
            policy = json.loads(args.provenance_policy) if args.provenance_policy else {}
            if not isinstance(policy, dict):
                raise ValueError(f"expected a JSON object, got {type(policy).__name__}")
        except ValueError as exc:
            return 2, {"verified": False, "reason": f"--provenance-policy: {exc}"}
        refused = prov.check_policy(statement, policy, model_files=res.files,
                                    observed_image=(observed or {}).get("image"),
                                    observed_image_id=(observed or {}).get("imageID"))
        if refused:
            out.update(verified=False, reason="signature verified; provenance refused: " + "; ".join(refused))
            out.pop("files", None)
            return 3, out
    metrics = json.loads((root / MODEL_DIR_NAME / "metrics.json").read_text())
    out["metrics"] = {k: metrics.get(k) for k in STATUS_METRICS if k in metrics or k in STATUS_METRICS[:4]}
    out.pop("files", None)
    if args.gates:
        try:
            gates = GatesSection.model_validate(json.loads(args.gates))
        except ValueError as exc:
            return 2, {"verified": False, "reason": f"--gates: {exc}"}
        results = check_gates(metrics, gates)
        out["gates"] = [r.describe() for r in results]
        out["gatesPassed"] = all(r.passed for r in results)
        if not out["gatesPassed"]:
            out["reason"] = "signature verified; gates failed: " + "; ".join(
                r.describe() for r in results if not r.passed)
            return 3, out
    return 0, out


def _observed_trainer(args) -> dict | None:
    """What the kubelet ran for the training pod, as the operator read it from the pod (issue 27): the trainer
    signs its own provenance, so only this record, which the trainer cannot write, binds the model to an
    image. None when not given (`hardened-model up` has no kubelet); an image ID alone is an error, since it
    says nothing without the reference it resolved."""
    image = getattr(args, "observed_trainer_image", None)
    image_id = getattr(args, "observed_trainer_image_id", None)
    node = getattr(args, "observed_trainer_node", None)
    if image is None and image_id is None and node is None:
        return None
    if not image:
        return {"error": "--observed-trainer-image-id and --observed-trainer-node need --observed-trainer-image "
                         "(what ran there)"}
    return {"image": image, **({"imageID": image_id} if image_id else {}), **({"node": node} if node else {})}


def _countersignature(args, digest: str) -> tuple[int, str | dict | None]:
    """(0, {"keyid", "time"}) when the platform's countersignature (issue 27, hardened_model.countersign)
    verifies with the platform key, names this digest (the one computed here from the bytes about to be
    served, not the pinned one) and this model; (3, reason) when it does not; (2, reason) for flags given
    without the others; (0, None) when none is given (`hardened-model up`, or the feature off). The tenant's
    signature was checked before this, and still must hold."""
    from hardened_model import countersign

    given = [getattr(args, k, None) for k in ("countersignature", "platform_public_key_pem", "expect_model")]
    if not any(given):
        return 0, None
    if not all(given) or "/" not in args.expect_model:
        return 2, ("--countersignature, --platform-public-key-pem and --expect-model NAMESPACE/NAME go together")
    namespace, name = args.expect_model.split("/", 1)
    try:
        countersign.keyid(args.platform_public_key_pem)
    except countersign.CountersignError as exc:
        return 2, f"--platform-public-key-pem: {exc}"
    try:
        statement = countersign.verify(args.countersignature, args.platform_public_key_pem)
    except countersign.CountersignError as exc:
        return 3, f"signature verified; countersignature refused: {exc}"
    refused = countersign.check(statement, digest=digest, namespace=namespace, name=name)
    if refused:
        return 3, "signature verified; countersignature refused: " + "; ".join(refused)
    return 0, {"keyid": countersign.keyid(args.platform_public_key_pem),
               "time": (statement.get("predicate") or {}).get("time")}


def run(args) -> int:
    code, out = verify(args)
    statement = out.pop("_statement", None)
    text = json.dumps(out, sort_keys=True)
    if getattr(args, "explain", False):
        print(explain(code, out, statement))
    else:
        print(text)
    if args.termination_log:
        try:
            pathlib.Path(args.termination_log).write_text(text[:4096])
        except OSError:
            pass
    if code:
        print(f"verify: refused: {out.get('reason')}", file=sys.stderr)
    return code


def explain(code: int, out: dict, statement: dict | None) -> str:
    """`verify --explain`: the verdict, then the provenance, for people."""
    from hardened_model.provenance import ProvenanceError
    from hardened_model.provenance import explain as explain_statement

    lines = [f"{'VERIFIED' if code == 0 else 'REFUSED'}: {out.get('reason')}"]
    for key, label in (("digest", "digest"), ("signer", "signer")):
        if out.get(key):
            lines.append(f"  {label + ':':<16}{out[key]}")
    for gate in out.get("gates") or []:
        lines.append(f"  gate:           {gate}")
    if statement is None:
        lines.append("No provenance: the model directory holds no provenance.json" if out.get("digest")
                     else "Provenance not shown: the signature did not verify, so nothing in the directory is trusted")
    else:
        try:
            lines.append(explain_statement(statement))
        except ProvenanceError as exc:
            lines.append(f"Provenance unreadable: {exc}")
    return "\n".join(lines)
