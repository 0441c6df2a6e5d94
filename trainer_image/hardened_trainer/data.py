"""Training data: builtin:digits, file:// (.npz, MNIST IDX, or a folder of class folders of images), s3:// (boto3);
fixed-seed split.

Every loader returns images as float32 in [0, 1], shape (N, C, H, W), and int64
labels. [0, 1] is the model's input space: attacks (eps), the validation
sidecar's value range and the server all use it.

Every loader first reads the bytes of each file it uses, records their sha256 (and, from S3, the object
versionId), and checks ``data.sha256`` against them before anything parses them (issue 18): the provenance
names exactly the bytes the model was trained from. Image folders (and tabular files, tabular.py) are hashed in
pieces and decoded one image at a time into an array that is file-backed beyond the memory budget (rows.py,
issue 28); an .npz and MNIST IDX files are read whole.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pathlib
import struct
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

from .rows import allocate, hash_file, hash_stream, take


class DataError(ValueError):
    """Data that cannot be used; the message names the source and the problem."""


@dataclass(frozen=True)
class DataFile:
    """One file the trainer read: its name relative to the source, sha256, size, and S3 versionId."""

    name: str
    sha256: str
    size: int
    version_id: str | None = None

    @classmethod
    def of(cls, name: str, blob: bytes, version_id: str | None = None) -> "DataFile":
        return cls(name, hashlib.sha256(blob).hexdigest(), len(blob), version_id)


def data_digest(files: tuple[DataFile, ...] | list[DataFile]) -> str:
    """The data's sha256: one file's own sha256, or for several the sha256 of their `sha256sum` lines
    ("<sha256>  <name>\\n", sorted by name), which `cd DIR && sha256sum FILES | sha256sum` reproduces."""
    if len(files) == 1:
        return files[0].sha256
    lines = "".join(f"{f.sha256}  {f.name}\n" for f in sorted(files, key=lambda f: f.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def check_pin(files: list[DataFile], pin: str | None, source: str) -> None:
    """data.sha256 against the bytes read, before they are parsed: exit 2 naming the file(s)."""
    if pin is None:
        return
    got = data_digest(files)
    if got == pin:
        return
    if len(files) == 1:
        raise DataError(f"data.sha256: {source} ({files[0].name}) has sha256 {got}, the spec pins {pin}; the file "
                        "changed or the pin is wrong")
    listing = "; ".join(f"{f.name} {f.sha256}" for f in sorted(files, key=lambda f: f.name)[:20])
    more = f"; and {len(files) - 20} more" if len(files) > 20 else ""
    raise DataError(f"data.sha256: the {len(files)} files read from {source} have digest {got}, the spec pins {pin}; "
                    f"a file changed, was added or removed, or the pin is wrong. Files read: {listing}{more}")


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 (N, C, H, W) in [0, 1]
    y: np.ndarray  # int64 (N,)
    raw_scale: float  # raw pixel value that maps to 1.0 (16 for digits, 255 for MNIST)
    source: str
    files: tuple[DataFile, ...] = ()  # what was read, for the provenance

    def __len__(self) -> int:
        return len(self.y)

    @property
    def digest(self) -> str | None:
        return data_digest(self.files) if self.files else None


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


def _parse_idx(blobs: dict[str, bytes], source: str) -> Dataset:
    """MNIST IDX: one *idx3* images file and one *idx1* labels file among ``blobs`` (name -> bytes)."""
    images = [n for n in sorted(blobs) if "idx3" in n]
    labels = [n for n in sorted(blobs) if "idx1" in n]
    if len(images) != 1 or len(labels) != 1:
        raise DataError(f"{source}: a folder needs one *idx3* images file and one *idx1* labels file, "
                        f"found {sorted(blobs)}")
    return _from_arrays(read_idx(blobs[images[0]], images[0]), read_idx(blobs[labels[0]], labels[0]), source)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _image_files(folder: pathlib.Path, source: str) -> list[tuple[str, pathlib.Path]]:
    """A folder of class folders of images (``cat/001.png``, ``dog/7.jpg``): (``class/file`` name, path) of every
    image, classes in sorted folder order, files sorted within their class."""
    found = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in cls.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{source}: class folder {cls.name!r} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        found += [(f"{cls.name}/{f.name}", f) for f in files]
    return found


def _decode(path: pathlib.Path, name: str, source: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{source}: {name}: not a readable image: {exc}") from None


def _load_image_folders(folder: pathlib.Path, source: str, pin: str | None, budget: int | None) -> Dataset:
    """Every image hashed (in pieces) and the pin checked, then each decoded in turn, as RGB, into an array of
    examples (file-backed beyond the memory budget: rows.py), so one image at a time is in memory. Every image
    must have one size (nothing is resized: a wrong size is an error naming the file)."""
    images = _image_files(folder, source)
    files = [DataFile(name, *hash_file(path)) for name, path in images]
    check_pin(files, pin, source)
    first = _decode(images[0][1], images[0][0], source)
    x = allocate((len(images), 3, first.shape[0], first.shape[1]), np.float32, budget=budget)
    classes = sorted({name.split("/", 1)[0] for name, _ in images})
    y = np.array([classes.index(name.split("/", 1)[0]) for name, _ in images], np.int64)
    for i, (name, path) in enumerate(images):
        arr = first if i == 0 else _decode(path, name, source)
        if arr.shape != first.shape:
            raise DataError(f"{source}: {name} is {arr.shape[1]}x{arr.shape[0]}, the first image "
                            f"{first.shape[1]}x{first.shape[0]}: resize the images beforehand (nothing is resized "
                            "here)")
        # 8-bit pixels: 255 maps to 1.0 (not guessed, as _from_arrays would take a dark set for 0-16 digits)
        x[i] = arr.transpose(2, 0, 1).astype(np.float32) / 255.0
    return Dataset(x=x, y=y, raw_scale=255.0, source=source, files=tuple(files))


def _load_local(path: pathlib.Path, source: str, pin: str | None, budget: int | None = None) -> Dataset:
    if path.is_dir():
        if any(p.is_dir() for p in path.iterdir()):
            return _load_image_folders(path, source, pin, budget)
        else:
            blobs, parse = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if "idx" in p.name}, _parse_idx
    elif not path.exists():
        raise DataError(f"{source}: no such file or folder")
    else:
        blobs, parse = {path.name: path.read_bytes()}, lambda b, s: _load_npz(b[path.name], s)
    files = [DataFile.of(name, blob) for name, blob in blobs.items()]
    check_pin(files, pin, source)
    return dataclasses.replace(parse(blobs, source), files=tuple(files))


def builtin_digits_file() -> tuple[str, bytes]:
    """The file scikit-learn's load_digits reads (shipped in the wheel)."""
    from importlib import resources

    name = "sklearn/datasets/data/digits.csv.gz"
    return name, (resources.files("sklearn.datasets.data") / "digits.csv.gz").read_bytes()


