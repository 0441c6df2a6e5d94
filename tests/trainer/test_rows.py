"""Data larger than the pod's memory (issue 28 point 4): file-backed examples give the very arrays, digests,
statistics and trained weights that in-memory examples give; loaders read a batch (or an image) at a time."""
import json
import os

import numpy as np
import pytest
import torch

from hardened_model.spec import parse_spec
from hardened_trainer import rows, tabular
from hardened_trainer.data import DataError, load_dataset, split
from hardened_trainer.tabular import load_table
from helpers import TINY, example, merge_patch

MAPPED = 0  # a memory budget of 0 bytes: every array of examples is file-backed


def test_allocate_maps_beyond_the_budget_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    small = rows.allocate((10, 3), np.float32, budget=1 << 20)
    big = rows.allocate((10, 3), np.float32, budget=MAPPED)
    assert not rows.is_mapped(small) and rows.is_mapped(big)
    big[:] = 7
    assert big.sum() == 210 and list(tmp_path.iterdir()) == []  # unlinked once mapped
    assert not rows.is_mapped(big[[1, 2]]) and rows.is_mapped(big[1:3])  # a copy by index is in memory


def test_the_budget_comes_from_the_environment_or_the_cgroup(monkeypatch):
    monkeypatch.setenv(rows.BUDGET_ENV, "12345")
    assert rows.memory_budget() == 12345
    monkeypatch.delenv(rows.BUDGET_ENV)
    assert 0 < rows.memory_budget() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


@pytest.mark.parametrize("shape, axis", [((1000, 1, 8, 8), None), ((999, 3, 5, 4), (0, 2, 3)), ((5000, 9), 0)])
def test_moments_match_numpy_in_memory_and_mapped_alike(shape, axis, monkeypatch):
    monkeypatch.setattr(rows, "BLOCK_BYTES", 4096)  # many blocks
    x = np.random.default_rng(0).normal(3.0, 2.0, shape).astype(np.float32)
    mapped = rows.allocate(shape, np.float32, budget=MAPPED)
    mapped[:] = x
    mean, std = rows.moments(x, axis)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=axis), rtol=1e-10)
    np.testing.assert_allclose(std, x.astype(np.float64).std(axis=axis), rtol=1e-10)
    m2, s2 = rows.moments(mapped, axis)
    assert np.array_equal(mean, m2) and np.array_equal(std, s2)  # bit for bit: one computation


def test_take_and_the_hash_go_block_by_block(monkeypatch):
    import hashlib

    monkeypatch.setattr(rows, "BLOCK_BYTES", 256)
    x = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    idx = np.random.default_rng(1).permutation(1000)[:600]
    out = rows.take(x, idx, budget=MAPPED)
    assert rows.is_mapped(out) and np.array_equal(out, x[idx])
    h = hashlib.sha256()
    rows.update_hash(h, out)
    assert h.hexdigest() == hashlib.sha256(x[idx].tobytes()).hexdigest()


FRAUD = example("fraud-tabular")["spec"]


def fraud_csv(tmp_path, n: int, *, gaps: bool = False):
    """n rows of the fraud example's columns, seeded; every seventh amount empty when ``gaps``."""
    rng = np.random.default_rng(5)
    vocab = next(f for f in FRAUD["data"]["features"] if f["name"] == "category")["vocabulary"]
    lines = ["amt,category,hour,age,city_pop,lat,long,merch_lat,merch_long,is_fraud"]
    for i in range(n):
        amt = "" if gaps and i % 7 == 3 else f"{rng.uniform(1, 900):.2f}"
        lines.append(f"{amt},{vocab[i % len(vocab)]},{i % 24},{20 + i % 60},{rng.integers(50, 90000)},"
                     f"{rng.uniform(30, 45):.4f},{rng.uniform(-100, -70):.4f},{rng.uniform(30, 45):.4f},"
                     f"{rng.uniform(-100, -70):.4f},{int(rng.random() < 0.2)}")
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def data_of(path, *, impute: bool = False, patch: dict | None = None):
    s = json.loads(json.dumps(FRAUD))
    s["data"]["source"] = f"file://{path}"
    if impute:
        s["data"]["features"][0]["missing"] = "impute-median"
    return parse_spec(merge_patch(s, patch or {}))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_table_read_in_small_batches_into_a_mapped_array_equals_one_read_whole(tmp_path, monkeypatch, fmt):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = fraud_csv(tmp_path, 700, gaps=True)
    if fmt == "parquet":
        pq.write_table(pacsv.read_csv(path), tmp_path / "t.parquet", row_group_size=100)
        path = tmp_path / "t.parquet"
    spec = data_of(path, impute=True)
    whole = load_table(spec.data, budget=1 << 30)
    monkeypatch.setattr(tabular, "BATCH_ROWS", 64)
    monkeypatch.setattr(tabular, "CSV_BLOCK_BYTES", 4096)
    parts = load_table(spec.data, budget=MAPPED)
    assert rows.is_mapped(parts.x) and not rows.is_mapped(whole.x)
    assert np.array_equal(whole.x, parts.x) and np.array_equal(whole.y, parts.y)
    assert whole.imputed == parts.imputed and set(parts.imputed) == {"amt"}
    assert whole.files == parts.files and not np.isnan(parts.x).any()


