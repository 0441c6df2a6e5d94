"""Tabular data (spec.data.format tabular): a CSV or Parquet table, read with pyarrow, checked cell by cell
against spec.data.features, label and positiveClass.

The model takes one float32 row per example, features in schema order; a category is its index in the
vocabulary (the model one-hot encodes it). The label becomes 1 for positiveClass and 0 for the one other
value. Every problem is a DataError naming the file, the column and the first bad row (1-based data rows;
in a CSV file row N is line N + 1, after the header), and nothing is rescaled: amounts of 281 and 1,077
stay 281 and 1,077 (issue 15: they were divided by 255 and clipped).
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np

from hardened_model.spec import DataSection, Feature

from .data import DataError, DataFile, check_pin, download_s3_object
from .rows import adopt, allocate, extrema, hash_file, moments, scratch_file


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


PARQUET_MAGIC = b"PAR1"
BATCH_ROWS = 65536  # rows per Parquet batch: a batch's Python cells stay a few tens of MiB
CSV_BLOCK_BYTES = 8 << 20  # bytes per CSV batch


def _is_parquet(path: pathlib.Path, source: str) -> bool:
    with open(path, "rb") as f:
        return urlparse(source).path.lower().endswith(".parquet") or f.read(4) == PARQUET_MAGIC


def open_batches(path: pathlib.Path, source: str):
    """(column names, rows or None when unknown before reading, an iterator of pyarrow RecordBatches) of a CSV or
    Parquet file, read a batch at a time (Parquet by row groups, CSV by blocks)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if _is_parquet(path, source):
            # mapped, not read into buffers: a row group's compressed pages are file pages, not heap (reading a
            # 184 MiB file of 100,000-row groups peaked at 283 MiB of anonymous memory so, 471 MiB without)
            pf = pq.ParquetFile(path, memory_map=True, pre_buffer=False)
            return list(pf.schema_arrow.names), pf.metadata.num_rows, pf.iter_batches(batch_size=BATCH_ROWS)
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if not head.strip() and path.stat().st_size <= len(head):
            raise DataError(f"{source}: the file is empty")
        header = pacsv.open_csv(path).schema.names
        # every column as text: each cell is then checked here, so a bad one is named with its row
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                                convert_options=pacsv.ConvertOptions(
                                    column_types={name: pa.string() for name in header}, strings_can_be_null=True,
                                    null_values=["", "NA", "NaN", "nan", "null"]))
        return list(header), None, iter(reader)
    except DataError:
        raise
    except (pa.ArrowException, OSError) as exc:  # ArrowInvalid, a parse error, is one
        raise DataError(f"{source}: not a readable CSV or Parquet file: {exc}") from None


def _each_batch(batches, source: str):
    import pyarrow as pa

    try:
        yield from batches
    except (pa.ArrowException, OSError) as exc:  # a ragged row further down the file
        raise DataError(f"{source}: not a readable CSV or Parquet file: {exc}") from None


def local_file(source: str, s3_client=None, version_id: str | None = None) -> tuple[pathlib.Path, DataFile, bool]:
    """(a local path holding the file, its record for the provenance, whether the path is a download to delete).
    A file:// file is hashed where it is, in pieces; an s3:// object is streamed to $TMPDIR and hashed on the way:
    neither is ever whole in memory."""
    if source.startswith("file://"):
        path = pathlib.Path(urlparse(source).path)
        if not path.is_file():
            raise DataError(f"{source}: no such file")
        sha, size = hash_file(path)
        return path, DataFile(path.name, sha, size), False
    if source.startswith("s3://"):
        import boto3

        url = urlparse(source)
        key = url.path.lstrip("/")
        path = scratch_file(pathlib.PurePosixPath(key).suffix)
        try:
            with open(path, "wb") as sink:
                sha, size, vid = download_s3_object(s3_client or boto3.client("s3"), source, url.netloc, key,
                                                    sink, version_id)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, DataFile(key.rsplit("/", 1)[-1], sha, size, vid), True
    raise DataError(f"{source}: tabular data comes from file:// or s3://")


def data_file(source: str, s3_client=None, version_id: str | None = None) -> DataFile:
    """The record (sha256, size, S3 versionId) of the file spec.data names, as the trainer computes it."""
    path, record, temporary = local_file(source, s3_client, version_id)
    if temporary:
        path.unlink(missing_ok=True)
    return record


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


