"""(a) DP-SGD cost against non-private training of the same model, in one run, for each clipper.

Through hardened_trainer.train.train, batch 256, no adversarial examples, each model four ways: non-private,
and DP-SGD with the clipping the trainer picks by default (``fast``: one backward pass,
hardened_trainer.clipping), Opacus' ghost clipping and Opacus' per-sample hooks. Reports the steady-state
epoch time (the fastest epoch after the first, from the trainer's own epoch log, without the accountant's
per-epoch epsilon, shown beside it) and the whole call, which adds DP's fixed costs (noise-multiplier
search, the accountant).

- cnn-28x28 on MNIST (8,000 training examples of the t10k set), 4 epochs;
- cnn-8x8 on scikit-learn's digits (1,437), 8 epochs;
- tabular-mlp on the synthetic transactions (75,000 rows, scripts/make-transactions' generator), 3 epochs.

    .venv/bin/python benchmarks/dp_overhead.py [--only cnn-28x28] [--smoke]
"""
import time
import warnings

import torch

from common import DP, digits_spec, fraud_spec, machine, make_transactions, mnist_spec, mnist_split, small, \
    smoke_parser

warnings.filterwarnings("ignore")
MODES = ("fast", "ghost", "hooks")


def timed(spec, x, y, device=torch.device("cpu")):
    """(steady-state training seconds per epoch, the accountant's seconds per epoch, seconds for the whole
    train() call). The trainer asks Opacus' accountant for epsilon after every epoch (a fixed ~0.2 s with
    PRV, whatever the model); its own epoch log says how long that took, and the training time excludes it."""
    from hardened_trainer.train import train

    marks = []
    t = time.perf_counter()
    train(spec, x, y, device=device, log=lambda event, **kw: marks.append(
        (kw["seconds"], kw.get("accountantSeconds", 0.0))) if event == "epoch" else None)
    total = time.perf_counter() - t
    steady = min(range(1, len(marks)), key=lambda i: marks[i][0] - marks[i - 1][0] - marks[i][1])
    return marks[steady][0] - marks[steady - 1][0] - marks[steady][1], marks[steady][1], total


def cases(only, smoke=False):
    """(name, spec from training settings, x, y, epochs, clip) per model, each with its example's learning rate
    and clip (maxGradNorm); with ``smoke``, a few hundred examples and 2 epochs (the fewest with a steady epoch
    after the first)."""
    from hardened_trainer.data import Dataset, load_dataset, split

    if only in (None, "cnn-28x28"):
        s = mnist_split(smoke=smoke)
        yield "cnn-28x28", lambda o: mnist_spec({"learningRate": 0.1, **o}), s.x_train, s.y_train, \
            2 if smoke else 4, 1.0
    if only in (None, "cnn-8x8"):
        s = split(load_dataset("builtin:digits"), test_fraction=0.2, seed=0)
        s = small(s, 256, 64) if smoke else s
        yield "cnn-8x8", lambda o: digits_spec({"learningRate": 0.1, **o}), s.x_train, s.y_train, \
            2 if smoke else 8, 1.0
    if only in (None, "tabular-mlp"):
        from hardened_trainer.tabular import load_table

        csv = make_transactions(1200 if smoke else 100_000, 0, 0.05 if smoke else 0.004)

        def spec(o):
            return fraud_spec(o, str(csv))
        table = load_table(spec({}).data)
        s = split(Dataset(x=table.x, y=table.y, raw_scale=1.0, source=str(csv)), test_fraction=0.25, seed=0)
        yield "tabular-mlp", spec, s.x_train, s.y_train, 2 if smoke else 3, 0.5


def table(only=None, device=torch.device("cpu"), smoke=False):
    """Print the table for each model on ``device``."""
    for name, spec, x, y, epochs, clip in cases(only, smoke):
        common = {"epochs": epochs, "batchSize": 256, "adversarial": {"enabled": False}}
        base = timed(spec({**common, "privacy": {"enabled": False}}), x, y, device)
        rows = [("non-private", base)]
        for mode in MODES:
            priv = {**DP, "maxGradNorm": clip, "clipping": mode}
            rows.append((f"DP-SGD {mode}" + (" (default)" if mode == "fast" else ""),
                         timed(spec({**common, "privacy": priv}), x, y, device)))
        print(f"\n{name}: {len(y)} examples, batch 256, {epochs} epochs, {device}")
        print(f"{'':22s} {'epoch':>8s} {'ratio':>6s} {'+ accountant':>12s} {'total':>8s} {'ratio':>6s}")
        for label, (epoch, accountant, total) in rows:
            print(f"{label:22s} {epoch:7.3f}s {epoch / base[0]:5.2f}x {accountant:11.3f}s {total:7.2f}s "
                  f"{total / base[2]:5.2f}x", flush=True)


def main():
    p = smoke_parser(__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["cnn-28x28", "cnn-8x8", "tabular-mlp"], help="one model (default: all)")
    args = p.parse_args()
    print(f"machine: {machine()}")
    table(args.only, smoke=args.smoke)


if __name__ == "__main__":
    main()