# ------------------------------------------------------------------ sources
def load_dataset(source: str, *, s3_client=None, max_samples: int | None = None, seed: int = 0,
                 sha256: str | None = None, version_id: str | None = None, budget: int | None = None) -> Dataset:
    """Load a data source named as in ``spec.data.source``; ``sha256``/``version_id``: data.sha256/versionId;
    ``budget``: bytes of examples held in memory (rows.memory_budget() when None; image folders only: an .npz and
    IDX files are read whole)."""
    if source == "builtin:digits":
        from sklearn.datasets import load_digits  # ships with scikit-learn: no download

        name, blob = builtin_digits_file()
        files = [DataFile.of(name, blob)]
        check_pin(files, sha256, source)
        digits = load_digits()
        ds = dataclasses.replace(_from_arrays(digits.images, digits.target, source), files=tuple(files))
    elif source.startswith("file://"):
        ds = _load_local(pathlib.Path(urlparse(source).path), source, sha256, budget)
    elif source.startswith("s3://"):
        ds = _load_s3(source, s3_client, sha256, version_id)
    else:
        raise DataError(f"{source}: unsupported data source (builtin:digits, file://, s3://)")
    return subsample(ds, max_samples, seed, budget)


def subsample(ds: Dataset, max_samples: int | None, seed: int, budget: int | None = None) -> Dataset:
    """spec.data.maxSamples: a fixed-seed random subset."""
    if max_samples is not None and len(ds) > max_samples:
        # in row order: a file-backed source is then read front to back, not a page per row at random
        keep = np.sort(np.random.default_rng(seed).permutation(len(ds))[:max_samples])
        ds = dataclasses.replace(ds, x=take(ds.x, keep, budget=budget), y=ds.y[keep])
    return ds