def _numbers(cells: list[str | None], feature: Feature, source: str, offset: int = 0) -> np.ndarray:
    out = np.empty(len(cells), np.float64)
    for k, cell in enumerate(cells):
        i = offset + k  # the row in the file, for the messages
        if cell is None:
            out[k] = np.nan
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
        out[k] = value
    missing = np.isnan(out)
    if missing.any() and feature.missing != "impute-median":
        raise DataError(f"{_where(source, feature.name, offset + int(missing.argmax()))}: the cell is empty "
                        "(set missing: impute-median on this feature to fill it with the median)")
    return out


def _categories(cells: list[str | None], feature: Feature, source: str, offset: int = 0) -> np.ndarray:
    index = {v: i for i, v in enumerate(feature.vocabulary or [])}
    out = np.empty(len(cells), np.float64)
    for k, cell in enumerate(cells):
        i = offset + k
        if cell is None:
            raise DataError(f"{_where(source, feature.name, i)}: the cell is empty")
        if cell not in index:
            raise DataError(f"{_where(source, feature.name, i)}: {cell!r} is not in the vocabulary "
                            f"{feature.vocabulary}")
        out[k] = index[cell]
    return out


# The fast path: Arrow's vectorized casts and lookups on a batch whose every cell passes the checks, else None (the
# batch then goes through _numbers/_categories/_text, whose results it equals: tests/trainer/test_rows.py). On
# 500,000 rows of the fraud example's ten columns it reads Parquet 42x and CSV 7x faster than the cell-by-cell
# check alone (docs/benchmarks.md (i)): without it a table larger than memory takes longer to check than to train.
def _fast_column(column, feature: Feature) -> np.ndarray | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    try:
        if feature.type == "category":
            if not text:
                return None
            index = pc.index_in(pc.utf8_trim_whitespace(column), value_set=pa.array(feature.vocabulary or []))
            if index.null_count:
                return None
            return index.to_numpy(zero_copy_only=False).astype(np.float64)
        if text:
            values = pc.cast(pc.utf8_trim_whitespace(column), pa.float64())
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            values = pc.cast(column, pa.float64())
        else:
            return None
    except (pa.ArrowException, ValueError):
        return None
    out = values.to_numpy(zero_copy_only=False)  # nulls as NaN
    missing = np.isnan(out)
    if text and int(missing.sum()) != column.null_count:  # a "NaN" cell: not finite, the slow path says
        return None
    present = out[~missing]
    if not np.isfinite(present).all() or (feature.type == "integer" and (np.mod(present, 1) != 0).any()):
        return None
    if (feature.min is not None and (present < feature.min).any()
            or feature.max is not None and (present > feature.max).any()):
        return None
    if missing.any() and feature.missing != "impute-median":
        return None
    return out


def _fast_labels(column, values: dict[str, int]) -> np.ndarray | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if column.null_count:
        return None
    try:
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column = pc.utf8_trim_whitespace(column)
        elif pa.types.is_integer(kind):
            column = pc.cast(column, pa.string())
        else:
            return None
        encoded = pc.dictionary_encode(column)
    except (pa.ArrowException, ValueError):
        return None
    mapping = np.array([values.setdefault(v, len(values)) for v in encoded.dictionary.to_pylist()], np.int32)
    return mapping[encoded.indices.to_numpy(zero_copy_only=False)] if len(mapping) else np.empty(0, np.int32)


def load_table(data: DataSection, *, s3_client=None, budget: int | None = None) -> Table:
    """Read and check the table named by spec.data (format tabular), a batch of rows at a time, into an array of
    rows (in memory within the budget, else file-backed: rows.py); ``budget`` overrides rows.memory_budget()."""
    source = data.source
    path, record, temporary = local_file(source, s3_client, data.version_id)
    try:
        check_pin([record], data.sha256, source)  # before a byte is parsed
        return _read_rows(path, data, record, budget)
    finally:
        if temporary:
            path.unlink(missing_ok=True)
        import pyarrow as pa

        # Arrow's allocator keeps what the row groups used: 335 MiB of anonymous memory after reading 120 MiB
        # of Parquet, 100 MiB once released (training needs that room more than Arrow does)
        pa.default_memory_pool().release_unused()


