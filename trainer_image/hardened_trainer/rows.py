"""Data larger than the pod's memory (issue 28 point 4): examples in a file-backed array on the scratch disk.

Every loader writes the examples it decodes, a batch of rows or one image at a time, into an array this module
allocates: in memory while the data is within the memory budget, else a ``numpy.memmap`` in ``$TMPDIR`` (the
training pod's ``/tmp`` emptyDir, on the node's disk). A mapped array is an ndarray: the samplers, the
DataLoader and the attacks index rows of it as of any other, and only the pages of the rows a rank touches are
resident (clean file pages, which the kernel reclaims before the cgroup's limit is reached). The labels, the
split's indices and each impute-median column (for its median) stay in memory: 8-12 bytes a row, 8 more per
such column.

Whatever the data's size, the statistics (normalization, the tabular attack's radius, the validation sidecar's
``inputStats``) are computed one way, in float64 over blocks of rows, and copies by index go block by block, so
a mapped run normalizes as an in-memory run of the same data does and spends the same ε; its batches are drawn
another way (distributed.PoissonShard, binomial), so its weights are not the same bits
(tests/trainer/test_rows.py).

The budget: ``HARDENED_DATA_MEMORY_BUDGET`` (bytes) when set, else a quarter of the cgroup's memory limit (the
container's ``resources.limits.memory``; the machine's memory when there is none).
"""
from __future__ import annotations

import hashlib
import mmap as mmap_module
import os
import pathlib
import tempfile
from typing import BinaryIO, Iterator

import numpy as np

BUDGET_ENV = "HARDENED_DATA_MEMORY_BUDGET"
BLOCK_BYTES = 32 << 20  # rows per block: about 32 MiB of examples (a statistic's temporaries stay that small)
READ_BYTES = 8 << 20    # files are hashed and downloaded in 8 MiB reads


def memory_budget() -> int:
    """Bytes of examples kept in memory; more go to a file-backed array."""
    if os.environ.get(BUDGET_ENV):
        return int(os.environ[BUDGET_ENV])
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(cgroup_memory_limit() or physical, physical) // 4


