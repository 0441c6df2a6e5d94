"""Issue 18: keyless (Sigstore) verification, end to end and offline, against a private trust root.

tests/sigstore_private.py plays Fulcio (a CA issuing a short-lived certificate with the identity, the OIDC
issuer extension and an embedded SCT), the CT log and Rekor (a signed entry timestamp and an inclusion proof
with a signed checkpoint). Verification is the product's own: hardened_model.signing.verify_model and the
`verify` command, i.e. model_signing's Sigstore verifier with sigstore-python underneath, given the private
instance's ClientTrustConfig. Only the network half of keyless *signing* (Fulcio's and Rekor's HTTP APIs)
is not run here; docs/security.md names the calls."""
import base64
import json
import shutil

import pytest

from hardened_model.signing import TrustPolicy, verify_model
from hardened_server.cli import main as server_main
from helpers import make_artifact
from sigstore_private import PrivateSigstore

IDENTITY = "system:serviceaccount:ml:digits-trainer@hardened.test"
ISSUER = "https://oidc.private.test/cluster"


@pytest.fixture(scope="module")
def sigstore(tmp_path_factory):
    return PrivateSigstore(tmp_path_factory.mktemp("sigstore"))


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys, sigstore):
    root = make_artifact(tmp_path_factory.mktemp("keyless"), keys[0])
    (root / "model.sig").unlink()  # no key signature: this model is signed keyless only
    sigstore.sign_model(root / "model", root / "model.sig", identity=IDENTITY, issuer=ISSUER)
    return root


def check(root, sigstore, identity=IDENTITY, issuer=ISSUER, trust_config="default"):
    config = str(sigstore.trust_config) if trust_config == "default" else trust_config
    return verify_model(root / "model", root / "model.sig",
                        TrustPolicy(identity=identity, oidc_issuer=issuer, trust_config=config))


def test_the_right_identity_and_issuer_pass(signed, sigstore):
    res = check(signed, sigstore)
    assert res.verified, res.reason
    assert res.signer == f"{IDENTITY} ({ISSUER})" and sorted(res.files) == [
        "metrics.json", "model.json", "model.safetensors", "report.html"]


def test_a_wrong_identity_is_refused(signed, sigstore):
    res = check(signed, sigstore, identity="system:serviceaccount:ml:someone-else@hardened.test")
    assert not res.verified and "SANs do not match" in res.reason


def test_a_wrong_issuer_is_refused(signed, sigstore):
    res = check(signed, sigstore, issuer="https://accounts.google.com")
    assert not res.verified and "OIDCIssuer does not match" in res.reason and ISSUER in res.reason


def test_a_certificate_from_another_ca_is_refused(signed, sigstore, tmp_path):
    other = PrivateSigstore(tmp_path)  # same identity and issuer, another "Fulcio", CT log and Rekor
    copy = tmp_path / "other"
    shutil.copytree(signed, copy)
    other.sign_model(copy / "model", copy / "model.sig", identity=IDENTITY, issuer=ISSUER)
    assert check(copy, other).verified
    res = check(copy, sigstore)
    assert not res.verified and "certificate chain" in res.reason


def test_the_production_trust_root_offline_refuses_a_private_certificate(signed, sigstore):
    """No trust config: the verifier uses Sigstore's production root bundled with sigstore-python
    (Verifier.production(offline=True) underneath), which does not know this CA."""
    res = check(signed, sigstore, trust_config=None)
    assert not res.verified and "certificate chain" in res.reason


def test_a_changed_file_is_refused(signed, sigstore, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(signed, copy)
    (copy / "model/metrics.json").write_text('{"cleanAccuracy": 1.0}')
    res = check(copy, sigstore)
    assert not res.verified and "metrics.json" in res.reason


@pytest.mark.parametrize("part", ["signedEntryTimestamp", "checkpoint", "sct", "envelope"])
def test_the_transparency_material_is_checked(signed, sigstore, tmp_path, part):
    """Each piece the log and the CT log contributed is verified: a forged one is refused."""
    copy = tmp_path / part
    shutil.copytree(signed, copy)
    bundle = json.loads((copy / "model.sig").read_text())
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    if part == "signedEntryTimestamp":
        entry["integratedTime"] = str(int(entry["integratedTime"]) + 60)  # the promise no longer matches
        want = "SET"
    elif part == "checkpoint":
        note = entry["inclusionProof"]["checkpoint"]["envelope"]
        entry["inclusionProof"]["checkpoint"]["envelope"] = note.replace("\n1\n", "\n2\n", 1)
        want = "checkpoint"
    elif part == "sct":  # a certificate the CT log never saw: re-issued without asking it
        other = PrivateSigstore(tmp_path)
        other.ca_key, other.ca_cert = sigstore.ca_key, sigstore.ca_cert  # same CA, another CT log key
        other.sign_model(copy / "model", copy / "model.sig", identity=IDENTITY, issuer=ISSUER)
        bundle = json.loads((copy / "model.sig").read_text())
        want = "SCT"
    else:  # the envelope's signature, not the certificate's key
        sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
        sig[-1] ^= 1
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
        want = "DSSE: invalid signature"
    (copy / "model.sig").write_text(json.dumps(bundle))
    res = check(copy, sigstore)
    assert not res.verified and want in res.reason, res.reason


def test_the_verify_command_enforces_identity_and_issuer(signed, sigstore, capsys):
    base = ["verify", "--artifact", str(signed), "--trust-config", str(sigstore.trust_config)]
    assert server_main([*base, "--identity", IDENTITY, "--oidc-issuer", ISSUER]) == 0
    assert json.loads(capsys.readouterr().out)["signer"] == f"{IDENTITY} ({ISSUER})"
    assert server_main([*base, "--identity", "mallory@hardened.test", "--oidc-issuer", ISSUER]) == 3
    assert "SANs do not match" in json.loads(capsys.readouterr().out)["reason"]
