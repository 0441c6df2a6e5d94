"""The verify command with the platform's countersignature (issue 27 point 4): the real `verify`, on a signed
artifact, accepts it only with an envelope the platform key signed for the digest it computes and for the
model it names; the tenant's signature is still checked. Exit 3 and the result JSON as every refusal."""
import base64
import json
import shutil

import pytest

from hardened_model import countersign
from hardened_model.countersign import PlatformKey
from hardened_model.signing import generate_key_pem, read_signed_manifest
from hardened_server.cli import main as server_main
from helpers import make_artifact

MODEL = "ml/digits-demo"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, keys):
    root = tmp_path_factory.mktemp("countersigned")
    good = make_artifact(root / "good", keys[0])
    other = make_artifact(root / "other", keys[0], seed=1)  # signed by the tenant's key too: another digest
    return good, other


@pytest.fixture(scope="module")
def platform() -> PlatformKey:
    return PlatformKey.from_pem(generate_key_pem()[0])


def envelope_for(platform, artifact, model=MODEL) -> dict:
    namespace, name = model.split("/")
    digest = read_signed_manifest(artifact / "model.sig")[0]
    return platform.sign(countersign.build_statement(
        digest=digest, namespace=namespace, name=name, version="0123456789ab", verdict={"verified": True},
        observed_trainer=None, time="2026-12-03T10:00:00Z"))


def verify(artifact, keys, capsys, *extra):
    code = server_main(["verify", "--artifact", str(artifact), "--public-key", str(keys[1]), *extra])
    return code, json.loads(capsys.readouterr().out)


def flags(platform, envelope, model=MODEL):
    return ["--countersignature", json.dumps(envelope), "--platform-public-key-pem", platform.public_pem,
            "--expect-model", model]


def test_a_countersigned_model_verifies_and_says_by_which_key(artifacts, keys, platform, capsys):
    good, _ = artifacts
    code, out = verify(good, keys, capsys, *flags(platform, envelope_for(platform, good)))
    assert code == 0 and out["verified"] is True, out
    assert out["countersignature"] == {"keyid": platform.keyid, "time": "2026-12-03T10:00:00Z"}
    code, out = verify(good, keys, capsys)  # without the flags: as before, no countersignature asked
    assert code == 0 and "countersignature" not in out


def test_a_model_whose_digest_was_not_countersigned_is_refused(artifacts, keys, platform, capsys):
    good, other = artifacts
    code, out = verify(other, keys, capsys, *flags(platform, envelope_for(platform, good)))
    digest = read_signed_manifest(other / "model.sig")[0]
    assert code == 3 and out["verified"] is False and out["digest"] == digest
    assert out["reason"] == ("signature verified; countersignature refused: the platform countersigned digest "
                             f"{read_signed_manifest(good / 'model.sig')[0]}, not this model's {digest}")


def test_an_artifact_replaced_after_countersigning_is_refused(artifacts, keys, platform, capsys, tmp_path):
    """The envelope and the flags stay; the bytes in the store change to another tenant-signed model."""
    good, other = artifacts
    envelope = envelope_for(platform, good)
    swapped = shutil.copytree(good, tmp_path / "swapped")
    shutil.rmtree(swapped / "model")
    shutil.copytree(other / "model", swapped / "model")
    shutil.copy(other / "model.sig", swapped / "model.sig")
    code, out = verify(swapped, keys, capsys, *flags(platform, envelope))
    assert code == 3 and "countersignature refused: the platform countersigned digest" in out["reason"]


def test_a_tampered_envelope_or_another_key_or_model_is_refused(artifacts, keys, platform, capsys):
    good, _ = artifacts
    envelope = envelope_for(platform, good)
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["predicate"]["model"]["namespace"] = "other"
    forged = {**envelope, "payload": base64.b64encode(json.dumps(payload).encode()).decode()}
    code, out = verify(good, keys, capsys, *flags(platform, forged))
    assert code == 3 and "no signature verifies with the platform key" in out["reason"]
    code, out = verify(good, keys, capsys, *flags(platform, {**envelope, "payloadType": "text/plain"}))
    assert code == 3 and "payloadType" in out["reason"]
    stranger = PlatformKey.from_pem(generate_key_pem()[0])
    code, out = verify(good, keys, capsys, *flags(platform, envelope_for(stranger, good)))
    assert code == 3 and f"platform key {platform.keyid}" in out["reason"]
    code, out = verify(good, keys, capsys, *flags(platform, envelope, model="other/digits-demo"))
    assert code == 3 and "countersigned ml/digits-demo, not other/digits-demo" in out["reason"]


def test_the_tenant_signature_is_still_checked(artifacts, platform, capsys, tmp_path):
    """A valid countersignature does not stand in for the tenant's signature: another public key refuses."""
    from hardened_model.signing import generate_key_pair

    good, _ = artifacts
    _, wrong_public = generate_key_pair(tmp_path / "wrong")
    code = server_main(["verify", "--artifact", str(good), "--public-key", str(wrong_public),
                        *flags(platform, envelope_for(platform, good))])
    out = json.loads(capsys.readouterr().out)
    assert code == 3 and out["verified"] is False and "countersignature" not in out


def test_flags_without_the_others_or_a_bad_public_key_are_bad_arguments(artifacts, keys, platform, capsys):
    good, _ = artifacts
    envelope = json.dumps(envelope_for(platform, good))
    code, out = verify(good, keys, capsys, "--countersignature", envelope)
    assert code == 2 and "go together" in out["reason"]
    code, out = verify(good, keys, capsys, "--countersignature", envelope, "--platform-public-key-pem", "x",
                       "--expect-model", MODEL)
    assert code == 2 and out["reason"].startswith("--platform-public-key-pem: not a PEM public key")