def cgroup_memory_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``), None when
    there is none: in a pod, the container's resources.limits.memory."""
    try:
        lines = pathlib.Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            candidates += [f"/sys/fs/cgroup{path}/memory.max", "/sys/fs/cgroup/memory.max"]
        elif "memory" in controllers.split(","):  # v1
            candidates += [f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes",
                           "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    for name in candidates:
        try:
            text = pathlib.Path(name).read_text().strip()
        except OSError:
            continue
        if text == "max" or int(text) >= 1 << 60:  # v1 writes "no limit" as a page-rounded 2**63 - 1
            return None
        return int(text)
    return None


def _fits(shape: tuple[int, ...], dtype: np.dtype, budget: int | None) -> bool:
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return size == 0 or size <= (memory_budget() if budget is None else budget)


def allocate(shape: tuple[int, ...], dtype, *, budget: int | None = None) -> np.ndarray:
    """A zeroed array: in memory within the budget, else mapped from an unlinked file in $TMPDIR (the file's
    blocks are freed when the last view of the array goes)."""
    dtype = np.dtype(dtype)
    if _fits(shape, dtype, budget):
        return np.zeros(shape, dtype)
    fd, name = tempfile.mkstemp(prefix="hardened-rows-", suffix=".f32")
    os.close(fd)
    path = pathlib.Path(name)
    with open(path, "r+b") as f:
        f.truncate(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return adopt(path, shape, dtype, budget=0)


def adopt(path: pathlib.Path, shape: tuple[int, ...], dtype, *, budget: int | None = None) -> np.ndarray:
    """The array a file holds (C order, no header), read into memory within the budget, else mapped from the
    file itself; the file is unlinked either way (a mapping keeps its blocks until the last view goes)."""
    dtype = np.dtype(dtype)
    try:
        if _fits(shape, dtype, budget):
            return np.fromfile(path, dtype).reshape(shape)
        return np.memmap(path, dtype=dtype, mode="r+", shape=shape)
    finally:
        path.unlink()


def is_mapped(x: np.ndarray) -> bool:
    return getattr(x, "_mmap", None) is not None


def block_rows(x: np.ndarray) -> int:
    row = max(int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize, 1)
    return max(BLOCK_BYTES // row, 1)


def blocks(n: int, step: int) -> Iterator[slice]:
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def take(x: np.ndarray, index: np.ndarray, *, budget: int | None = None) -> np.ndarray:
    """``x[index]`` (rows, in index order), copied block by block into an array allocate() gives."""
    index = np.asarray(index)
    out = allocate((len(index), *x.shape[1:]), x.dtype, budget=budget)
    step = block_rows(x)
    for part in blocks(len(index), step):
        out[part] = x[index[part]]
    return out


def moments(x: np.ndarray, axis: tuple[int, ...] | int | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, population std) over ``axis``, which includes the rows (axis 0): float64 sums over blocks of rows,
    then the squared deviations from that mean over the same blocks (two passes, no (N, ...) temporary)."""
    axes = tuple(range(x.ndim)) if axis is None else (axis,) if isinstance(axis, int) else tuple(axis)
    if 0 not in axes:
        raise ValueError("moments: axis must include the rows (0)")
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    step = block_rows(x)
    total = sum(x[part].sum(axis=axes, dtype=np.float64) for part in blocks(len(x), step))
    mean = total / max(count, 1)
    keep = np.expand_dims(mean, axes) if np.ndim(mean) else mean
    sq = sum(np.square(x[part].astype(np.float64) - keep).sum(axis=axes) for part in blocks(len(x), step))
    return np.asarray(mean), np.sqrt(np.asarray(sq) / max(count, 1))


def extrema(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (min, max) of a 2-d array, block by block."""
    step = block_rows(x)
    lo = np.min([x[p].min(0) for p in blocks(len(x), step)], axis=0)
    hi = np.max([x[p].max(0) for p in blocks(len(x), step)], axis=0)
    return lo, hi


def update_hash(h, x: np.ndarray) -> None:
    """Feed the array's C-order bytes to a hash, a block at a time (equal to ``h.update(x.tobytes())``)."""
    step = block_rows(x)
    for part in blocks(len(x), step):
        h.update(np.ascontiguousarray(x[part]).tobytes())


def hash_stream(stream: BinaryIO, sink: BinaryIO | None = None) -> tuple[str, int]:
    """(sha256, size) of a stream read in READ_BYTES pieces, each also written to ``sink`` when given."""
    h, size = hashlib.sha256(), 0
    while True:
        piece = stream.read(READ_BYTES)
        if not piece:
            return h.hexdigest(), size
        h.update(piece)
        size += len(piece)
        if sink is not None:
            sink.write(piece)


def hash_file(path: pathlib.Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        return hash_stream(f)


def scratch_file(suffix: str) -> pathlib.Path:
    """A new file in $TMPDIR for a download; the caller deletes it."""
    fd, name = tempfile.mkstemp(prefix="hardened-data-", suffix=suffix)
    os.close(fd)
    return pathlib.Path(name)


PAGE = mmap_module.PAGESIZE


def prefetch(x: np.ndarray, index: np.ndarray) -> None:
    """Ask the kernel to read the pages of rows ``index`` of a file-backed array now, all at once
    (madvise WILLNEED: asynchronous reads, many in flight), so that the gather after it waits for one round of
    reads rather than one read per row in turn. A no-op for an array in memory."""
    mm = getattr(x, "_mmap", None)
    if mm is None or not len(index):
        return
    base = x.ctypes.data - _map_address(x)  # the array's start within the mapping (0 for rows.allocate's)
    row = int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize
    index = np.asarray(index, np.int64)
    first = (base + index * row) // PAGE
    last = (base + (index + 1) * row - 1) // PAGE
    pages = np.unique(np.concatenate([first, last]) if row <= PAGE else
                      np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last)]))
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1  # runs of consecutive pages: one call each
    for run in np.split(pages, breaks):
        mm.madvise(mmap_module.MADV_WILLNEED, int(run[0]) * PAGE, (int(run[-1]) - int(run[0]) + 1) * PAGE)


def _map_address(x: np.ndarray) -> int:
    """The address of the mapping under a file-backed array (its base memmap's first byte)."""
    base = x
    while isinstance(getattr(base, "base", None), np.ndarray):
        base = base.base
    return base.ctypes.data


class RowDataset:
    """(x, y) rows for torch's DataLoader, fetched a batch at a time (``__getitems__``, which the DataLoader
    prefers to one ``__getitem__`` per row): the batch's pages prefetched (file-backed rows), then one numpy
    gather. In memory it yields what a TensorDataset of the same arrays yields."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        import torch

        self.x, self.y = x, y
        self.tensors = (torch.from_numpy(x), torch.from_numpy(y))  # what callers of a TensorDataset read

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.tensors[0][i], self.tensors[1][i]

    def __getitems__(self, index) -> list:
        import torch

        index = np.asarray(index, np.int64)
        prefetch(self.x, index)
        xb, yb = torch.from_numpy(np.ascontiguousarray(self.x[index])), torch.from_numpy(self.y[index])
        return list(zip(xb, yb))
