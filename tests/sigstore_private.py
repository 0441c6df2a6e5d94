"""A private Sigstore instance in a test: the trust root and the material a keyless signature carries, without
the network (issue 18).

What Fulcio, the CT log and Rekor would each contribute is made here with `cryptography`:

- a Fulcio-style root CA, and per signature a short-lived leaf certificate with the signer's identity as its
  SAN, the OIDC issuer in Fulcio's extension (1.3.6.1.4.1.57264.1.1), the code-signing EKU and an embedded
  SCT (RFC 6962 precertificate entry) signed by a CT log key;
- the Rekor entry of the DSSE envelope (kind dsse 0.0.1): canonicalized body, a signed entry timestamp over
  its RFC 8785 form, and an inclusion proof in a one-leaf tree with a signed checkpoint;
- a ClientTrustConfig JSON naming exactly these keys and that CA (sigstore-python reads it as a private
  instance's trust root: `trust_config=`), for `hardened-model verify --trust-config`.

The DSSE payload is model_signing's own statement for the model directory (taken from a key-signed bundle:
the statement does not depend on the signer); the envelope is re-signed with the leaf key. What stays
untested offline is only the network half of keyless signing: sigstore-python's SigningContext asks Fulcio
for the certificate (POST /api/v2/signingCert) and Rekor for the entry (POST /api/v1/log/entries).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import pathlib
import struct
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def _spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_id(key) -> bytes:
    return hashlib.sha256(_spki(key)).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der_octet_string(data: bytes) -> bytes:
    n = len(data)
    length = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return b"\x04" + length + data


def _pae(payload_type: str, body: bytes) -> bytes:
    return f"DSSEv1 {len(payload_type)} {payload_type} {len(body)} ".encode() + body


class PrivateSigstore:
    """One CA, one CT log key, one Rekor key; ``trust_config`` is the JSON file a verifier is given."""

    def __init__(self, directory: pathlib.Path, *, origin: str = "rekor.private.test - 1"):
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        self.origin = origin
        now = dt.datetime.now(dt.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "private.test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "private-fulcio")])
        self.ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256()))
        self.trust_config = directory / "trust_config.json"
        self.trust_config.write_text(json.dumps(self._client_trust_config(now)))

    # ------------------------------------------------------------ trust root
    def _client_trust_config(self, now: dt.datetime) -> dict:
        from sigstore.models import ClientTrustConfig

        start = (now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

        def key(k) -> dict:
            return {"rawBytes": _b64(_spki(k.public_key())), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": start}}

        # the signing half is the production one, never used here (verification reads the trusted root only)
        config = json.loads(ClientTrustConfig.production(offline=True)._inner.to_json())
        config["trustedRoot"] = {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{"baseUrl": "https://rekor.private.test", "hashAlgorithm": "SHA2_256",
                       "publicKey": key(self.rekor_key), "logId": {"keyId": _b64(_key_id(self.rekor_key.public_key()))}}],
            "certificateAuthorities": [{
                "subject": {"organization": "private.test", "commonName": "private-fulcio"},
                "uri": "https://fulcio.private.test",
                "certChain": {"certificates": [{"rawBytes": _b64(self.ca_cert.public_bytes(serialization.Encoding.DER))}]},
                "validFor": {"start": start}}],
            "ctlogs": [{"baseUrl": "https://ctfe.private.test", "hashAlgorithm": "SHA2_256",
                        "publicKey": key(self.ct_key), "logId": {"keyId": _b64(_key_id(self.ct_key.public_key()))}}],
            "timestampAuthorities": [],
        }
        return config

    # ------------------------------------------------------------ "Fulcio"
    def issue(self, public_key, *, identity: str, issuer: str, now: dt.datetime) -> x509.Certificate:
        """A 10-minute code-signing certificate for ``identity`` (an e-mail or a URI) from ``issuer``, with an
        embedded SCT over its precertificate form."""
        san = x509.UniformResourceIdentifier(identity) if "://" in identity else x509.RFC822Name(identity)

        def builder():
            return (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.ca_cert.subject)
                    .public_key(public_key).serial_number(serial)
                    .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(minutes=10))
                    .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                 key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                 key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                 decipher_only=False), critical=True)
                    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                    .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                                   critical=False)
                    .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                    .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_V1, issuer.encode()), critical=False))

        serial = x509.random_serial_number()
        # RFC 6962: the CT log signs the TBSCertificate without the SCT list (what tbs_precertificate_bytes gives
        # back from the final certificate), bound to the issuer's key hash
        tbs = builder().sign(self.ca_key, hashes.SHA256()).tbs_certificate_bytes
        millis = int(now.timestamp() * 1000)
        entry = _key_id(self.ca_key.public_key()) + struct.pack("!I", len(tbs))[1:] + tbs
        signed = struct.pack("!BBQH", 0, 0, millis, 1) + entry + struct.pack("!H", 0)
        sig = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (bytes([0]) + _key_id(self.ct_key.public_key()) + struct.pack("!Q", millis) + struct.pack("!H", 0)
               + bytes([4, 3]) + struct.pack("!H", len(sig)) + sig)
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        cert = (builder().add_extension(x509.UnrecognizedExtension(SCT_LIST, _der_octet_string(sct_list)),
                                        critical=False).sign(self.ca_key, hashes.SHA256()))
        assert cert.tbs_precertificate_bytes == tbs
        return cert

    # ------------------------------------------------------------ "Rekor"
    def log_entry(self, envelope: dict, cert: x509.Certificate, *, now: dt.datetime) -> dict:
        """The dsse 0.0.1 entry of ``envelope`` in a one-leaf log: SET and inclusion proof with checkpoint."""
        import rfc8785

        pem = cert.public_bytes(serialization.Encoding.PEM)
        payload = base64.b64decode(envelope["payload"])
        body = rfc8785.dumps({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest()},
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": [{"signature": envelope["signatures"][0]["sig"], "verifier": _b64(pem)}]}})
        log_id = _key_id(self.rekor_key.public_key())
        integrated = int(now.timestamp())
        set_sig = self.rekor_key.sign(rfc8785.dumps({"body": _b64(body), "integratedTime": integrated,
                                                     "logID": log_id.hex(), "logIndex": 0}),
                                      ec.ECDSA(hashes.SHA256()))
        root = hashlib.sha256(b"\x00" + body).digest()  # RFC 6962 leaf hash = the root of a one-leaf tree
        note = f"{self.origin}\n1\n{_b64(root)}\n"
        note_sig = self.rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = f"{note}\n\u2014 {self.origin.split()[0]} {_b64(log_id[:4] + note_sig)}\n"
        return {"logIndex": "0", "logId": {"keyId": _b64(log_id)},
                "kindVersion": {"kind": "dsse", "version": "0.0.1"}, "integratedTime": str(integrated),
                "inclusionPromise": {"signedEntryTimestamp": _b64(set_sig)},
                "inclusionProof": {"logIndex": "0", "rootHash": _b64(root), "treeSize": "1", "hashes": [],
                                   "checkpoint": {"envelope": checkpoint}},
                "canonicalizedBody": _b64(body)}

    # ------------------------------------------------------------ a keyless signature
    def sign_model(self, model_dir: pathlib.Path, signature: pathlib.Path, *, identity: str, issuer: str) -> None:
        """What `sign_model(identity_token=...)` writes after talking to Fulcio and Rekor, for this instance."""
        from hardened_model.signing import generate_key_pair, sign_model

        with tempfile.TemporaryDirectory() as tmp:  # model_signing's statement for this directory
            private, _ = generate_key_pair(pathlib.Path(tmp))
            sign_model(model_dir, pathlib.Path(tmp) / "key.sig", private_key=private)
            payload = base64.b64decode(json.loads((pathlib.Path(tmp) / "key.sig").read_text())
                                       ["dsseEnvelope"]["payload"])
        now = dt.datetime.now(dt.timezone.utc)
        leaf_key = ec.generate_private_key(ec.SECP256R1())  # ephemeral, as sigstore's signer makes it
        cert = self.issue(leaf_key.public_key(), identity=identity, issuer=issuer, now=now)
        envelope = {"payload": _b64(payload), "payloadType": PAYLOAD_TYPE,
                    "signatures": [{"sig": _b64(leaf_key.sign(_pae(PAYLOAD_TYPE, payload),
                                                              ec.ECDSA(hashes.SHA256())))}]}
        bundle = {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                  "verificationMaterial": {
                      "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                      "tlogEntries": [self.log_entry(envelope, cert, now=now)]},
                  "dsseEnvelope": envelope}
        signature.write_text(json.dumps(bundle))
