"""The platform countersignature's envelope (issue 27 point 4, hardened_model.countersign): DSSE over an
in-toto Statement v1, ECDSA P-256; each way of changing it is refused."""
import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hardened_model import countersign
from hardened_model.countersign import CountersignError, PlatformKey
from hardened_model.signing import generate_key_pem

DIGEST = "ab" * 32
RAN = {"image": "ghcr.io/hardened-model/trainer:0.1.0", "imageID": "ghcr.io/hardened-model/trainer@sha256:" + "cd" * 32}


@pytest.fixture(scope="module")
def key() -> PlatformKey:
    return PlatformKey.from_pem(generate_key_pem()[0])


def statement(digest=DIGEST, namespace="ml", name="digits-demo"):
    return countersign.build_statement(digest=digest, namespace=namespace, name=name, version="0123456789ab",
                                       verdict={"verified": True, "gatesPassed": True, "signer": "sha256:1"},
                                       observed_trainer=RAN, time="2026-12-03T10:00:00Z")


def test_a_signed_statement_round_trips_and_names_the_digest_and_the_model(key):
    envelope = key.sign(statement())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    got = countersign.verify(json.dumps(envelope), key.public_pem)
    assert got == statement()
    assert got["subject"] == [{"name": "ml/digits-demo@0123456789ab", "digest": {"sha256": DIGEST}}]
    assert got["predicate"]["observedTrainer"] == RAN and got["predicate"]["verification"]["verified"] is True
    assert countersign.check(got, digest=DIGEST, namespace="ml", name="digits-demo") == []


def test_the_keyid_is_the_sha256_of_the_public_key_der(key):
    der = serialization.load_pem_public_key(key.public_pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.keyid == "sha256:" + hashlib.sha256(der).hexdigest()
    assert key.sign(statement())["signatures"][0]["keyid"] == key.keyid
    assert "PRIVATE" not in repr(key) and "_private" not in repr(key)


def test_the_signature_is_over_the_dsse_pae(key):
    envelope = key.sign(statement())
    payload = base64.b64decode(envelope["payload"])
    pae = countersign.pae(envelope["payloadType"], payload)
    assert pae == b"DSSEv1 28 application/vnd.in-toto+json %d %s" % (len(payload), payload)
    public = serialization.load_pem_public_key(key.public_pem.encode())
    from cryptography.hazmat.primitives import hashes

    public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))


def test_another_digest_or_model_is_refused_by_check(key):
    got = countersign.verify(key.sign(statement()), key.public_pem)
    assert countersign.check(got, digest="ef" * 32, namespace="ml", name="digits-demo") == [
        f"the platform countersigned digest {DIGEST}, not this model's {'ef' * 32}"]
    assert countersign.check(got, digest=DIGEST, namespace="other", name="digits-demo") == [
        "the platform countersigned ml/digits-demo, not other/digits-demo"]


def tampered(envelope: dict, **changes) -> dict:
    return {**envelope, **changes}


def test_a_changed_byte_of_the_payload_is_refused(key):
    envelope = key.sign(statement())
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[payload.index(DIGEST.encode())] ^= 1  # one bit of the digest
    with pytest.raises(CountersignError, match="no signature verifies with the platform key"):
        countersign.verify(tampered(envelope, payload=base64.b64encode(bytes(payload)).decode()), key.public_pem)
    # a statement re-signed for another digest by the same key is fine to verify, and check refuses it
    other = countersign.verify(key.sign(statement(digest="ef" * 32)), key.public_pem)
    assert countersign.check(other, digest=DIGEST, namespace="ml", name="digits-demo")


def test_another_key_is_refused(key):
    other = PlatformKey.from_pem(generate_key_pem()[0])
    with pytest.raises(CountersignError, match=f"no signature verifies with the platform key {key.keyid}"):
        countersign.verify(other.sign(statement()), key.public_pem)
    # the keyid is a hint, not trusted: naming our key on another key's signature changes nothing
    forged = other.sign(statement())
    forged["signatures"][0]["keyid"] = key.keyid
    with pytest.raises(CountersignError):
        countersign.verify(forged, key.public_pem)


def test_a_wrong_payload_type_is_refused(key):
    envelope = key.sign(statement())
    with pytest.raises(CountersignError, match="payloadType is 'application/json'"):
        countersign.verify(tampered(envelope, payloadType="application/json"), key.public_pem)


def test_what_is_not_an_envelope_or_not_our_statement_is_refused(key):
    for bad in ("not json", "[]", json.dumps({"payloadType": countersign.PAYLOAD_TYPE, "payload": "%%%"})):
        with pytest.raises(CountersignError, match="not a DSSE envelope"):
            countersign.verify(bad, key.public_pem)
    with pytest.raises(CountersignError, match="no signature"):
        countersign.verify(tampered(key.sign(statement()), signatures=[]), key.public_pem)
    slsa = {**statement(), "predicateType": "https://slsa.dev/provenance/v1"}
    with pytest.raises(CountersignError, match="not a https://hardened.dev/countersignature/v1"):
        countersign.verify(key.sign(slsa), key.public_pem)


def test_only_an_unencrypted_p256_private_key_loads():
    with pytest.raises(CountersignError, match="not an unencrypted PEM private key"):
        PlatformKey.from_pem("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(CountersignError, match="EC P-256"):
        PlatformKey.from_pem(p384)
    # openssl ecparam -genkey writes the SEC1 form ("BEGIN EC PRIVATE KEY"): loads as well
    sec1 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    assert PlatformKey.from_pem(sec1).keyid.startswith("sha256:")
