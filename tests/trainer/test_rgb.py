"""RGB images (issue 17, part 4): the built-in GroupNorm ResNet for [3, 32, 32], per-channel normalization
inside the model, image folders and channels-last arrays; a few steps of DP-SGD with adversarial training."""
import json

import numpy as np
import pytest

from hardened_trainer.__main__ import EXIT_OK, main
from hardened_trainer.data import DataError, load_dataset
from helpers import tiny_manifest, write_config

RGB = {"model": {"architecture": "resnet-gn-32", "inputShape": [3, 32, 32], "numClasses": 2},
       "data": {"maxSamples": 96, "validationSplit": 0.25, "sanitization": {"enabled": False}},
       "training": {"epochs": 1, "batchSize": 24, "learningRate": 0.05},
       "evaluation": {"maxSamples": 16, "pgdIter": 2}}


def synthetic(n: int, seed: int = 0, channels_last: bool = False):
    """Two classes that differ in colour: reddish and bluish noise, 8-bit."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 120, size=(n, 3, 32, 32)).astype(np.uint8)
    x[y == 0, 0] += 120
    x[y == 1, 2] += 120
    return (x.transpose(0, 2, 3, 1) if channels_last else x), y


def test_resnet_gn_32_trains_with_dp_sgd_and_pgd_on_rgb_data(tmp_path, keys, capsys):
    x, y = synthetic(96, channels_last=True)  # as image libraries write arrays
    np.savez(tmp_path / "rgb.npz", x=x, y=y)
    doc = tiny_manifest({**RGB, "data": {**RGB["data"], "source": f"file://{tmp_path}/rgb.npz"}})
    cfg = write_config(tmp_path, doc, keys[0])
    code = main(["--config", str(cfg)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == EXIT_OK, lines[-3:]
    epochs = [x for x in lines if x["event"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["epsilon"] is not None  # DP-SGD ran (tiny_manifest: privacy on)
    meta = json.loads((tmp_path / "out/model/model.json").read_text())
    assert meta["architecture"] == "resnet-gn-32" and meta["inputShape"] == [3, 32, 32]
    norm = meta["normalization"]  # one mean and std per channel, inside the model
    assert len(norm["mean"]) == 3 and norm["mean"][0] > norm["mean"][1] and meta["input"]["rawScale"] == 255.0
    metrics = json.loads((tmp_path / "out/model/metrics.json").read_text())
    assert metrics["robustAccuracy"] is not None and metrics["epsilon"] > 0


def test_the_server_rebuilds_the_rgb_model_with_its_per_channel_statistics(tmp_path, keys, capsys):
    from hardened_model.signing import TrustPolicy
    from hardened_server.model_server import load_verified

    x, y = synthetic(96)
    np.savez(tmp_path / "rgb.npz", x=x, y=y)
    doc = tiny_manifest({**RGB, "data": {**RGB["data"], "source": f"file://{tmp_path}/rgb.npz"},
                         "training": {**RGB["training"], "privacy": {"enabled": False}},
                         "gates": {"maxEpsilon": None}})
    assert main(["--config", str(write_config(tmp_path, doc, keys[0]))]) == EXIT_OK
    loaded = load_verified(tmp_path / "out/model", tmp_path / "out/model.sig", TrustPolicy(public_key=keys[1]))
    probs = loaded.predict(x[:4].astype(np.float32) / 255.0)
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_image_folders_load_as_rgb_with_sorted_class_names(tmp_path):
    from PIL import Image

    x, y = synthetic(6)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = tmp_path / "pets" / ("cat" if label == 0 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i}.png")
    ds = load_dataset(f"file://{tmp_path}/pets")
    assert ds.x.shape == (6, 3, 32, 32) and ds.raw_scale == 255.0
    assert sorted(ds.y.tolist()) == [0, 0, 0, 1, 1, 1]
    cat = ds.x[ds.y == 0][:, 0].mean()
    assert cat > ds.x[ds.y == 0][:, 2].mean()  # cats are the reddish class: channels kept in RGB order
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "pets/dog/small.png")
    with pytest.raises(DataError, match=r"dog/small.png is 16x16, the first image 32x32: resize the images"):
        load_dataset(f"file://{tmp_path}/pets")
