"""Peak memory of training from a Parquet file several times the pod's memory limit (issue 28 point 4).

A Parquet file of FEATURES float columns and a label, RATIO times the memory limit, is read, checked, split and trained
on (one epoch of plain SGD, one of DP-SGD with Poisson sampling) by a process in a memory cgroup with that limit,
as a pod with resources.limits.memory runs; side by side, the same steps with the examples forced into memory
(HARDENED_DATA_MEMORY_BUDGET larger than the data). The cgroup's peak counts the page cache it is charged for
(which the kernel drops before it kills); its anonymous memory, sampled every 0.2 s, is what must fit; the
process's VmHWM (file-backed pages included) and the examples' size are printed beside it.

Needs root (it makes a cgroup, v1 or v2). Run from the repository root:
    .venv/bin/python benchmarks/data_memory.py --limit-mib 1024 --ratio 3

It first times the loader's vectorized checks against its cell-by-cell ones on 500,000 rows of the fraud
example's columns (Parquet and CSV).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHILD = r"""
import json, os, pathlib, resource, sys, time
sys.path[:0] = [str(pathlib.Path(sys.argv[1]) / d) for d in ("core", "trainer_image")]
import numpy as np, torch
from hardened_model.spec import parse_spec
from hardened_trainer import rows
from hardened_trainer.data import Dataset, split
from hardened_trainer.tabular import load_table
from hardened_trainer.train import train

specs = {mode: parse_spec(doc) for mode, doc in json.loads(sys.argv[2]).items()}
spec = specs["dp"]
torch.set_num_threads(1)


def peak_mib(reset=True):
    # VmHWM: the process's resident peak (file-backed pages included); writing 5 to clear_refs resets it
    status = pathlib.Path("/proc/self/status").read_text()
    value = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) // 1024
    if reset:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    return value


out = {"budget": rows.memory_budget(), "importsHWM_MiB": peak_mib()}
t0 = time.perf_counter()
table = load_table(spec.data)
out["loadSeconds"] = round(time.perf_counter() - t0, 1)
out["rows"], out["mapped"], out["exampleBytes"] = len(table.y), rows.is_mapped(table.x), int(table.x.nbytes)
parts = split(Dataset(x=table.x, y=table.y, raw_scale=1.0, source=table.source, files=table.files),
              test_fraction=spec.data.validation_split, seed=0)
del table
out["loadSplitHWM_MiB"] = peak_mib()
for mode, s in specs.items():
    t0 = time.perf_counter()
    result = train(s, parts.x_train, parts.y_train, device=torch.device("cpu"), log=lambda *a, **k: None)
    out[f"{mode}Seconds"] = round(time.perf_counter() - t0, 1)
    out[f"{mode}Epsilon"] = result.epsilon
    out[f"{mode}HWM_MiB"] = peak_mib()
    del result
print("RESULT " + json.dumps(out))
"""

FETCH = r"""
import sys, time
sys.path[:0] = [sys.argv[1] + "/core", sys.argv[1] + "/trainer_image"]
import numpy as np
from hardened_trainer import rows
n, d = int(sys.argv[2]), int(sys.argv[3])
x = rows.allocate((n, d), np.float32, budget=0)
for part in rows.blocks(n, 200_000):
    x[part] = 1.0
ds, rng, real = rows.RowDataset(x, np.zeros(n, np.int64)), np.random.default_rng(0), rows.prefetch
for mode in ("per-row faults", "prefetch") * 2:
    rows.prefetch = real if mode == "prefetch" else (lambda *a: None)
    t0 = time.perf_counter()
    for _ in range(int(sys.argv[4])):
        ds.__getitems__(np.sort(rng.choice(n, 4096, replace=False)))
    print(f"  {mode:15} {int(sys.argv[4]) * 4096 / (time.perf_counter() - t0):9,.0f} rows/s", flush=True)
