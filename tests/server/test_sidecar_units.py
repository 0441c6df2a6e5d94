"""Output hardening, API keys and token-bucket mapping (no sockets)."""
import hashlib
import json

import numpy as np
import pytest

from hardened_model.contracts import load_serving_config
from hardened_server.errors import Unauthorized
from hardened_server.protocol import dumps
from hardened_server.auth import Principal, key_id
from hardened_server.ratelimit import ApiKeys, Authenticator, bucket_item
from hardened_server.validation import ABSTAIN, OodScorer, harden_output
from helpers import serving_config


def model_response(probs):
    probs = np.asarray(probs)
    return {"model_name": "digits-demo", "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape), "data": probs.reshape(-1).tolist()},
        {"name": "label", "datatype": "BYTES", "shape": [len(probs)], "data": [str(i) for i in probs.argmax(1)]}],
        "parameters": {"digest": "x"}}


PROBS = [[0.9, 0.1] + [0.0] * 8, [0.3, 0.25, 0.2, 0.25] + [0.0] * 6]


def hardened(probs, cfg):
    """harden_output as a client sees it: the body after encoding."""
    out, low = harden_output(model_response(probs), cfg)
    return json.loads(dumps(out)), low


@pytest.mark.parametrize("mode, expect_probs", [("probabilities", True), ("rounded", True), ("label", False)])
def test_output_modes(tmp_path, mode, expect_probs):
    cfg = load_serving_config(str(serving_config(tmp_path / "s.json", {"output": {
        "mode": mode, "decimals": 1, "minConfidence": 0.5, "lowConfidenceAction": "flag"}})))
    out, low = hardened(PROBS, cfg)
    names = [o["name"] for o in out["outputs"]]
    assert ("probabilities" in names) == expect_probs
    assert out["outputs"][names.index("label")]["data"] == ["0", "0"]
    assert out["outputs"][names.index("low_confidence")]["data"] == [False, True] and low == 1
    assert "parameters" not in out  # the digest stays inside the pod
    if mode == "rounded":
        assert out["outputs"][0]["data"][:4] == [0.9, 0.1, 0.0, 0.0]
        assert out["outputs"][0]["data"][10:14] == [0.3, 0.2, 0.2, 0.2]  # 0.25 -> 0.2 (banker's)


def test_abstain_replaces_low_confidence_rows(tmp_path):
    cfg = load_serving_config(str(serving_config(tmp_path / "s.json", {"output": {
        "mode": "probabilities", "minConfidence": 0.5, "lowConfidenceAction": "abstain"}})))
    out, low = hardened(PROBS, cfg)
    assert out["outputs"][1]["data"] == ["0", ABSTAIN]
    assert out["outputs"][0]["data"][10:20] == [0.0] * 10


def test_ood_score_separates_noise_from_digits():
    from hardened_trainer.data import load_dataset

    ds = load_dataset("builtin:digits")
    flat = ds.x.reshape(len(ds.x), -1)
    scorer = OodScorer(flat.mean(0).tolist(), flat.std(0).tolist())
    natural = scorer.score(ds.x[:200])
    noise = scorer.score(np.random.default_rng(0).random((200, 1, 8, 8)).astype(np.float32))
    assert np.percentile(natural, 99) < 2.0 < noise.min()


def test_api_keys_hashed_constant_time_and_reloaded(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\nkey-aaaaaaaaaaaaaaaa\n\nkey-bbbbbbbbbbbbbbbb\n")
    keys = ApiKeys(str(path), check_every=0)
    assert keys.authenticate("key-bbbbbbbbbbbbbbbb") == Principal(
        hashlib.sha256(b"key-bbbbbbbbbbbbbbbb").hexdigest()[:12], None)
    assert key_id("key-bbbbbbbbbbbbbbbb") == keys.authenticate("key-bbbbbbbbbbbbbbbb").client
    assert all(len(d) == 32 for d in keys.digests)  # only digests are kept
    with pytest.raises(Unauthorized, match="unknown API key"):
        keys.authenticate("key-cccccccccccccccc")
    with pytest.raises(Unauthorized, match="missing API key"):
        keys.authenticate(None)
    path.write_text("key-cccccccccccccccc\n")
    keys.maybe_reload()
    assert keys.authenticate("key-cccccccccccccccc")
    with pytest.raises(Unauthorized):
        keys.authenticate("key-aaaaaaaaaaaaaaaa")


def test_short_keys_are_refused(tmp_path):
    (tmp_path / "k").write_text("short\n")
    with pytest.raises(ValueError, match="line 1: API keys must have at least 16 characters"):
        ApiKeys(str(tmp_path / "k"))


@pytest.mark.parametrize("rate, burst, amount, seconds", [(5, 10, 10, 2), (10, 10, 10, 1), (3, 10, 10, 4),
                                                          (100, 250, 250, 3)])
def test_token_bucket_mapping_never_exceeds_the_rate(rate, burst, amount, seconds):
    item = bucket_item(rate, burst)
    assert (item.amount, item.get_expiry()) == (amount, seconds)
    assert item.amount / item.get_expiry() <= rate


def test_presented_key_header_forms(tmp_path):
    class R:
        def __init__(self, h):
            self.headers = h
    (tmp_path / "keys").write_text("key-aaaaaaaaaaaaaaaa\n")
    authenticate = Authenticator(ApiKeys(str(tmp_path / "keys")), None)
    me = key_id("key-aaaaaaaaaaaaaaaa")
    assert authenticate(R({"Authorization": "Bearer key-aaaaaaaaaaaaaaaa"})).client == me
    assert authenticate(R({"Authorization": "bearer  key-aaaaaaaaaaaaaaaa "})).client == me
    assert authenticate(R({"X-API-Key": "key-aaaaaaaaaaaaaaaa"})).client == me
    with pytest.raises(Unauthorized, match="missing API key"):
        authenticate(R({}))