def _read_rows(path: pathlib.Path, data: DataSection, record: DataFile, budget: int | None) -> Table:
    source = data.source
    features = list(data.features or [])
    names = [f.name for f in features]
    columns, rows, batches = open_batches(path, source)
    missing = [n for n in names + [data.label] if n not in columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; the file has {columns}")
    extra = [c for c in columns if c not in names and c != data.label]
    if extra:
        raise DataError(f"{source}: column(s) {extra} are neither a feature nor the label: list them in "
                        "spec.data.features or drop them from the file (nothing is ignored silently)")
    if rows is None:  # a CSV: its rows are known once read; the checked rows are written to a file meanwhile,
        spool = scratch_file(".rows")  # which then becomes the array (rows.adopt)
        try:
            with open(spool, "wb") as out:
                codes, values, n, medians = _convert(_each_batch(batches, source), features, data, source,
                                                     lambda part, start: out.write(part.tobytes()))
        except BaseException:
            spool.unlink(missing_ok=True)
            raise
        x = adopt(spool, (n, len(names)), np.float32, budget=budget)
    else:
        x = allocate((rows, len(names)), np.float32, budget=budget)

        def put(part, start):
            x[start:start + len(part)] = part

        codes, values, n, medians = _convert(_each_batch(batches, source), features, data, source, put)
    if n == 0:
        raise DataError(f"{source}: the file has a header but no rows")
    imputed = {}
    for j, (feature, column) in enumerate(zip(features, medians)):
        if column is None:
            continue
        col = np.concatenate(column) if column else np.empty(0)  # one column in memory, 8 bytes a row
        if np.isnan(col).any():
            median = float(np.nanmedian(col))
            if feature.type == "integer":
                median = float(round(median))
            gaps = np.flatnonzero(np.isnan(col))
            x[gaps, j] = median
            imputed[feature.name] = median
    labels = list(values)  # by code: codes are given in the order the values first appear
    order = sorted(labels)
    if data.positive_class not in values:
        raise DataError(f"{source}: column {data.label!r}: no row has the positive class "
                        f"{data.positive_class!r}; the labels are {order[:10]}")
    others = [v for v in order if v != data.positive_class]
    if not others:
        raise DataError(f"{source}: column {data.label!r}: every row is {data.positive_class!r}; a classifier "
                        "needs both classes")
    if len(others) > 1:
        third = int(np.flatnonzero((codes != values[data.positive_class]) & (codes != values[others[0]]))[0])
        raise DataError(f"{_where(source, data.label, third)}: {labels[codes[third]]!r} is a third class; a tabular "
                        f"model is binary: {data.positive_class!r} (positive) against {others[0]!r}")
    y = (codes == values[data.positive_class]).astype(np.int64)
    return Table(x=x, y=y, source=source, negative_class=others[0], imputed=imputed, files=(record,))


def _convert(batches, features: list[Feature], data: DataSection, source: str, put):
    """Check and convert each batch's cells; ``put(rows, first_row)`` stores the float32 rows (an empty cell of
    an impute-median feature is NaN until the median is known). Returns (label codes, label value -> code,
    rows, per feature the float64 values of an impute-median column (else None))."""
    values: dict[str, int] = {}
    codes, n = [], 0
    medians = [[] if f.type != "category" and f.missing == "impute-median" else None for f in features]
    for batch in batches:
        part = np.empty((batch.num_rows, len(features)), np.float32)
        for j, feature in enumerate(features):
            col = _fast_column(batch.column(feature.name), feature)
            if col is None:  # a cell the fast path does not pass: the cell-by-cell check names it (or passes it)
                cells = _text(batch.column(feature.name).to_pylist())
                col = (_categories(cells, feature, source, n) if feature.type == "category"
                       else _numbers(cells, feature, source, n))
            if medians[j] is not None:
                medians[j].append(col)
            part[:, j] = col
        batch_codes = _fast_labels(batch.column(data.label), values)
        if batch_codes is None:
            labels = _text(batch.column(data.label).to_pylist())
            batch_codes = np.empty(len(labels), np.int32)
            for i, value in enumerate(labels):
                if value is None:
                    raise DataError(f"{_where(source, data.label, n + i)}: the label is empty")
                batch_codes[i] = values.setdefault(value, len(values))
        codes.append(batch_codes)
        put(part, n)
        n += batch.num_rows
    return (np.concatenate(codes) if codes else np.empty(0, np.int32)), values, n, medians


def bounds(features: list[Feature], x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature [low, high]: the spec's min/max where given, else the training split's range."""
    lo, hi = (a.astype(np.float32) for a in extrema(x_train))
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
    std = moments(x_train, 0)[1].astype(np.float32)
    return Constraints(mask=(numeric & np.array([f.mutable for f in features])).astype(np.float32),
                       scale=np.where(std > 0, std, 1.0).astype(np.float32), low=low, high=high,
                       integer=np.array([f.type == "integer" for f in features]))


def feature_dicts(features: list[Feature]) -> list[dict]:
    """The schema the model is built from and model.json records: name, type, vocabulary."""
    return [{"name": f.name, "type": f.type, **({"vocabulary": list(f.vocabulary)} if f.vocabulary else {})}
            for f in features]
