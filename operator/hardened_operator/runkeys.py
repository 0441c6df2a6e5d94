"""Per-run signing keys (spec.signing.method ephemeral; issue 27, point 4): where the operator takes the one
public key a version's verifiers trust from, and where it never takes it from.

The trainer makes a P-256 key for its run, signs with it in memory and reports the public half in its
termination message. The kubelet copies that message into the training pod's status, which only the kubelet
(and whoever may write pods/status: not a tenant) can write. So:

- the verify Job gets the key read from the training pod's status in the pass that creates the Job
  (``reported``), never from the version's record ConfigMap (records.py): whoever may write ConfigMaps in
  the namespace could put their own key there and sign a swapped artifact with it;
- the serving Deployment gets the key from the verify Job's own arguments (``verified_with``), which the
  operator wrote, once that Job verified the version; a later pass, the Jobs gone, reads it back from the
  Deployment's annotation (``pinned``), also the operator's.

No private key exists outside the training process, so neither a tenant nor anyone with write access to the
artifact store holds a key the verifiers trust.
"""
from __future__ import annotations

REPORT_FIELD = "signingKey"  # the trainer's termination message field (hardened_trainer.__main__)


def _ec_public_pem(value) -> str | None:
    """``value`` when it is a PEM elliptic-curve public key, else None (the verifier would refuse it later;
    refusing here names the cause)."""
    if not isinstance(value, str) or "-----BEGIN PUBLIC KEY-----" not in value or len(value) > 4096:
        return None
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(value.encode())
    except ValueError:
        return None
    return value if isinstance(key, ec.EllipticCurvePublicKey) else None


def reported(train_message: dict | None) -> str | None:
    """The per-run public key in a training pod's termination message (as the kubelet recorded it), if it is
    one. Call it on the pods' message only, never on a record's."""
    return _ec_public_pem((train_message or {}).get(REPORT_FIELD))


def verified_with(verify_job: dict | None) -> str | None:
    """The key a verify Job was created to trust (its one ``--public-key-pem``), if it has exactly one."""
    containers = ((verify_job or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [])
    args = [a for c in containers for a in (c.get("args") or [])]
    keys = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--public-key-pem"]
    return _ec_public_pem(keys[0]) if len(keys) == 1 else None


def pinned(deployment: dict | None, annotation: str) -> str | None:
    """The per-run key the Deployment pins for the version it serves (its ``annotation``)."""
    return _ec_public_pem(((deployment or {}).get("metadata", {}).get("annotations") or {}).get(annotation))


def history_key(entry: dict) -> str | None:
    """The per-run key a status.history entry keeps for the version it names (written by the operator from the
    Deployment it served with; a rollback trusts it, not the version's record)."""
    return _ec_public_pem(entry.get("runKey"))


MISSING = ("the training pod's status holds no per-run public key (signing.method ephemeral), so nothing can "
           "verify this version: its pod is gone, or it did not report one. Delete the training Job to train "
           "the version again")
