"""Tabular data (spec.data.format tabular): a CSV or Parquet table, read with pyarrow, checked cell by cell
against spec.data.features, label and positiveClass.

The model takes one float32 row per example, features in schema order; a category is its index in the
vocabulary (the model one-hot encodes it). The label becomes 1 for positiveClass and 0 for the one other
value. Every problem is a DataError naming the file, the column and the first bad row (1-based data rows;
in a CSV file row N is line N + 1, after the header), and nothing is rescaled: amounts of 281 and 1,077
stay 281 and 1,077 (issue 15: they were divided by 255 and clipped).
"""
from __future__ import annotations

import io
import pathlib
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np

from hardened_model.spec import DataSection, Feature

from .data import DataError, DataFile, check_pin, read_s3_object


@dataclass(frozen=True)
class Table:
    x: np.ndarray                     # float32 (N, n_features); categories as vocabulary indices
    y: np.ndarray                     # int64 (N,): 1 = positiveClass
    source: str
    negative_class: str               # the label value that is not positiveClass
    imputed: dict[str, float] = field(default_factory=dict)  # feature -> median used for empty cells
    files: tuple[DataFile, ...] = ()  # what was read, for the provenance

    def __len__(self) -> int:
        return len(self.y)


def read_table(blob: bytes, source: str):
    """A pyarrow Table from CSV or Parquet bytes (by extension; Parquet also by its magic number)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = urlparse(source).path.lower()
    try:
        if path.endswith(".parquet") or blob[:4] == b"PAR1":
            return pq.read_table(io.BytesIO(blob))
        if not blob.strip():
            raise DataError(f"{source}: the file is empty")
        # every column as text: each cell is then checked here, so a bad one is named with its row
        header = pacsv.open_csv(io.BytesIO(blob)).schema.names
        types = {name: pa.string() for name in header}
        return pacsv.read_csv(io.BytesIO(blob), convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=True, null_values=["", "NA", "NaN", "nan", "null"]))
    except DataError:
        raise
    except (pa.ArrowException, OSError) as exc:  # ArrowInvalid, a parse error, is one
        raise DataError(f"{source}: not a readable CSV or Parquet file: {exc}") from None


def load_bytes(source: str, s3_client=None, version_id: str | None = None) -> tuple[bytes, DataFile]:
    """The file's bytes and its record (sha256, S3 versionId) for the provenance."""
    if source.startswith("file://"):
        path = pathlib.Path(urlparse(source).path)
        if not path.is_file():
            raise DataError(f"{source}: no such file")
        blob = path.read_bytes()
        return blob, DataFile.of(path.name, blob)
    if source.startswith("s3://"):
        import boto3

        url = urlparse(source)
        key = url.path.lstrip("/")
        blob, vid = read_s3_object(s3_client or boto3.client("s3"), source, url.netloc, key, version_id)
        return blob, DataFile.of(key.rsplit("/", 1)[-1], blob, vid)
    raise DataError(f"{source}: tabular data comes from file:// or s3://")


