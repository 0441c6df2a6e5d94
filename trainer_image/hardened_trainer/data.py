"""Training data: builtin:digits, file:// (.npz, MNIST IDX, or a folder of class folders of images), s3:// (boto3);
fixed-seed split.

Every loader returns images as float32 in [0, 1], shape (N, C, H, W), and int64
labels. [0, 1] is the model's input space: attacks (eps), the validation
sidecar's value range and the server all use it.
"""
from __future__ import annotations

import gzip
import io
import pathlib
import struct
import tempfile
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np


class DataError(ValueError):
    """Data that cannot be used; the message names the source and the problem."""


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 (N, C, H, W) in [0, 1]
    y: np.ndarray  # int64 (N,)
    raw_scale: float  # raw pixel value that maps to 1.0 (16 for digits, 255 for MNIST)
    source: str

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# ------------------------------------------------------------------ formats
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(data: bytes, name: str = "idx") -> np.ndarray:
    """Parse one IDX file (the MNIST format), gzip-compressed or raw."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{name}: IDX body has {len(data) - header} bytes, header says {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _from_arrays(images: np.ndarray, labels: np.ndarray, source: str) -> Dataset:
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # channels last (N, H, W, C), as image libraries write them
    if images.ndim == 2:  # flat vectors: keep as (N, D)
        pass
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise DataError(f"{source}: images contain NaN or Inf")
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 1.0)
    if lo >= 0.0 and hi <= 1.0:
        scale = 1.0
    elif lo >= 0.0 and hi <= 255.0 and np.equal(np.mod(images, 1), 0).all():
        scale = 16.0 if hi <= 16.0 else 255.0  # raw pixels: sklearn's digits (0-16) or 8-bit images
    else:  # never rescaled silently (issue 15: transaction amounts were divided by 255 and clipped)
        raise DataError(f"{source}: values span {lo:g}..{hi:g}; image data is pixels in [0, 1] or whole numbers "
                        "0-255. For other data set spec.data.format: tabular with its features")
    x = (images / scale).astype(np.float32)
    return Dataset(x=x, y=labels.astype(np.int64), raw_scale=scale, source=source)


def _load_npz(blob: bytes, source: str) -> Dataset:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:  # never unpickle data
            if "x" not in npz or "y" not in npz:
                raise DataError(f"{source}: an .npz needs arrays 'x' and 'y', found {sorted(npz.files)}")
            return _from_arrays(npz["x"], npz["y"], source)
    except (ValueError, OSError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{source}: not a readable .npz without pickles: {exc}") from None


def _load_idx_dir(folder: pathlib.Path, source: str) -> Dataset:
    files = sorted(p for p in folder.iterdir() if "idx" in p.name)
    images = [p for p in files if "idx3" in p.name]
    labels = [p for p in files if "idx1" in p.name]
    if len(images) != 1 or len(labels) != 1:
        raise DataError(f"{source}: a folder needs one *idx3* images file and one *idx1* labels file, "
                        f"found {[p.name for p in files]}")
    return _from_arrays(read_idx(images[0].read_bytes(), images[0].name),
                        read_idx(labels[0].read_bytes(), labels[0].name), source)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _load_image_folders(folder: pathlib.Path, source: str) -> Dataset:
    """A folder of class folders of images (``cat/001.png``, ``dog/7.jpg``): classes are the sorted folder
    names, images are read as RGB and must all have one size (nothing is resized: a wrong size is an error
    naming the file)."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    images, labels, size = [], [], None
    for index, cls in enumerate(classes):
        files = sorted(p for p in cls.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{source}: class folder {cls.name!r} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            try:
                with Image.open(f) as img:
                    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{source}: {cls.name}/{f.name}: not a readable image: {exc}") from None
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise DataError(f"{source}: {cls.name}/{f.name} is {arr.shape[1]}x{arr.shape[0]}, the first image "
                                f"{size[1]}x{size[0]}: resize the images beforehand (nothing is resized here)")
            images.append(arr.transpose(2, 0, 1))
            labels.append(index)
    import dataclasses

    # 8-bit pixels: 255 maps to 1.0 (not left to _from_arrays' guess, which takes a dark set for 0-16 digits)
    ds = _from_arrays(np.stack(images).astype(np.float32) / 255.0, np.asarray(labels, dtype=np.int64), source)
    return dataclasses.replace(ds, raw_scale=255.0)


def _load_local(path: pathlib.Path, source: str) -> Dataset:
    if path.is_dir():
        if any(p.is_dir() for p in path.iterdir()):
            return _load_image_folders(path, source)
        return _load_idx_dir(path, source)
    if not path.exists():
        raise DataError(f"{source}: no such file or folder")
    return _load_npz(path.read_bytes(), source)


# ------------------------------------------------------------------ sources
def load_dataset(source: str, *, s3_client=None, max_samples: int | None = None, seed: int = 0) -> Dataset:
    """Load a data source named as in ``spec.data.source``."""
    if source == "builtin:digits":
        from sklearn.datasets import load_digits  # ships with scikit-learn: no download

        digits = load_digits()
        ds = _from_arrays(digits.images, digits.target, source)
    elif source.startswith("file://"):
        ds = _load_local(pathlib.Path(urlparse(source).path), source)
    elif source.startswith("s3://"):
        ds = _load_s3(source, s3_client)
    else:
        raise DataError(f"{source}: unsupported data source (builtin:digits, file://, s3://)")
    return subsample(ds, max_samples, seed)


def subsample(ds: Dataset, max_samples: int | None, seed: int) -> Dataset:
    """spec.data.maxSamples: a fixed-seed random subset."""
    if max_samples is not None and len(ds) > max_samples:
        keep = np.random.default_rng(seed).permutation(len(ds))[:max_samples]
        ds = Dataset(x=ds.x[keep], y=ds.y[keep], raw_scale=ds.raw_scale, source=ds.source)
    return ds


def _load_s3(source: str, s3_client) -> Dataset:
    import boto3
    import botocore.exceptions

    url = urlparse(source)
    bucket, key = url.netloc, url.path.lstrip("/")
    client = s3_client or boto3.client("s3")
    try:
        if key.endswith("/"):  # a prefix holding IDX files
            with tempfile.TemporaryDirectory() as tmp:
                listing = client.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
                for obj in listing:
                    name = obj["Key"][len(key):]
                    if name and "/" not in name:
                        client.download_file(bucket, obj["Key"], str(pathlib.Path(tmp) / name))
                return _load_idx_dir(pathlib.Path(tmp), source)
        blob = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as exc:
        raise DataError(f"{source}: S3 error {exc.response['Error'].get('Code')}: "
                        f"{exc.response['Error'].get('Message')}") from None
    if key.endswith((".gz", "-ubyte")):
        raise DataError(f"{source}: IDX data must be a prefix (ending in /) holding the images and labels files")
    return _load_npz(blob, source)


def split(ds: Dataset, *, test_fraction: float, seed: int) -> Split:
    """Stratified, fixed-seed train/test split."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(ds.x, ds.y, test_size=test_fraction, random_state=seed,
                                              stratify=ds.y if np.bincount(ds.y).min() >= 2 else None)
    return Split(x_tr, y_tr, x_te, y_te)


def check_shape(ds: Dataset, input_shape: list[int], num_classes: int) -> None:
    """The data must fit the model the spec declares."""
    if list(ds.x.shape[1:]) != list(input_shape):
        raise DataError(f"{ds.source}: examples have shape {list(ds.x.shape[1:])}, "
                        f"spec.model.inputShape is {list(input_shape)}")
    if len(ds.y) and (ds.y.min() < 0 or ds.y.max() >= num_classes):
        raise DataError(f"{ds.source}: labels span {int(ds.y.min())}..{int(ds.y.max())}, "
                        f"spec.model.numClasses is {num_classes}")
