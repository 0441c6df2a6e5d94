"""(b) PGD-10 adversarial training throughput vs ART's AdversarialTrainerMadryPGD, in one run.

Same model (cnn-28x28), data (MNIST 8,000), batch 128, eps 0.1, step 0.025, 10
iterations, every example adversarial (Madry's setting: ratio 1.0), 1 epoch
each, best of 2 (SGD with momentum 0.9, learning rate 0.05, for both). Examples per second.

    .venv/bin/python benchmarks/adv_throughput.py [--smoke]
"""
import time
import warnings

import numpy as np
import torch

from common import PGD, machine, mnist_spec, mnist_split, smoke_parser

warnings.filterwarnings("ignore")
EPS, STEP, ITERS, BATCH = 0.1, 0.025, 10, 128


def ours(split):
    from hardened_trainer.train import train

    spec = mnist_spec({"epochs": 1, "batchSize": BATCH, "learningRate": 0.05, "privacy": {"enabled": False},
                       "adversarial": {**PGD, "eps": EPS, "epsStep": STEP, "maxIter": ITERS, "ratio": 1.0}})
    t = time.perf_counter()
    train(spec, split.x_train, split.y_train, device=torch.device("cpu"), log=lambda *a, **k: None)
    return time.perf_counter() - t


def art(split):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    from hardened_model.networks import build_model

    torch.manual_seed(0)
    model = build_model("cnn-28x28", [1, 28, 28], 10, mean=float(split.x_train.mean()), std=float(split.x_train.std()))
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                            clip_values=(0.0, 1.0), device_type="cpu")
    trainer = AdversarialTrainerMadryPGD(clf, nb_epochs=1, batch_size=BATCH, eps=EPS, eps_step=STEP, max_iter=ITERS,
                                         num_random_init=1)
    trainer.trainer._attack = ProjectedGradientDescent(clf, eps=EPS, eps_step=STEP, max_iter=ITERS,
                                                       num_random_init=1, verbose=False)
    t = time.perf_counter()
    trainer.fit(split.x_train, np.eye(10)[split.y_train].astype(np.float32))
    return time.perf_counter() - t


def main():
    args = smoke_parser(__doc__.split("\n\n")[0]).parse_args()
    split = mnist_split(smoke=args.smoke)
    n = len(split.y_train)
    tries = 1 if args.smoke else 2
    t_ours = min(ours(split) for _ in range(tries))
    t_art = min(art(split) for _ in range(tries))
    print(f"machine: {machine()}")
    print(f"ours (torch PGD-10)             {t_ours:7.2f} s  {n / t_ours:8.1f} examples/s")
    print(f"ART AdversarialTrainerMadryPGD  {t_art:7.2f} s  {n / t_art:8.1f} examples/s")
    print(f"speed-up: {t_art / t_ours:.2f}x")


if __name__ == "__main__":
    main()
