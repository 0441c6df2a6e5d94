"""The trainer under torch.distributed: one process per device, launched by torchrun (issue 28).

``python -m torch.distributed.run --nproc-per-node N -m hardened_trainer --config ...``: torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. With WORLD_SIZE absent or 1 nothing here runs a
collective and the trainer is the single process it always was, to the bit.

DP-SGD across ranks is Opacus' own distributed DP-SGD (its DifferentiallyPrivateDistributedDataParallel,
which makes make_private pick DistributedDPOptimizer or, for fast and ghost clipping,
DistributedDPOptimizerFastGradientClipping), so the update is the single-process one for the union batch:

- every rank clips its own examples, with whichever clipper the spec chose, into its clipped sum S_r (p.grad);
- rank 0 alone adds the Gaussian noise z (std noiseMultiplier * maxGradNorm): one draw per step in the world;
- each rank divides by E / W (E the expected global batch, as Opacus normalises one process' sum by E) and one
  all-reduce SUM, divided by W, leaves (sum_r S_r + z) / E on every rank.

One part is not Opacus': the sampler. Opacus' DistributedUniformWithReplacementSampler drops a rank's empty
batch (``if len(selected_examples) > 0: yield``), so that rank takes a step fewer and the all-reduces pair
different steps, or wait for ever at the end of the epoch. PoissonShard yields every batch, empty ones too:
each rank takes the same int(1 / q) steps per epoch and joins every collective (an empty batch contributes a
zero clipped sum). Each rank samples its shard at the global rate q, so the ranks' batches together are one
Poisson sample of the whole training set, the sampling the accountant charges for.

Each rank's optimizer charges its own accountant with the same (noise, q) every step, so every rank holds
the same history; train_one_epoch checks that they agree (agreed_epsilon) and reports rank 0's ε.

Without DP-SGD: torch's DistributedDataParallel and a shuffled shard per rank (batch ceil(B / W) per rank);
on a file-backed split (rows.py) Poisson batches of the shard at the global rate instead, never empty.

Checkpoints (``--checkpoint-dir``): rank 0 writes one file at the end of every epoch (tmp, then os.replace)
holding what training reads next: weights, optimizer, accountant history, weight average, step count and
every rank's random generators (gathered), with a digest of the spec's training sections and the training
data. On start rank 0 reads it and broadcasts its bytes, so ranks on other nodes need not see the volume.
Loading is ``torch.load(weights_only=True)``: tensors and plain containers, never arbitrary pickled objects.

A rank that fails must not leave the others waiting: init_process_group takes a finite timeout
(HARDENED_DIST_TIMEOUT_S, default 600 s), which bounds the collectives too; and torchrun stops the other
workers when one exits non-zero.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pathlib
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .rows import update_hash

TIMEOUT_ENV = "HARDENED_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "hardened-trainer-checkpoint/v1"
DIGEST_SECTIONS = ("model", "data", "training")  # what decides the weights an epoch ends at


class CheckpointError(ValueError):
    """A checkpoint in --checkpoint-dir that this run cannot resume from; names the directory."""


# ------------------------------------------------------------------ the world
def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE") or 1)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_fields() -> dict:
    """{"rank": N} for error and termination messages in a world of ranks (from torchrun's RANK, so it is
    there before the process group is), else nothing: a single process' messages stay as they were."""
    return {"rank": int(os.environ.get("RANK") or 0)} if env_world_size() > 1 else {}


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{TIMEOUT_ENV}: {raw!r} is not a positive number of seconds")
    return value


