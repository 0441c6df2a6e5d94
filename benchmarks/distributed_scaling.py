"""(h) Data-parallel training: examples per second at world size 1 and 2, one thread per rank, in one run.

Each rank is a fresh process (spawn) with torch.set_num_threads(1), joined into a gloo group as torchrun's
workers are (hardened_trainer.distributed.init) and running hardened_trainer.train.train on the whole training
set, which shards it: plain training (DDP), DP-SGD (the fast clipper, Opacus' distributed optimizer) and PGD
adversarial training under DP-SGD. The figure is the steady-state epoch (the fastest after the first, less the
accountant's per-epoch epsilon, from the trainer's own epoch log): training examples / seconds. Scaling
efficiency = examples/s at 2 ranks / (2 x examples/s at 1 rank). The ceiling beside it: two independent
one-process runs at once (no process group), their summed rate over one run's: what this machine gives two
processes, so what no data-parallel design can beat here.

cnn-28x28 on MNIST (8,000 training examples of the t10k set), batch 256, 3 epochs, PGD 10 steps on half of
each batch, DP-SGD at epsilon 3 (PRV).

    .venv/bin/python benchmarks/distributed_scaling.py [--world 2] [--smoke]

On a GPU machine benchmarks/gpu_check.py runs the same table with one rank per GPU (nccl).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import tempfile
import time
import warnings

import torch

from common import DP, PGD, machine, mnist_spec, mnist_split, smoke_parser

MODES = {"plain": {"adversarial": {"enabled": False}, "privacy": {"enabled": False}},
         "DP-SGD": {"adversarial": {"enabled": False}, "privacy": {**DP, "clipping": "fast"}},
         "PGD + DP-SGD": {"adversarial": PGD, "privacy": {**DP, "clipping": "fast"}}}
DEADLINE_S = 3600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, mode: str, smoke: bool, device: str, out: str) -> None:
    """One rank: train, and (rank 0) write the epoch marks."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from hardened_trainer import distributed
    from hardened_trainer.train import train

    dev = distributed.init(device) if world > 1 else torch.device(device if device != "cuda" else "cuda:0")
    s = mnist_split(smoke=smoke)
    spec = mnist_spec({"learningRate": 0.1, "batchSize": 256, "epochs": 2 if smoke else 3, **MODES[mode]})
    marks = []
    try:
        train(spec, s.x_train, s.y_train, device=dev, log=lambda event, **kw: marks.append(
            (kw["seconds"], kw.get("accountantSeconds", 0.0))) if event == "epoch" else None)
    finally:
        if world > 1:
            distributed.teardown()
    if rank == 0:
        steady = min(marks[i][0] - marks[i - 1][0] - marks[i][1] for i in range(1, len(marks)))
        with open(out, "w") as fh:
            json.dump({"examples": len(s.y_train), "epoch_s": steady}, fh)


def measure(world: int, mode: str, *, smoke: bool, device: str = "cpu", alone: int = 0) -> dict:
    """{"examples", "epoch_s"} of one run of ``world`` ranks. ``alone``: instead, that many independent
    one-process runs at once (no process group, nothing shared): what the machine gives two processes, the
    ceiling of any data-parallel speed-up here; the figure is their summed rate, as examples / epoch_s."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        port = _free_port()
        if alone:
            outs = [os.path.join(tmp, f"alone{i}.json") for i in range(alone)]
            procs = [ctx.Process(target=_rank, args=(0, 1, port, mode, smoke, device, o)) for o in outs]
        else:
            procs = [ctx.Process(target=_rank, args=(r, world, port, mode, smoke, device, out))
                     for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + DEADLINE_S
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
        codes = [p.exitcode for p in procs]
        if alone:
            if any(codes):
                raise RuntimeError(f"{mode}, {alone} runs alone: exited {codes}")
            runs = [json.load(open(o)) for o in outs]
            return {"examples": sum(r["examples"] / r["epoch_s"] for r in runs), "epoch_s": 1.0}
        if any(codes) or not os.path.exists(out):
            raise RuntimeError(f"{mode} at world {world}: ranks exited {codes}")
        with open(out) as fh:
            return json.load(fh)


def table(worlds=(1, 2), *, smoke: bool = False, device: str = "cpu") -> None:
    print(f"cnn-28x28, MNIST {'(smoke sizes)' if smoke else '8,000 examples'}, batch 256, one thread per rank, "
          f"{device}")
    n = worlds[-1]
    print(f"{'':14s} " + " ".join(f"{f'world {w} ex/s':>14s}" for w in worlds) + f" {'speed-up':>9s} "
          f"{'efficiency':>10s} {f'{n} alone ex/s':>14s} {'ceiling':>8s}")
    for mode in MODES:
        rates = []
        for w in worlds:
            r = measure(w, mode, smoke=smoke, device=device)
            rates.append(r["examples"] / r["epoch_s"])
        alone = measure(1, mode, smoke=smoke, device=device, alone=n)["examples"]
        speedup = rates[-1] / rates[0]
        print(f"{mode:14s} " + " ".join(f"{x:14.0f}" for x in rates) +
              f" {speedup:8.2f}x {speedup / (n / worlds[0]):9.0%} {alone:14.0f} {alone / rates[0]:7.2f}x", flush=True)


def main():
    p = smoke_parser(__doc__.split("\n\n")[0])
    p.add_argument("--world", type=int, default=2, help="the larger world size (default: 2)")
    args = p.parse_args()
    print(f"machine: {machine()}")
    table((1, args.world), smoke=args.smoke)


if __name__ == "__main__":
    main()
