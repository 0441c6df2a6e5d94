"""The verifiers with a HardenedModelPolicy's trust.publicKeys (issue 27 point 3): the real `verify` and model
server take the keys inline (--public-key-pem, repeatable) in place of the model's public key Secret, accept a
model signed with any of them (a rotation trusts two) and refuse one signed with the tenant's own key, saying
so for each key."""
import json
import shutil

import pytest

from hardened_model.signing import generate_key_pair, public_key_fingerprint
from hardened_server.cli import main as server_main
from helpers import make_artifact


@pytest.fixture(scope="module")
def platform_keys(tmp_path_factory):
    """Two platform key pairs (old and new, as during a rotation)."""
    return [generate_key_pair(tmp_path_factory.mktemp(f"platform-{i}")) for i in range(2)]


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys, platform_keys):
    """(signed with the platform's new key, signed with the tenant's own key)."""
    root = tmp_path_factory.mktemp("policy-keys")
    return make_artifact(root / "platform", platform_keys[1][0]), make_artifact(root / "tenant", keys[0])


def verify(artifact, pems, capsys, *extra):
    args = ["verify", "--artifact", str(artifact), *[a for pem in pems for a in ("--public-key-pem", pem)], *extra]
    code = server_main(args)
    return code, json.loads(capsys.readouterr().out)


def pem(pair) -> str:
    return pair[1].read_text()


def test_a_model_signed_with_any_trusted_key_verifies_and_names_that_key(signed, platform_keys, capsys):
    code, out = verify(signed[0], [pem(platform_keys[0]), pem(platform_keys[1])], capsys)
    assert code == 0 and out["verified"] is True, out
    assert out["signer"] == public_key_fingerprint(platform_keys[1][1].read_bytes())
    code, out = verify(signed[0], [pem(platform_keys[1])], capsys)
    assert code == 0, out


def test_a_model_signed_with_the_tenant_key_is_refused_for_every_trusted_key(signed, platform_keys, capsys):
    code, out = verify(signed[1], [pem(platform_keys[0]), pem(platform_keys[1])], capsys)
    assert code == 3 and out["verified"] is False
    assert out["reason"].startswith("none of the 2 trusted public keys verifies the signature: key 1: "), out
    assert "; key 2: " in out["reason"]
    code, out = verify(signed[1], [pem(platform_keys[1])], capsys)
    assert code == 3 and not out["reason"].startswith("none of"), out  # one key: its own reason


def test_a_file_changed_after_signing_is_named_whatever_the_keys(signed, platform_keys, capsys, tmp_path):
    copy = tmp_path / "changed"
    shutil.copytree(signed[0], copy)
    (copy / "model" / "metrics.json").write_text('{"clean_accuracy": 1.0}')
    code, out = verify(copy, [pem(platform_keys[0]), pem(platform_keys[1])], capsys)
    assert code == 3 and out["reason"] == "files changed after signing (sha256 mismatch): metrics.json", out


def test_public_key_pem_with_another_trust_flag_is_a_bad_argument(signed, platform_keys, keys, capsys):
    code, out = verify(signed[0], [pem(platform_keys[1])], capsys, "--public-key", str(keys[1]))
    assert code == 2 and "exactly one of --public-key, --public-key-pem" in out["reason"], out


def test_the_model_server_refuses_a_model_no_trusted_key_signed(signed, platform_keys):
    """The model server verifies again before it loads (it runs spec.serving.image, the tenant's: the init
    container, the platform's, is what holds; this is the second check). Exit 3 before it listens."""
    artifact = signed[1]
    code = server_main(["serve", "--artifact", str(artifact), "--public-key-pem", pem(platform_keys[1]),
                        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"])
    assert code == 3