def _text(values: list) -> list[str | None]:
    """Cells as text; an integral float (a Parquet column of 1.0, 0.0) reads as the integer."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v).strip())
    return out


def _where(source: str, column: str, row: int) -> str:
    line = f" (line {row + 2})" if not urlparse(source).path.lower().endswith(".parquet") else ""
    return f"{source}: column {column!r}, row {row + 1}{line}"


def _numbers(cells: list[str | None], feature: Feature, source: str) -> np.ndarray:
    out = np.empty(len(cells), np.float64)
    for i, cell in enumerate(cells):
        if cell is None:
            out[i] = np.nan
            continue
        try:
            value = float(cell)
        except ValueError:
            raise DataError(f"{_where(source, feature.name, i)}: {cell!r} is not a number") from None
        if not np.isfinite(value):
            raise DataError(f"{_where(source, feature.name, i)}: {cell!r} is not a finite number")
        if feature.type == "integer" and not value.is_integer():
            raise DataError(f"{_where(source, feature.name, i)}: {cell!r} is not an integer")
        if feature.min is not None and value < feature.min or feature.max is not None and value > feature.max:
            raise DataError(f"{_where(source, feature.name, i)}: {cell} is outside [{feature.min}, {feature.max}] "
                            "(spec.data.features)")
        out[i] = value
    missing = np.isnan(out)
    if missing.any() and feature.missing != "impute-median":
        raise DataError(f"{_where(source, feature.name, int(missing.argmax()))}: the cell is empty "
                        "(set missing: impute-median on this feature to fill it with the median)")
    return out


def _categories(cells: list[str | None], feature: Feature, source: str) -> np.ndarray:
    index = {v: i for i, v in enumerate(feature.vocabulary or [])}
    out = np.empty(len(cells), np.float64)
    for i, cell in enumerate(cells):
        if cell is None:
            raise DataError(f"{_where(source, feature.name, i)}: the cell is empty")
        if cell not in index:
            raise DataError(f"{_where(source, feature.name, i)}: {cell!r} is not in the vocabulary "
                            f"{feature.vocabulary}")
        out[i] = index[cell]
    return out


def load_table(data: DataSection, *, s3_client=None) -> Table:
    """Read and check the table named by spec.data (format tabular)."""
    source = data.source
    blob, record = load_bytes(source, s3_client, data.version_id)
    check_pin([record], data.sha256, source)  # before a byte is parsed
    table = read_table(blob, source)
    names = [f.name for f in data.features or []]
    columns = list(table.column_names)
    missing = [n for n in names + [data.label] if n not in columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; the file has {columns}")
    extra = [c for c in columns if c not in names and c != data.label]
    if extra:
        raise DataError(f"{source}: column(s) {extra} are neither a feature nor the label: list them in "
                        "spec.data.features or drop them from the file (nothing is ignored silently)")
    if table.num_rows == 0:
        raise DataError(f"{source}: the file has a header but no rows")
    x = np.empty((table.num_rows, len(names)), np.float32)
    imputed = {}
    for j, feature in enumerate(data.features or []):
        cells = _text(table.column(feature.name).to_pylist())
        col = _categories(cells, feature, source) if feature.type == "category" else _numbers(cells, feature,
                                                                                              source)
        if np.isnan(col).any():
            median = float(np.nanmedian(col))
            if feature.type == "integer":
                median = float(round(median))
            col = np.where(np.isnan(col), median, col)
            imputed[feature.name] = median
        x[:, j] = col
    labels = _text(table.column(data.label).to_pylist())
    for i, value in enumerate(labels):
        if value is None:
            raise DataError(f"{_where(source, data.label, i)}: the label is empty")
    values = sorted(set(labels))
    if data.positive_class not in values:
        raise DataError(f"{source}: column {data.label!r}: no row has the positive class "
                        f"{data.positive_class!r}; the labels are {values[:10]}")
    others = [v for v in values if v != data.positive_class]
    if not others:
        raise DataError(f"{source}: column {data.label!r}: every row is {data.positive_class!r}; a classifier "
                        "needs both classes")
    if len(others) > 1:
        third = next(i for i, v in enumerate(labels) if v not in (data.positive_class, others[0]))
        raise DataError(f"{_where(source, data.label, third)}: {labels[third]!r} is a third class; a tabular "
                        f"model is binary: {data.positive_class!r} (positive) against {others[0]!r}")
    y = np.fromiter((v == data.positive_class for v in labels), np.int64, count=len(labels))
    return Table(x=x, y=y, source=source, negative_class=others[0], imputed=imputed, files=(record,))


def bounds(features: list[Feature], x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature [low, high]: the spec's min/max where given, else the training split's range."""
    lo, hi = x_train.min(0).astype(np.float32), x_train.max(0).astype(np.float32)
    for j, f in enumerate(features):
        if f.min is not None:
            lo[j] = f.min
        if f.max is not None:
            hi[j] = f.max
    return lo, hi


@dataclass(frozen=True)
class Constraints:
    """What a realistic attack on a tabular model may do, per feature (arrays of n_features): change only
    mutable number/integer columns (``mask``), by at most ``eps`` standard deviations (``scale``: the training
    split's std), stay within [``low``, ``high``], and leave integers whole (``integer``). Categories are never
    moved by a gradient attack."""
    mask: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    integer: np.ndarray

    def radius(self, eps: float) -> np.ndarray:
        """The L-infinity radius per feature, in the data's own units (0 where the attacker has no hand)."""
        return (eps * self.scale * self.mask).astype(np.float32)

    def snap(self, x_adv: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
        """The final projection: integers whole (rounded, or truncated toward the original when rounding would
        leave the radius), immutable columns exactly as they were, everything within [low, high]."""
        delta = x_adv - x
        rounded = np.rint(delta)
        rounded = np.where(np.abs(rounded) > self.radius(eps) + 1e-6, np.trunc(delta), rounded)
        out = np.where(self.integer, x + rounded, x_adv)
        out = np.where(self.mask, out, x)
        return np.clip(out, np.minimum(self.low, x), np.maximum(self.high, x)).astype(np.float32)


def constraints(features: list[Feature], x_train: np.ndarray) -> Constraints:
    numeric = np.array([f.type != "category" for f in features])
    low, high = bounds(features, x_train)
    std = x_train.std(0).astype(np.float32)
    return Constraints(mask=(numeric & np.array([f.mutable for f in features])).astype(np.float32),
                       scale=np.where(std > 0, std, 1.0).astype(np.float32), low=low, high=high,
                       integer=np.array([f.type == "integer" for f in features]))


def feature_dicts(features: list[Feature]) -> list[dict]:
    """The schema the model is built from and model.json records: name, type, vocabulary."""
    return [{"name": f.name, "type": f.type, **({"vocabulary": list(f.vocabulary)} if f.vocabulary else {})}
            for f in features]
