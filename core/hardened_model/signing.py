"""Signing and verification policy -> model_signing (OpenSSF model signing) calls.

One module for both ends: the trainer signs, and the ``verify`` command (the
verification Job and the serving pod's init container) verifies. An artifact
is a directory plus a signature bundle *beside* it::

    <version>/model/{model.safetensors, model.json, metrics.json, report.html}
    <version>/model.sig

The signature covers every file in the directory (model_signing's manifest
lists each file's sha256), so a changed, added or removed file - metrics
included - fails verification. The artifact's *digest* is the sha256 of that
manifest as it appears in the signed in-toto statement's subject.
"""
from __future__ import annotations

import base64
import json
import pathlib
import tempfile
from dataclasses import asdict, dataclass, field

SIGNATURE_NAME = "model.sig"
MODEL_DIR_NAME = "model"


class SigningError(RuntimeError):
    """Signing could not be done (bad key, no identity token, ...)."""


@dataclass(frozen=True)
class TrustPolicy:
    """What a verifier trusts: a public key, or a Sigstore identity + OIDC issuer."""

    public_key: str | None = None          # path to a PEM public key (EC P-256/384/521)
    # the PEMs themselves, any of which may verify: a HardenedModelPolicy's trust.publicKeys, which the
    # operator passes inline (they live in the cluster-scoped policy, not in a Secret the pod could mount)
    public_keys_pem: tuple[str, ...] = ()
    identity: str | None = None            # keyless: certificate SAN
    oidc_issuer: str | None = None         # keyless: issuer URL
    trust_config: str | None = None        # keyless: a Sigstore ClientTrustConfig JSON (offline, private)

    def __post_init__(self):
        if sum(map(bool, (self.public_key, self.public_keys_pem, self.identity))) != 1:
            raise ValueError("a trust policy needs exactly one of --public-key, --public-key-pem (repeatable) or "
                             "--identity (+ --oidc-issuer)")
        if self.identity and not self.oidc_issuer:
            raise ValueError("keyless trust needs oidc_issuer beside identity")


@dataclass
class VerificationResult:
    """The one JSON object `verify` prints (and writes to a Job's termination message)."""

    verified: bool
    reason: str
    digest: str | None = None
    signer: str | None = None
    files: dict[str, str] = field(default_factory=dict)   # path in the model dir -> sha256

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# --------------------------------------------------------------------- keys
def generate_key_pem() -> tuple[str, str]:
    """A new EC P-256 key pair as (PKCS#8 private PEM, SubjectPublicKeyInfo public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private.decode(), public.decode()


def generate_key_pair(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Write an EC P-256 key pair (PEM) as private.pem (mode 0600) and public.pem."""
    private_pem, public_pem = generate_key_pem()
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / "private.pem"
    public = directory / "public.pem"
    private.touch(mode=0o600)
    private.write_text(private_pem)
    public.write_text(public_pem)
    return private, public


