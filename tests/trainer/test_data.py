"""Data sources and formats."""
import gzip
import struct

import boto3
import numpy as np
import pytest

from helpers import ROOT
from hardened_trainer.data import DataError, check_shape, load_dataset, read_idx, split

MNIST = ROOT.parent / "shared/data/mnist-t10k"


def idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_builtin_digits_in_unit_range():
    ds = load_dataset("builtin:digits")
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0 and ds.raw_scale == 16.0
    assert set(np.unique(ds.y)) == set(range(10))


def test_max_samples_is_a_fixed_seed_subset():
    a = load_dataset("builtin:digits", max_samples=100, seed=3)
    b = load_dataset("builtin:digits", max_samples=100, seed=3)
    assert len(a) == 100 and np.array_equal(a.y, b.y)


def test_split_is_stratified_and_deterministic():
    ds = load_dataset("builtin:digits")
    s1, s2 = split(ds, test_fraction=0.25, seed=0), split(ds, test_fraction=0.25, seed=0)
    assert np.array_equal(s1.y_test, s2.y_test)
    assert len(s1.y_test) == 450
    assert np.bincount(s1.y_test).min() >= 40


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_gzip_or_raw(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20, dtype=np.uint8) % 10
    for name, arr in [("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)]:
        blob = idx_bytes(arr)
        (tmp_path / (name + (".gz" if compress else ""))).write_bytes(gzip.compress(blob) if compress else blob)
    ds = load_dataset(f"file://{tmp_path}")
    assert ds.x.shape == (20, 1, 28, 28) and ds.raw_scale == 255.0
    assert np.allclose(ds.x[3, 0] * 255, images[3])
    assert list(ds.y) == list(labels)


@pytest.mark.skipif(not MNIST.exists(), reason="shared MNIST data not beside the checkout")
def test_official_mnist_t10k():
    ds = load_dataset(f"file://{MNIST}")
    assert ds.x.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y).tolist()[:3] == [980, 1135, 1032]  # the published t10k class counts


@pytest.mark.parametrize("blob, message", [
    (b"\x00\x00\x07\x01", "bad magic number"),
    (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
    (struct.pack(">BBBBII", 0, 0, 8, 2, 3, 3) + b"\x00" * 8, "IDX body has 8 bytes, header says 9"),
])
def test_bad_idx_is_rejected(blob, message):
    with pytest.raises(DataError, match=message):
        read_idx(blob, "f")


def test_npz_roundtrip_and_pickles_refused(tmp_path):
    x = np.random.default_rng(0).random((10, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(10) % 3)
    ds = load_dataset(f"file://{tmp_path / 'ok.npz'}")
    assert np.allclose(ds.x, x) and ds.raw_scale == 1.0
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="not a readable .npz without pickles"):
        load_dataset(f"file://{tmp_path / 'pickled.npz'}")
    np.savez(tmp_path / "noy.npz", x=x)
    with pytest.raises(DataError, match=r"needs arrays 'x' and 'y', found \['x'\]"):
        load_dataset(f"file://{tmp_path / 'noy.npz'}")


def test_nan_images_and_label_mismatch(tmp_path):
    x = np.zeros((4, 1, 2, 2), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(4, int))
    with pytest.raises(DataError, match="NaN or Inf"):
        load_dataset(f"file://{tmp_path / 'nan.npz'}")
    np.savez(tmp_path / "n.npz", x=np.zeros((4, 1, 2, 2)), y=np.zeros(3, int))
    with pytest.raises(DataError, match="4 images but 3 labels"):
        load_dataset(f"file://{tmp_path / 'n.npz'}")


def test_missing_file():
    with pytest.raises(DataError, match="file:///nope/x.npz: no such file or folder"):
        load_dataset("file:///nope/x.npz")


def test_shape_and_classes_must_fit_the_spec():
    ds = load_dataset("builtin:digits", max_samples=50)
    with pytest.raises(DataError, match=r"examples have shape \[1, 8, 8\], spec.model.inputShape is \[1, 28, 28\]"):
        check_shape(ds, [1, 28, 28], 10)
    with pytest.raises(DataError, match="spec.model.numClasses is 5"):
        check_shape(ds, [1, 8, 8], 5)


@pytest.mark.server
def test_s3_npz_and_idx_prefix(moto_server):
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="datasets")
    import io
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((6, 1, 8, 8), np.float32), y=np.arange(6) % 2)
    s3.put_object(Bucket="datasets", Key="d/train.npz", Body=buf.getvalue())
    ds = load_dataset("s3://datasets/d/train.npz", s3_client=s3)
    assert ds.x.shape == (6, 1, 8, 8)
    images = np.zeros((5, 28, 28), np.uint8)
    s3.put_object(Bucket="datasets", Key="mnist/t10k-images-idx3-ubyte.gz", Body=gzip.compress(idx_bytes(images)))
    s3.put_object(Bucket="datasets", Key="mnist/t10k-labels-idx1-ubyte.gz",
                  Body=gzip.compress(idx_bytes(np.arange(5, dtype=np.uint8))))
    assert len(load_dataset("s3://datasets/mnist/", s3_client=s3)) == 5
    with pytest.raises(DataError, match="NoSuchKey"):
        load_dataset("s3://datasets/missing.npz", s3_client=s3)