def init(preference: str = "auto") -> torch.device | None:
    """Joins the process group torchrun describes (env://) and returns this rank's device: cuda:LOCAL_RANK
    with nccl when CUDA is there (and the config's device allows it), else the CPU with gloo. None, and no
    process group, when WORLD_SIZE is absent or 1."""
    if env_world_size() <= 1:
        return None
    local = int(os.environ.get("LOCAL_RANK") or 0)
    cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)  # nccl's object collectives use the current device
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", timeout=timedelta(seconds=timeout_s()))
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where a collective's tensors must be: nccl moves CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(value) -> list:
    """Every rank's ``value`` (small picklable objects between the job's own ranks), in rank order."""
    if world_size() == 1:
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def sum_over_ranks(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def describe(device: torch.device) -> str:
    """What provenance calls a device: "cpu", or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(device)


def device_names(device: torch.device) -> list[str]:
    """Every rank's device, in rank order (a collective: every rank calls it)."""
    return all_gather(describe(device))


def agreed_epsilon(epsilon: float | None, steps: int) -> float | None:
    """Rank 0's ε, once every rank has taken as many steps and its accountant answers the same ε (to 1e-9:
    the same Opacus calls on the same history). A disagreement means the ranks' training went apart, which
    no report may hide: RuntimeError with every rank's answer."""
    answers = all_gather((epsilon, steps))
    e0, s0 = answers[0]
    for e, s in answers:
        same = e == e0 if e is None or e0 is None else abs(e - e0) <= 1e-9 * max(1.0, abs(e0))
        if s != s0 or not same:
            raise RuntimeError(f"ranks disagree on the privacy spent: (epsilon, steps) by rank: {answers}")
    return e0


def stream_seed(seed: int, rank_: int) -> int:
    """A 32-bit seed of rank ``rank_``'s own random stream (torch's CPU generator keeps 32 bits of a seed, so
    seed + rank * 2**32 would give every rank one stream)."""
    return int(np.random.SeedSequence([seed, rank_]).generate_state(1, np.uint32)[0])


# ------------------------------------------------------------------ sampling
class PoissonShard(Sampler[list]):
    """Rank r's batches: each example of its shard (rows r, r + W, r + 2W, ...) joins a step's batch with
    probability ``sample_rate``, drawn from the rank's own generator. ``steps`` batches, empty ones too.

    ``binomial`` (a file-backed training split, rows.py): the same distribution drawn in O(batch) time and
    memory instead of one uniform per example per step: the batch's size k ~ Binomial(n, q), then k distinct rows
    uniformly (numpy's choice without replacement, Floyd's method for k << n), which is exactly independent
    inclusion with probability q (conditioned on its size, a Poisson sample is a uniform subset). At 70 million
    rows the mask costs 350 MB and about 0.3 s per step. The rows come sorted: a batch reads the file front to
    back. ``nonempty``: plain training, no accountant: an empty draw is drawn again."""

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int, rank: int, world: int,
                 generator: torch.Generator, binomial: bool = False, nonempty: bool = False):
        self.rank, self.world, self.num_samples = rank, world, num_samples
        self.indices = None if binomial else torch.arange(rank, num_samples, world)
        self.sample_rate, self.steps, self.generator, self.nonempty = sample_rate, steps, generator, nonempty

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        shard = len(range(self.rank, self.num_samples, self.world))
        for _ in range(self.steps):
            if self.indices is not None:
                mask = torch.rand(len(self.indices), generator=self.generator) < self.sample_rate
                yield self.indices[mask].tolist()
                continue
            # numpy's generator, seeded from the rank's torch generator: a checkpoint's generator state resumes it
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
            k = int(rng.binomial(shard, self.sample_rate))
            while self.nonempty and k == 0 and shard:
                k = int(rng.binomial(shard, self.sample_rate))
            picked = np.sort(rng.choice(shard, size=k, replace=False)) if k else np.empty(0, np.int64)
            yield (self.rank + picked * self.world).tolist()


def poisson_loader(private_loader: DataLoader, *, generator: torch.Generator, binomial: bool = False
                   ) -> DataLoader:
    """This rank's Poisson loader in place of Opacus' (same data set, sample rate and number of steps as its
    single-process DPDataLoader: int(1 / q)); empty batches keep the data's shapes (Opacus' collate)."""
    from opacus.data_loader import wrap_collate_with_empty
    from torch.utils.data import default_collate

    dataset, q = private_loader.dataset, private_loader.sample_rate
    first = dataset[0]
    sampler = PoissonShard(num_samples=len(dataset), sample_rate=q, steps=int(1 / q), rank=rank(),
                           world=world_size(), generator=generator, binomial=binomial)
    collate = wrap_collate_with_empty(collate_fn=default_collate, sample_empty_shapes=[(0, *x.shape) for x in first],
                                      dtypes=[x.dtype for x in first])
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=generator,
                      pin_memory=private_loader.pin_memory)


class ShuffledShard(DistributedSampler):
    """torch's DistributedSampler, reshuffled every epoch from its own count (set_epoch needs no caller);
    a resumed run sets ``epoch`` to the epochs done."""

    def __iter__(self):
        indices = super().__iter__()  # built eagerly from self.epoch
        self.epoch += 1
        return indices


def prepare(run, spec) -> None:
    """Turns build_run's single-process set-up into this rank's part; before make_private. Each rank gets its
    own random stream (Poisson masks, augmentation, PGD starts, dropout) after the model is initialized with
    the spec's seed; the module is wrapped so that every rank starts from rank 0's weights."""
    t = spec.training
    seed = stream_seed(t.seed, rank())
    run.generator.manual_seed(seed)
    torch.manual_seed(seed)
    if t.privacy.enabled:
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

        run.net = DifferentiallyPrivateDistributedDataParallel(run.net)  # make_private then goes distributed
        return
    from torch.nn.parallel import DistributedDataParallel

    run.net = DistributedDataParallel(run.net, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    loader = run.loader
    if run.mapped:  # a file-backed split: no list of every row (DistributedSampler's, 36 bytes a row per rank):
        # Poisson batches of this rank's shard at the global rate, drawn in O(batch), never empty (DDP steps them)
        q = min(t.batch_size / len(loader.dataset), 1.0)
        run.loader = DataLoader(loader.dataset, pin_memory=loader.pin_memory, batch_sampler=PoissonShard(
            num_samples=len(loader.dataset), sample_rate=q, steps=max(int(1 / q), 1), rank=rank(),
            world=world_size(), generator=run.generator, binomial=True, nonempty=True))
        return
    run.loader = DataLoader(loader.dataset, batch_size=math.ceil(t.batch_size / world_size()),
                            sampler=ShuffledShard(loader.dataset, num_replicas=world_size(), rank=rank(),
                                                  shuffle=True, seed=t.seed),
                            pin_memory=loader.pin_memory)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, (DifferentiallyPrivateDistributedDataParallel,
                                                DistributedDataParallel)) else module


