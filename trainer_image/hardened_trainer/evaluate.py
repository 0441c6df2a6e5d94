"""Evaluation: clean accuracy, robust accuracy under ART's attacks, membership inference, gates.

Robust accuracy uses ART (Adversarial Robustness Toolbox) FastGradientMethod
and ProjectedGradientDescent: an implementation independent of the training
loop's attacks, so a bug there cannot flatter the figures.

Membership inference: the loss-threshold attack (Yeom et al., "Privacy Risk in
Machine Learning", CSF 2018). Score every example by its negative loss under
the model; AUC of that score for telling training members from held-out
non-members (equal numbers of each). 0.5 is chance; a model that memorises its
training set scores its members with lower loss and the AUC rises.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hardened_operator.spec import HardenedModelSpec


@dataclass
class Evaluation:
    clean_accuracy: float
    robust_accuracy: float | None                # lowest over the configured attacks at spec eps
    attack_accuracy: dict[str, float]            # attack name -> accuracy at spec eps
    epsilon: float | None
    membership_auc: float | None
    per_class_accuracy: dict[str, float]
    sweep: dict[str, list[list[float]]] = field(default_factory=dict)  # attack -> [[eps, accuracy], ...]
    mia_roc: list[list[float]] = field(default_factory=list)           # [[fpr, tpr], ...]
    samples: int = 0

    def metrics(self) -> dict:
        """The figures status and gates use (camelCase, as in status.metrics)."""
        return {"cleanAccuracy": self.clean_accuracy, "robustAccuracy": self.robust_accuracy,
                "epsilon": self.epsilon, "membershipAUC": self.membership_auc}

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(x[i:i + batch_size])).softmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def per_example_loss(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    parts = [F.cross_entropy(model(torch.from_numpy(x[i:i + batch_size])), torch.from_numpy(y[i:i + batch_size]),
                             reduction="none") for i in range(0, len(x), batch_size)]
    return torch.cat(parts).numpy()


def art_classifier(model: nn.Module, input_shape: list[int], num_classes: int):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(input_shape),
                             nb_classes=num_classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if torch.cuda.is_available() else "cpu")


def art_attack(name: str, classifier, *, eps: float, pgd_iter: int, batch_size: int = 256, seed: int = 0):
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    if name == "fgsm":
        return FastGradientMethod(classifier, norm=np.inf, eps=eps, batch_size=batch_size)
    if name == "pgd":
        return ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=2.5 * eps / pgd_iter,
                                        max_iter=pgd_iter, num_random_init=1, batch_size=batch_size,
                                        random_eps=False, verbose=False)
    raise ValueError(f"unknown attack {name!r}; choose fgsm or pgd")


def robust_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, attack: str, *, eps: float, pgd_iter: int,
                    input_shape: list[int], num_classes: int) -> float:
    if eps == 0:
        return float((predict(model, x).argmax(1) == y).mean())
    clf = art_classifier(model, input_shape, num_classes)
    x_adv = art_attack(attack, clf, eps=eps, pgd_iter=pgd_iter).generate(x=x, y=y)
    assert np.abs(x_adv - x).max() <= eps + 1e-5, "attack left the eps ball"
    return float((predict(model, x_adv.astype(np.float32)).argmax(1) == y).mean())


def membership_inference(model: nn.Module, x_member: np.ndarray, y_member: np.ndarray, x_out: np.ndarray,
                         y_out: np.ndarray, *, seed: int) -> tuple[float, list[list[float]]]:
    """Loss-threshold attack; returns (AUC, ROC points)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    n = min(len(y_member), len(y_out))
    rng = np.random.default_rng(seed)
    mi = rng.choice(len(y_member), n, replace=False)
    oi = rng.choice(len(y_out), n, replace=False)
    scores = -np.concatenate([per_example_loss(model, x_member[mi], y_member[mi]),
                              per_example_loss(model, x_out[oi], y_out[oi])])
    truth = np.concatenate([np.ones(n), np.zeros(n)])
    fpr, tpr, _ = roc_curve(truth, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
    return float(roc_auc_score(truth, scores)), [[float(fpr[i]), float(tpr[i])] for i in keep]


def evaluate(model: nn.Module, spec: HardenedModelSpec, x_train: np.ndarray, y_train: np.ndarray,
             x_test: np.ndarray, y_test: np.ndarray, *, epsilon: float | None, labels: list[str]) -> Evaluation:
    ev = spec.evaluation
    seed = spec.training.seed
    model = model.cpu().eval()
    pred = predict(model, x_test).argmax(1)
    clean = float((pred == y_test).mean())
    per_class = {labels[c]: float((pred[y_test == c] == c).mean()) for c in range(len(labels)) if (y_test == c).any()}

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y_test), min(ev.max_samples, len(y_test)), replace=False)
    xs, ys = x_test[idx], y_test[idx]
    shape, k = spec.model.input_shape, spec.model.num_classes
    at_eps = {a: robust_accuracy(model, xs, ys, a, eps=ev.eps, pgd_iter=ev.pgd_iter, input_shape=shape,
                                 num_classes=k) for a in ev.attacks}
    # accuracy vs attack strength for the report, on at most 300 examples
    sweep_idx = idx[:300]
    sweep = {a: [[float(e), at_eps[a] if e == ev.eps and len(sweep_idx) == len(idx) else
                  robust_accuracy(model, x_test[sweep_idx], y_test[sweep_idx], a, eps=float(e),
                                  pgd_iter=ev.pgd_iter, input_shape=shape, num_classes=k)]
                 for e in np.round(np.linspace(0, 2 * ev.eps, 5), 6)] for a in ev.attacks}

    auc, roc = (None, [])
    if ev.membership_inference:
        auc, roc = membership_inference(model, x_train, y_train, x_test, y_test, seed=seed)
    return Evaluation(clean_accuracy=clean, robust_accuracy=min(at_eps.values()) if at_eps else None,
                      attack_accuracy=at_eps, epsilon=epsilon, membership_auc=auc, per_class_accuracy=per_class,
                      sweep=sweep, mia_roc=roc, samples=len(idx))