def download_s3_object(client, source: str, bucket: str, key: str, sink, version_id: str | None = None
                       ) -> tuple[str, int, str | None]:
    """Stream one object (at ``version_id`` when given) into ``sink``, hashing it on the way: (sha256, size,
    versionId)."""
    import botocore.exceptions

    try:
        obj = client.get_object(Bucket=bucket, Key=key, **({"VersionId": version_id} if version_id else {}))
        sha, size = hash_stream(obj["Body"], sink)
        return sha, size, obj.get("VersionId")
    except botocore.exceptions.ClientError as exc:
        at = f" (versionId {version_id})" if version_id else ""
        raise DataError(f"{source}{at}: S3 error {exc.response['Error'].get('Code')}: "
                        f"{exc.response['Error'].get('Message')}") from None


def read_s3_object(client, source: str, bucket: str, key: str, version_id: str | None = None) -> tuple[bytes, str | None]:
    """(bytes, versionId) of one object, at ``version_id`` when given: for formats read whole (.npz, IDX)."""
    sink = io.BytesIO()
    _, _, vid = download_s3_object(client, source, bucket, key, sink, version_id)
    return sink.getvalue(), vid


def _load_s3(source: str, s3_client, pin: str | None = None, version_id: str | None = None) -> Dataset:
    import boto3
    import botocore.exceptions

    url = urlparse(source)
    bucket, key = url.netloc, url.path.lstrip("/")
    client = s3_client or boto3.client("s3")
    if key.endswith("/"):  # a prefix holding IDX files
        try:
            listing = client.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
        except botocore.exceptions.ClientError as exc:
            raise DataError(f"{source}: S3 error {exc.response['Error'].get('Code')}: "
                            f"{exc.response['Error'].get('Message')}") from None
        blobs, files = {}, []
        for obj in listing:
            name = obj["Key"][len(key):]
            if name and "/" not in name and "idx" in name:
                blob, vid = read_s3_object(client, source, bucket, obj["Key"])
                blobs[name] = blob
                files.append(DataFile.of(name, blob, vid))
        check_pin(files, pin, source)
        return dataclasses.replace(_parse_idx(blobs, source), files=tuple(files))
    if key.endswith((".gz", "-ubyte")):
        raise DataError(f"{source}: IDX data must be a prefix (ending in /) holding the images and labels files")
    blob, vid = read_s3_object(client, source, bucket, key, version_id)
    files = [DataFile.of(key.rsplit("/", 1)[-1], blob, vid)]
    check_pin(files, pin, source)
    return dataclasses.replace(_load_npz(blob, source), files=tuple(files))


def split(ds: Dataset, *, test_fraction: float, seed: int, budget: int | None = None) -> Split:
    """Stratified, fixed-seed train/test split. The split is drawn on row numbers and each part keeps the
    source's row order, copied block by block (rows.take): a file-backed data set gives file-backed parts, read
    front to back (in the permutation's order every row would be a page read at random), never a whole copy in
    memory. The order within a part is no signal: the loaders shuffle or Poisson-sample it."""
    from sklearn.model_selection import train_test_split

    i_tr, i_te = train_test_split(np.arange(len(ds.y)), test_size=test_fraction, random_state=seed,
                                  stratify=ds.y if np.bincount(ds.y).min() >= 2 else None)
    i_tr, i_te = np.sort(i_tr), np.sort(i_te)
    return Split(take(ds.x, i_tr, budget=budget), ds.y[i_tr], take(ds.x, i_te, budget=budget), ds.y[i_te])


def check_shape(ds: Dataset, input_shape: list[int], num_classes: int) -> None:
    """The data must fit the model the spec declares."""
    if list(ds.x.shape[1:]) != list(input_shape):
        raise DataError(f"{ds.source}: examples have shape {list(ds.x.shape[1:])}, "
                        f"spec.model.inputShape is {list(input_shape)}")
    if len(ds.y) and (ds.y.min() < 0 or ds.y.max() >= num_classes):
        raise DataError(f"{ds.source}: labels span {int(ds.y.min())}..{int(ds.y.max())}, "
                        f"spec.model.numClasses is {num_classes}")