# ------------------------------------------------------------------ checkpoints
@dataclass
class Resumed:
    epoch: int
    history: list


def run_digest(spec, x_train: np.ndarray, y_train: np.ndarray) -> str:
    """sha256 of what decides where an epoch ends: the spec's model, data and training sections and the
    training examples themselves (after the split and sanitization)."""
    from hardened_model.spec import spec_digest

    h = hashlib.sha256(spec_digest(spec, *DIGEST_SECTIONS).encode())
    for a in (x_train, y_train):
        h.update(f"{a.dtype}{a.shape}".encode())
        update_hash(h, a)  # block by block: the examples may be file-backed (rows.py)
    return h.hexdigest()


def _rng_state(run) -> dict:
    state = {"generator": run.generator.get_state(), "torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.device)
    noise = getattr(run.optimizer, "generator", None)  # Opacus' noise generator (rank 0's draws the noise)
    if noise is not None:
        state["noise"] = noise.get_state()
    return state


def _set_rng_state(run, state: dict) -> None:
    run.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and run.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], run.device)
    if "noise" in state:
        run.optimizer.generator.set_state(state["noise"])


def save_checkpoint(run, directory: str | os.PathLike, *, digest: str, epoch: int, history: list) -> pathlib.Path:
    """Every rank calls it at the end of an epoch; rank 0 writes ``directory``/checkpoint.pt atomically and
    every rank waits for it, so that a failure after this point resumes from this epoch."""
    rngs = all_gather(_rng_state(run))
    path = pathlib.Path(directory) / CHECKPOINT_NAME
    if rank() == 0:
        state = {
            "format": CHECKPOINT_FORMAT, "digest": digest, "worldSize": world_size(), "epoch": epoch,
            "steps": run.steps, "history": history,
            "model": {k: v.detach().cpu() for k, v in run.module.state_dict().items()},
            "optimizer": run.optimizer.state_dict(),
            "accountant": dict(run.engine.accountant.state_dict()) if run.engine is not None else None,
            "average": ({"steps": run.average.steps, "params": {k: v.cpu() for k, v in run.average.params.items()}}
                        if run.average is not None else None),
            "rng": rngs,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{CHECKPOINT_NAME}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # a reader sees the previous epoch's checkpoint or this one, never half of one
    if world_size() > 1:
        dist.barrier()
    return path


def _broadcast_bytes(blob: bytes) -> bytes:
    """Rank 0's bytes on every rank."""
    if world_size() == 1:
        return blob
    device = _comm_device()
    size = torch.tensor([len(blob)], dtype=torch.int64, device=device)
    dist.broadcast(size, 0)
    n = int(size.item())
    if n == 0:
        return b""
    buf = (torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(device) if rank() == 0
           else torch.empty(n, dtype=torch.uint8, device=device))
    dist.broadcast(buf, 0)
    return buf.cpu().numpy().tobytes()


def load_checkpoint(run, directory: str | os.PathLike, *, digest: str) -> Resumed | None:
    """Every rank calls it after build_run. None when ``directory`` holds no checkpoint; else the run is where
    the checkpoint's epoch left it (weights, optimizer, accountant, average, steps, random streams).
    CheckpointError naming the directory when the checkpoint belongs to another run or cannot be read."""
    path = pathlib.Path(directory) / CHECKPOINT_NAME
    blob = b""
    if rank() == 0 and path.is_file():
        blob = path.read_bytes()
    blob = _broadcast_bytes(blob)
    if not blob:
        return None
    where = f"--checkpoint-dir {directory}"
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file, whatever torch.load raises
        raise CheckpointError(f"{where}: {CHECKPOINT_NAME} cannot be read ({type(exc).__name__}: {exc}); remove "
                              f"it to train from the start") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: {CHECKPOINT_NAME} is not a {CHECKPOINT_FORMAT} checkpoint")
    if state["worldSize"] != world_size():
        raise CheckpointError(f"{where}: the checkpoint was written by {state['worldSize']} rank(s), this run has "
                              f"{world_size()}: resume with the same number of processes, or use another directory")
    if state["digest"] != digest:
        raise CheckpointError(f"{where}: the checkpoint belongs to another training run (its digest "
                              f"{state['digest'][:12]}, this run's {digest[:12]}: spec.model, spec.data, "
                              f"spec.training or the training data differ); use another directory or remove it")
    run.module.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.engine is not None:
        run.engine.accountant.load_state_dict(state["accountant"])
    if run.average is not None:
        run.average.steps = state["average"]["steps"]
        for k, v in state["average"]["params"].items():
            run.average.params[k].copy_(v)
    _set_rng_state(run, state["rng"][rank()])
    run.steps = state["steps"]
    sampler = getattr(run.loader, "sampler", None)
    if isinstance(sampler, ShuffledShard):
        sampler.epoch = state["epoch"]
    return Resumed(epoch=state["epoch"], history=state["history"])