def test_a_bad_cell_far_down_a_file_read_in_batches_is_named_by_its_row(tmp_path, monkeypatch):
    path = fraud_csv(tmp_path, 300)
    lines = path.read_text().splitlines()
    lines[251] = lines[251].replace(",", ",x", 1)  # data row 251: its category becomes unknown
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(tabular, "CSV_BLOCK_BYTES", 2048)
    with pytest.raises(DataError, match=r"column 'category', row 251 \(line 252\): 'x"):
        load_table(data_of(path).data, budget=MAPPED)
    lines[251] = lines[251].replace(",x", ",", 1)
    lines[290] = lines[290].rsplit(",", 1)[0] + ",2"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"column 'is_fraud', row 290 \(line 291\): '2' is a third class"):
        load_table(data_of(path).data, budget=MAPPED)


def test_an_image_folder_is_decoded_one_image_at_a_time_into_a_mapped_array(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    whole = load_dataset(f"file://{tmp_path}", budget=1 << 30)
    mapped = load_dataset(f"file://{tmp_path}", budget=MAPPED)
    assert rows.is_mapped(mapped.x) and mapped.x.shape == (10, 3, 6, 7)
    assert np.array_equal(whole.x, mapped.x) and np.array_equal(whole.y, mapped.y) and whole.digest == mapped.digest
    parts = split(mapped, test_fraction=0.4, seed=0, budget=MAPPED)
    ref = split(whole, test_fraction=0.4, seed=0)
    assert rows.is_mapped(parts.x_train) and np.array_equal(parts.x_train, ref.x_train)
    assert np.array_equal(parts.y_test, ref.y_test)


@pytest.mark.parametrize("fmt, dp", [("digits", True), ("digits", False), ("tabular", False)])
def test_training_from_mapped_examples(tmp_path, fmt, dp):
    """Same normalization, same ε (same sample rate, steps and noise), a model as good; the batches are Poisson
    batches drawn in O(batch) (PoissonShard binomial), not the in-memory run's sampler, so not the same bits."""
    from hardened_trainer.evaluate import predict
    from hardened_trainer.train import train

    if fmt == "digits":
        spec = parse_spec(merge_patch(merge_patch(example("digits-demo")["spec"], TINY), {
            "data": {"maxSamples": None}, "training": {"epochs": 3, "adversarial": {"enabled": False},
                                                        "privacy": {"enabled": dp}},
            "gates": {"maxEpsilon": 8.0 if dp else None}}))
        ds = load_dataset("builtin:digits")
        x, y = ds.x, ds.y
    else:
        spec = data_of(fraud_csv(tmp_path, 400), patch={"training": {"epochs": 1, "batchSize": 64}})
        table = load_table(spec.data, budget=1 << 30)
        x, y = table.x, table.y
    mapped = rows.allocate(x.shape, x.dtype, budget=MAPPED)
    mapped[:] = x
    quiet = lambda *a, **k: None  # noqa: E731
    a = train(spec, x, y, device=torch.device("cpu"), log=quiet)
    b = train(spec, mapped, y, device=torch.device("cpu"), log=quiet)
    assert a.model[0].mean.tolist() == b.model[0].mean.tolist() and a.model[0].std.tolist() == b.model[0].std.tolist()
    assert a.epsilon == b.epsilon and a.noise_multiplier == b.noise_multiplier
    if fmt == "digits":
        acc_a, acc_b = ((predict(m.model, x).argmax(1) == y).mean() for m in (a, b))
        assert acc_b > acc_a - 0.05, (acc_a, acc_b)


@pytest.mark.parametrize("world", [1, 2])
def test_the_binomial_draw_is_a_poisson_sample(world):
    """Each row of a rank's shard joins a batch with probability q, independently of the others (inclusion
    frequencies, batch-size mean and variance n q (1 - q)); rows distinct and sorted; a generator's state
    replays the draws (what a checkpoint resumes)."""
    from hardened_trainer.distributed import PoissonShard

    n, q, steps = 300, 0.1, 4000
    for r in range(world):
        g = torch.Generator().manual_seed(7 + r)
        state = g.get_state()
        sampler = PoissonShard(num_samples=n, sample_rate=q, steps=steps, rank=r, world=world, generator=g,
                               binomial=True)
        batches = list(sampler)
        shard = np.arange(r, n, world)
        counts = np.zeros(n)
        for b in batches:
            assert b == sorted(set(b)) and set(b) <= set(shard.tolist())
            counts[b] += 1
        sizes = np.array([len(b) for b in batches])
        m = len(shard)
        assert abs(sizes.mean() - m * q) < 4 * np.sqrt(m * q * (1 - q) / steps)
        assert abs(sizes.var() / (m * q * (1 - q)) - 1) < 0.1  # a fixed-size draw would have variance 0
        freq = counts[shard] / steps
        assert abs(freq.mean() - q) < 0.005 and np.abs(freq - q).max() < 6 * np.sqrt(q * (1 - q) / steps)
        g.set_state(state)
        assert list(PoissonShard(num_samples=n, sample_rate=q, steps=steps, rank=r, world=world, generator=g,
                                 binomial=True)) == batches


def test_a_plain_run_on_mapped_rows_never_holds_an_epoch_permutation(monkeypatch):
    """torch's RandomSampler lists a permutation of every row each epoch; a file-backed split's plain run draws
    batches instead (nonempty: an empty draw is drawn again)."""
    from torch.utils.data import RandomSampler

    from hardened_trainer.distributed import PoissonShard
    from hardened_trainer.train import build_run

    spec = parse_spec(merge_patch(merge_patch(example("digits-demo")["spec"], TINY), {
        "training": {"privacy": {"enabled": False}}, "gates": {"maxEpsilon": None}}))
    ds = load_dataset("builtin:digits", max_samples=300, seed=0, budget=MAPPED)
    assert rows.is_mapped(ds.x)
    run = build_run(spec, ds.x, ds.y, device=torch.device("cpu"), log=lambda *a, **k: None)
    assert isinstance(run.loader.batch_sampler, PoissonShard) and run.loader.batch_sampler.nonempty
    assert not isinstance(run.loader.sampler, RandomSampler) and run.mapped
    tiny = PoissonShard(num_samples=3, sample_rate=0.01, steps=50, rank=0, world=1,
                        generator=torch.Generator().manual_seed(0), binomial=True, nonempty=True)
    assert all(len(b) >= 1 for b in tiny)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_vectorized_checks_give_what_the_cell_by_cell_checks_give(tmp_path, monkeypatch, fmt):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = fraud_csv(tmp_path, 500, gaps=True)
    if fmt == "parquet":  # typed columns: float64 amounts, int64 hours and labels
        pq.write_table(pacsv.read_csv(path), tmp_path / "t.parquet")
        path = tmp_path / "t.parquet"
    spec = data_of(path, impute=True)
    fast = load_table(spec.data)
    calls = []
    monkeypatch.setattr(tabular, "_fast_column", lambda *a: calls.append(a) and None)
    monkeypatch.setattr(tabular, "_fast_labels", lambda *a: None)
    slow = load_table(spec.data)
    assert calls and np.array_equal(fast.x, slow.x) and np.array_equal(fast.y, slow.y)
    assert fast.imputed == slow.imputed and fast.negative_class == slow.negative_class


def test_sanitization_of_a_file_backed_split_is_refused_naming_the_field(tmp_path, keys, monkeypatch):
    """Its PCA and neighbours need the split in memory: a clear exit 2 before any training, not an OOM kill."""
    from hardened_trainer.__main__ import main
    from helpers import write_config

    doc = example("digits-demo")  # maxSamples: the subset, then the split, are copies the budget makes file-backed
    doc["spec"] = merge_patch(merge_patch(doc["spec"], TINY), {"data": {"sanitization": {"enabled": True}}})
    cfg = write_config(tmp_path, doc, keys[0])
    monkeypatch.setenv(rows.BUDGET_ENV, "0")
    term = tmp_path / "term"
    assert main(["--config", str(cfg), "--termination-log", str(term)]) == 2
    message = json.loads(term.read_text())["message"]
    assert "data.sanitization.enabled: true: the training split (225 examples" in message, message
    assert not (tmp_path / "out" / "model").exists()


def test_the_trainer_trains_evaluates_and_signs_from_file_backed_rows(tmp_path, keys, monkeypatch):
    from hardened_trainer.__main__ import main
    from helpers import write_config

    path = fraud_csv(tmp_path, 600)
    doc = example("fraud-tabular")
    doc["spec"] = merge_patch(doc["spec"], {
        "data": {"source": f"file://{path}"},
        "training": {"epochs": 1, "batchSize": 128, "adversarial": {"maxIter": 2}},
        "evaluation": {"maxSamples": 50, "pgdIter": 2},
        "gates": {"minRecall": None, "minPRAUC": None, "minRobustRecall": None, "maxEpsilon": None,
                  "maxMembershipAUC": None}})
    doc["spec"]["training"]["privacy"]["targetEpsilon"] = 8.0
    cfg = write_config(tmp_path, doc, keys[0])
    monkeypatch.setenv(rows.BUDGET_ENV, "0")
    assert main(["--config", str(cfg)]) == 0
    model = tmp_path / "out" / "model"
    stats = json.loads((model / "model.json").read_text())["inputStats"]
    assert len(stats["mean"]) == 9 and (tmp_path / "out" / "model.sig").exists()
