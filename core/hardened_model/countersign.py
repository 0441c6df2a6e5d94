"""The platform's countersignature of a verified model (issue 27, point 4; SLSA Build L3).

The trainer signs its model with a key mounted into the training pod, so whatever runs as the trainer can
sign anything, and a verifier that trusts that key trusts the user-defined build step. With a platform key
configured (the chart's ``platformSigning``), the operator, after its verifier accepted a version, signs a
statement about that version with a key only the operator pod holds, and the serving pods' init container
requires it. The tenant never reaches the key the consumer trusts.

Format: an in-toto Statement v1 (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md)
whose subject is the model digest (the sha256 of model_signing's manifest, as the verifier reports it) and
whose predicate says what the platform observed: namespace, model, version, the verify verdict, the image
and imageID the kubelet ran for the training pod, the time. It is wrapped in a DSSE envelope
(https://github.com/secure-systems-lab/dsse, envelope.md and protocol.md): the signature is over
``PAE(payloadType, payload)``, never over the JSON as re-serialised, so what was signed is exactly the bytes
in ``payload``. ECDSA P-256 with SHA-256; ``keyid`` is the sha256 of the public key's DER, the same
fingerprint ``signing.public_key_fingerprint`` gives a tenant's key.

Why not model_signing: it signs a directory of files (its statement lists every file's hash), and the
operator never holds the files: it holds a verifier's report about a digest. This signs a statement about
that digest, which the init container holds against the digest it computes for the bytes it will serve.

Pure: nothing here reads the environment or the clock; the operator passes the key and the time.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://hardened.dev/countersignature/v1"


class CountersignError(ValueError):
    """A key that cannot sign or verify, or an envelope or statement that does not hold; the message says which."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's Pre-Authentication Encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths in
    ASCII decimal of the UTF-8 bytes (protocol.md). Signing this, not the payload alone, binds the type."""
    kind = payload_type.encode()
    return b" ".join([b"DSSEv1", str(len(kind)).encode(), kind, str(len(payload)).encode(), payload])


def build_statement(*, digest: str, namespace: str, name: str, version: str, verdict: dict,
                    observed_trainer: dict | None, time: str) -> dict:
    """The statement the platform signs for one verified version. ``verdict``: what the verifier reported
    (verified, gatesPassed, signer); ``observed_trainer``: {"image", "imageID", "node"} the kubelet ran, or None."""
    return {"_type": STATEMENT_TYPE,
            "subject": [{"name": f"{namespace}/{name}@{version}", "digest": {"sha256": digest}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"model": {"namespace": namespace, "name": name, "version": version},
                          "verification": {k: verdict[k] for k in ("verified", "gatesPassed", "signer")
                                           if verdict.get(k) is not None},
                          "observedTrainer": dict(observed_trainer) if observed_trainer else None,
                          "time": time}}


def _load_public(public_key_pem: str | bytes):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(public_key_pem.encode() if isinstance(public_key_pem, str)
                                                else public_key_pem)
    except ValueError as exc:
        raise CountersignError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CountersignError("the platform key must be EC P-256 (secp256r1)")
    return key


def _public_pem(key) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def keyid(public_key_pem: str | bytes) -> str:
    """sha256 of the public key's DER (SubjectPublicKeyInfo), as signing.public_key_fingerprint names keys."""
    from .signing import public_key_fingerprint

    return public_key_fingerprint(_public_pem(_load_public(public_key_pem)).encode())


@dataclass(frozen=True)
class PlatformKey:
    """The platform's signing key, loaded once from a PEM EC P-256 private key. ``public_pem`` goes to the
    serving pods; the private half stays in this object (not in its repr)."""

    public_pem: str
    keyid: str
    _private: object = field(repr=False, compare=False)

    @classmethod
    def from_pem(cls, private_pem: str | bytes) -> "PlatformKey":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            key = serialization.load_pem_private_key(
                private_pem.encode() if isinstance(private_pem, str) else private_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CountersignError(f"not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise CountersignError("the platform key must be EC P-256 (secp256r1), e.g. "
                                   "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256")
        public = _public_pem(key.public_key())
        return cls(public_pem=public, keyid=keyid(public), _private=key)

    def sign(self, statement: dict) -> dict:
        """The DSSE envelope of ``statement`` (compact JSON with sorted keys: one statement, one payload)."""
        return sign(statement, self)


def sign(statement: dict, key: PlatformKey) -> dict:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = key._private.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": key.keyid, "sig": base64.b64encode(signature).decode()}]}


def verify(envelope: dict | str, public_key_pem: str | bytes) -> dict:
    """The statement inside ``envelope`` if one of its signatures verifies with ``public_key_pem`` over the
    PAE of its payload, else CountersignError. The keyid is a hint (DSSE: not to be trusted): every
    signature is tried against the one key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = _load_public(public_key_pem)
    try:
        env = json.loads(envelope) if isinstance(envelope, str) else envelope
        if not isinstance(env, dict):
            raise ValueError(f"expected a JSON object, got {type(env).__name__}")
        payload_type, payload = env.get("payloadType"), base64.b64decode(env.get("payload") or "", validate=True)
        signatures = [base64.b64decode(s.get("sig") or "", validate=True) for s in env.get("signatures") or []]
    except (ValueError, TypeError, AttributeError) as exc:
        raise CountersignError(f"not a DSSE envelope: {exc}") from None
    if payload_type != PAYLOAD_TYPE:
        raise CountersignError(f"payloadType is {payload_type!r}, not {PAYLOAD_TYPE!r}")
    for signature in signatures:
        try:
            key.verify(signature, pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
            break
        except InvalidSignature:
            continue
    else:
        raise CountersignError(f"no signature verifies with the platform key {keyid(public_key_pem)}")
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise CountersignError(f"the signed payload is not JSON: {exc}") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE \
            or statement.get("predicateType") != PREDICATE_TYPE:
        raise CountersignError(f"the signed payload is not a {PREDICATE_TYPE} in-toto statement")
    return statement


def check(statement: dict, *, digest: str, namespace: str, name: str) -> list[str]:
    """What in a verified statement does not match the model about to serve: its subject's digest (the
    digest the verifier computed for these bytes), its namespace and name. [] when it holds."""
    subjects = statement.get("subject") or [{}]
    model = (statement.get("predicate") or {}).get("model") or {}
    refused = []
    signed = ((subjects[0] or {}).get("digest") or {}).get("sha256")
    if len(subjects) != 1 or signed != digest:
        refused.append(f"the platform countersigned digest {signed}, not this model's {digest}")
    if (model.get("namespace"), model.get("name")) != (namespace, name):
        refused.append(f"the platform countersigned {model.get('namespace')}/{model.get('name')}, "
                       f"not {namespace}/{name}")
    return refused