"""


class Cgroup:
    """A memory cgroup with a limit (v1 memory controller, else v2)."""

    def __init__(self, name: str, limit: int):
        v1 = pathlib.Path("/sys/fs/cgroup/memory")
        self.v1 = v1.is_dir()
        self.path = (v1 if self.v1 else pathlib.Path("/sys/fs/cgroup")) / name
        self.path.mkdir(exist_ok=True)
        self._write("memory.limit_in_bytes" if self.v1 else "memory.max", str(limit))
        if self.v1 and (self.path / "memory.memsw.limit_in_bytes").exists():
            self._write("memory.memsw.limit_in_bytes", str(limit))  # no swapping past the limit
        elif not self.v1:
            self._write("memory.swap.max", "0")

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def reset(self) -> None:
        if self.v1:
            self._write("memory.max_usage_in_bytes", "0")
            self._write("memory.failcnt", "0")

    def peak(self) -> int:
        return int((self.path / ("memory.max_usage_in_bytes" if self.v1 else "memory.peak")).read_text())

    def oom_kills(self) -> int:
        text = (self.path / ("memory.oom_control" if self.v1 else "memory.events")).read_text()
        return int(next((l.split()[1] for l in text.splitlines() if l.startswith("oom_kill ")), "0"))

    def anon(self) -> int:
        """Anonymous memory charged now (what the kernel cannot drop; page cache it can)."""
        key = "rss" if self.v1 else "anon"
        text = (self.path / "memory.stat").read_text()
        return int(next(l.split()[1] for l in text.splitlines() if l.split()[0] == key))

    def run(self, argv: list[str], env: dict) -> subprocess.CompletedProcess:
        """argv in the cgroup; its anonymous memory sampled every 0.2 s (the peak in self.anon_peak)."""
        import threading

        procs = self.path / "cgroup.procs"
        self.anon_peak, done = 0, threading.Event()

        def sample():
            while not done.wait(0.2):
                self.anon_peak = max(self.anon_peak, self.anon())
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            return subprocess.run(["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *argv], env=env,
                                  capture_output=True, text=True)
        finally:
            done.set()
            t.join()

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def write_groups(path: pathlib.Path, target_bytes: int, make_table) -> int:
    """Row groups ``make_table()`` (a pyarrow Table each) written until the file holds ``target_bytes`` (each
    group reaches the file as it is written); returns the rows."""
    import pyarrow.parquet as pq

    n, writer = 0, None
    try:
        while n == 0 or path.stat().st_size < target_bytes:
            table = make_table()
            writer = writer or pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=table.num_rows)
            n += table.num_rows
    finally:
        if writer:
            writer.close()
    return n


def write_parquet(path: pathlib.Path, target_bytes: int, spec: dict, m: int = 500_000) -> int:
    """Seeded rows of the fraud example's columns, ``m`` a row group."""
    import numpy as np
    import pyarrow as pa

    vocab = np.array(next(f for f in spec["data"]["features"] if f["name"] == "category")["vocabulary"])
    rng = np.random.default_rng(0)

    def group():
        amt = rng.gamma(2.0, 40.0, m)
        return pa.table({"amt": amt.round(2), "category": pa.array(vocab[rng.integers(0, len(vocab), m)]),
                         "hour": rng.integers(0, 24, m), "age": rng.integers(18, 95, m),
                         "city_pop": rng.integers(20, 3_000_000, m), "lat": rng.uniform(20, 65, m),
                         "long": rng.uniform(-160, -68, m), "merch_lat": rng.uniform(20, 65, m),
                         "merch_long": rng.uniform(-160, -68, m),
                         "is_fraud": (rng.random(m) < 0.02 + 0.2 * (amt > 300)).astype(np.int64)})
    return write_groups(path, target_bytes, group)


def write_wide(path: pathlib.Path, target_bytes: int, features: int) -> int:
    """Seeded rows of ``features`` float64 columns (f00, f01, ...) and a label y (1 when a fixed linear score of
    the first eight is positive), 100,000 a row group."""
    import numpy as np
    import pyarrow as pa

    rng, w, m = np.random.default_rng(1), np.random.default_rng(2).normal(size=8), 100_000

    def group():
        x = rng.normal(size=(m, features))
        cols = {f"f{j:02d}": x[:, j] for j in range(features)}
        cols["y"] = (x[:, :8] @ w + 0.5 * rng.normal(size=m) > 0).astype(np.int64)
        return pa.table(cols)
    return write_groups(path, target_bytes, group)