def public_key_fingerprint(public_key_pem: bytes) -> str:
    """sha256 of the DER public key: names a key signer without revealing anything secret."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


# ------------------------------------------------------------------- signing
def sign_model(model_dir: pathlib.Path, signature: pathlib.Path, *, private_key: pathlib.Path | None = None,
               private_key_pem: str | None = None, identity_token: str | None = None,
               use_ambient_credentials: bool = False, trust_config: pathlib.Path | None = None) -> None:
    """Sign every file of ``model_dir`` into ``signature``: with an EC key (a file, or ``private_key_pem``, a
    key held in memory only: signing.method ephemeral), or Sigstore keyless."""
    import model_signing

    config = model_signing.signing.Config()
    try:
        if private_key_pem is not None:
            _use_key_in_memory(config, private_key_pem)
        elif private_key is not None:
            config.use_elliptic_key_signer(private_key=str(private_key))
        else:  # keyless needs Fulcio and Rekor (network) and an OIDC identity
            config.use_sigstore_signer(identity_token=identity_token, use_ambient_credentials=use_ambient_credentials,
                                       trust_config=trust_config)
        config.sign(model_dir, signature)
    except (ValueError, OSError) as exc:
        raise SigningError(f"signing {model_dir} failed: {exc}") from None


def _use_key_in_memory(config, private_key_pem: str) -> None:
    """model_signing reads a signer's key from a path, once, when configured: give it the read end of a pipe
    that holds the PEM, so a per-run key reaches the signer without touching a disk (the pod's emptyDir
    outlives the process; a pipe's buffer does not). A PEM is a few hundred bytes, far below a pipe's 64 KiB."""
    import os

    read_end, write_end = os.pipe()
    try:
        os.write(write_end, private_key_pem.encode())
        os.close(write_end)
        write_end = -1
        config.use_elliptic_key_signer(private_key=f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


# -------------------------------------------------------------- verification
def _offline_production_trust_config(tmp: pathlib.Path) -> pathlib.Path:
    """Sigstore's production trust root from the copy bundled with sigstore-python (no network).

    model_signing takes a trust configuration only as a file; sigstore exposes
    the bundled one as an object, so it is written out here.
    """
    from sigstore.models import ClientTrustConfig

    path = tmp / "trust_config.json"
    path.write_text(ClientTrustConfig.production(offline=True)._inner.to_json())
    return path


def _statement(signature: pathlib.Path) -> dict:
    bundle = json.loads(signature.read_text())
    envelope = bundle.get("dsseEnvelope") or {}
    return json.loads(base64.b64decode(envelope.get("payload", "")))


def read_signed_manifest(signature: pathlib.Path) -> tuple[str, dict[str, str]]:
    """(digest, {file: sha256}) from a bundle's statement. Trust it only after ``verify_model``."""
    statement = _statement(signature)
    digest = statement["subject"][0]["digest"]["sha256"]
    files = {r["name"]: r["digest"] for r in statement.get("predicate", {}).get("resources", [])
             if r.get("algorithm") == "sha256"}
    return digest, files


def _reason(exc: Exception) -> str:
    """model_signing's mismatch messages carry raw digest bytes; name the files instead."""
    import re

    text = str(exc)
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", text)
    if changed:
        return "files changed after signing (sha256 mismatch): " + ", ".join(sorted(set(changed)))
    return f"{type(exc).__name__}: {text}".strip()


def verify_model(model_dir: pathlib.Path, signature: pathlib.Path, policy: TrustPolicy) -> VerificationResult:
    """Check ``model_dir`` against ``signature`` under ``policy``; never raises for a bad artifact."""
    import model_signing

    if not model_dir.is_dir():
        return VerificationResult(False, f"model directory {model_dir} does not exist")
    if not signature.is_file():
        return VerificationResult(False, f"signature {signature} does not exist")
    if policy.public_keys_pem:
        return _verify_with_any_key(model_dir, signature, policy.public_keys_pem)
    config = model_signing.verifying.Config()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if policy.public_key:
                config.use_elliptic_key_verifier(public_key=policy.public_key)
                signer = public_key_fingerprint(pathlib.Path(policy.public_key).read_bytes())
            else:
                trust = pathlib.Path(policy.trust_config) if policy.trust_config else \
                    _offline_production_trust_config(pathlib.Path(tmp))
                config.use_sigstore_verifier(identity=policy.identity, oidc_issuer=policy.oidc_issuer,
                                             trust_config=trust)
                signer = f"{policy.identity} ({policy.oidc_issuer})"
            config.verify(model_dir, signature)
        except Exception as exc:  # noqa: BLE001 - model_signing raises ValueError and sigstore/crypto errors alike
            return VerificationResult(False, _reason(exc))
    return _verified(signature, signer)


def _verified(signature: pathlib.Path, signer: str) -> VerificationResult:
    try:
        digest, files = read_signed_manifest(signature)
    except (KeyError, IndexError, ValueError) as exc:
        return VerificationResult(False, f"signed statement has no sha256 subject: {exc}")
    return VerificationResult(True, "signature and every file verified", digest=digest, signer=signer, files=files)


def _verify_with_any_key(model_dir: pathlib.Path, signature: pathlib.Path, pems: tuple[str, ...]) -> VerificationResult:
    """Verified when one of the keys verifies the signature and every file (a rotation trusts two). A file
    changed after signing fails with every key: that reason is the one given; else each key's."""
    import model_signing

    reasons = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, pem in enumerate(pems):
            path = pathlib.Path(tmp) / f"trusted-{i}.pem"
            path.write_text(pem)
            try:
                fingerprint = public_key_fingerprint(pem.encode())
                config = model_signing.verifying.Config()
                config.use_elliptic_key_verifier(public_key=path)
                config.verify(model_dir, signature)
            except Exception as exc:  # noqa: BLE001 - as verify_model
                reasons.append(_reason(exc))
                if reasons[-1].startswith("files changed after signing"):
                    return VerificationResult(False, reasons[-1])
                continue
            return _verified(signature, fingerprint)
    if len(pems) == 1:
        return VerificationResult(False, reasons[0])
    return VerificationResult(False, f"none of the {len(pems)} trusted public keys verifies the signature: "
                                     + "; ".join(f"key {i + 1}: {r}" for i, r in enumerate(reasons)))
