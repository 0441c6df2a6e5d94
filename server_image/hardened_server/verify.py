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
        policy = TrustPolicy(public_key=args.public_key, identity=args.identity, oidc_issuer=args.oidc_issuer,
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


def run(args) -> int:
    code, out = verify(args)
    text = json.dumps(out, sort_keys=True)
    print(text)
    if args.termination_log:
        try:
            pathlib.Path(args.termination_log).write_text(text[:4096])
        except OSError:
            pass
    if code:
        print(f"verify: refused: {out.get('reason')}", file=sys.stderr)
    return code