def check_speed(folder: pathlib.Path, spec: dict, rows: int = 500_000) -> None:
    """The loader's vectorized checks against its cell-by-cell checks alone, on one row group (500,000 rows) as
    Parquet and as CSV: equal results, seconds side by side."""
    import numpy as np
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    sys.path[:0] = [str(ROOT / "trainer_image")]
    from hardened_model.spec import parse_spec
    from hardened_trainer import tabular

    n = write_parquet(folder / "speed.parquet", 1, spec, rows)
    pacsv.write_csv(pq.read_table(folder / "speed.parquet"), folder / "speed.csv")
    for name in ("speed.parquet", "speed.csv"):
        s = json.loads(json.dumps(spec))
        s["data"]["source"] = f"file://{folder / name}"
        s["data"].pop("sha256", None)
        data = parse_spec(s).data
        t0 = time.perf_counter()
        fast = tabular.load_table(data)
        t_fast = time.perf_counter() - t0
        saved = tabular._fast_column, tabular._fast_labels
        tabular._fast_column = tabular._fast_labels = lambda *a: None
        try:
            t0 = time.perf_counter()
            slow = tabular.load_table(data)
            t_slow = time.perf_counter() - t0
        finally:
            tabular._fast_column, tabular._fast_labels = saved
        assert np.array_equal(fast.x, slow.x) and np.array_equal(fast.y, slow.y)
        print(f"{name.split('.')[1]:8} {n} rows: vectorized {t_fast:.2f} s, cell by cell {t_slow:.2f} s, "
              f"ratio {t_slow / t_fast:.1f}x (equal arrays)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit-mib", type=int, default=1024, help="the cgroup's memory limit (the pod's)")
    p.add_argument("--ratio", type=float, default=3.0, help="Parquet file size / limit")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--features", type=int, default=64, help="float columns of the large file")
    p.add_argument("--smoke", action="store_true", help="seconds: a 40 MiB file, 20,000 rows for the checks")
    args = p.parse_args()
    if args.smoke:
        args.ratio, args.features = 0.04, 16
    if os.geteuid() != 0:
        print("data_memory.py: needs root to make a memory cgroup", file=sys.stderr)
        return 2
    sys.path[:0] = [str(ROOT / "core")]
    from hardened_model.spec import load_yaml_documents

    limit = args.limit_mib << 20
    spec = load_yaml_documents((ROOT / "examples/fraud-tabular.yaml").read_text())[0]["spec"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        check_speed(pathlib.Path(tmp), spec, 20_000 if args.smoke else 500_000)
        data = pathlib.Path(tmp) / "wide.parquet"
        t0 = time.perf_counter()
        n = write_wide(data, int(args.ratio * limit), args.features)
        print(f"\nwrote {data.stat().st_size / 2**20:.0f} MiB of Parquet ({n} rows, {args.features} float columns) "
              f"in {time.perf_counter() - t0:.0f} s")
        spec["data"] = {"source": f"file://{data}", "format": "tabular", "validationSplit": 0.1, "label": "y",
                        "positiveClass": "1", "sanitization": {"enabled": False},
                        "features": [{"name": f"f{j:02d}", "type": "number"} for j in range(args.features)]}
        spec["model"]["inputShape"] = [args.features]
        spec["training"].update(epochs=1, batchSize=args.batch_size)
        spec["training"]["adversarial"] = {"enabled": False}  # PGD's cost is compute, not memory
        plain = json.loads(json.dumps(spec))
        plain["training"]["privacy"] = {"enabled": False}
        plain["gates"] = {}
        specs = {"plain": plain, "dp": spec}
        cg = Cgroup(f"hardened-bench-{os.getpid()}", limit)
        try:
            rows_n = int(n * 0.9)
            print(f"\nbatches of 4,096 random rows (sorted) from a file-backed {rows_n} x {args.features} float32 "
                  f"array, in the cgroup: one page fault per row in turn, or the batch's pages prefetched together")
            out = cg.run([sys.executable, "-c", FETCH, str(ROOT), str(rows_n), str(args.features),
                          "3" if args.smoke else "30"],
                         {**os.environ, "TMPDIR": tmp})
            print(out.stdout.rstrip() or out.stderr[-600:])
            for label, budget in (("file-backed (default budget)", None), ("in memory (budget > data)", 1 << 50)):
                env = {**os.environ, "TMPDIR": tmp, "OMP_NUM_THREADS": "1"}
                env.pop("HARDENED_DATA_MEMORY_BUDGET", None)
                if budget:
                    env["HARDENED_DATA_MEMORY_BUDGET"] = str(budget)
                cg.reset()
                kills = cg.oom_kills()
                t0 = time.perf_counter()
                out = cg.run([sys.executable, "-c", CHILD, str(ROOT), json.dumps(specs)], env)
                seconds = time.perf_counter() - t0
                result = next((json.loads(l[7:]) for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
                print(f"\n{label}: exit {out.returncode} after {seconds:.0f} s, cgroup peak "
                      f"{cg.peak() / 2**20:.0f} MiB of {args.limit_mib} MiB (page cache included), anonymous peak "
                      f"{cg.anon_peak / 2**20:.0f} MiB (sampled), OOM kills {cg.oom_kills() - kills}")
                print(f"  {json.dumps(result) if result else out.stderr.strip()[-600:]}")
        finally:
            cg.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
