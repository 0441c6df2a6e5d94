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

from hardened_model.spec import HardenedModelSpec


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
    positive: dict | None = None  # tabular: figures for data.positiveClass (POSITIVE_METRICS, curves, matrix)

    def metrics(self) -> dict:
        """The figures status and gates use (camelCase, as in status.metrics)."""
        out = {"cleanAccuracy": self.clean_accuracy, "robustAccuracy": self.robust_accuracy,
               "epsilon": self.epsilon, "membershipAUC": self.membership_auc}
        if self.positive is not None:
            out.update({k: self.positive[k] for k in POSITIVE_METRICS})
        return out

    def to_dict(self) -> dict:
        return asdict(self)


# The positive class's figures (tabular data), as metrics.json, the verify result and status name them
# the loss-threshold attack's members and non-members: at most this many of each (an AUC from 20,000 of each has
# a standard error under 0.005); more would copy the whole test split into memory for a large data set
MIA_MAX_EXAMPLES = 20_000
POSITIVE_METRICS = ("recall", "precision", "f1", "prAUC", "rocAUC", "balancedAccuracy", "robustRecall")


def _device(model: nn.Module) -> torch.device:
    """Where the model's weights are (ART moves a model to the GPU when it has one)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    dev = _device(model)
    out = [model(torch.from_numpy(x[i:i + batch_size]).to(dev)).softmax(1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def per_example_loss(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    dev = _device(model)
    parts = [F.cross_entropy(model(torch.from_numpy(x[i:i + batch_size]).to(dev)),
                             torch.from_numpy(y[i:i + batch_size]).to(dev), reduction="none").cpu()
             for i in range(0, len(x), batch_size)]
    return torch.cat(parts).numpy()


def art_classifier(model: nn.Module, input_shape: list[int], num_classes: int, clip_values=(0.0, 1.0)):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(input_shape),
                             nb_classes=num_classes, clip_values=clip_values,
                             device_type="gpu" if torch.cuda.is_available() else "cpu")


def art_attack(name: str, classifier, *, eps, pgd_iter: int, batch_size: int = 256, seed: int = 0):
    """ART's FGSM or PGD; ``eps`` a scalar, or one radius per feature (tabular data)."""
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    if name == "fgsm":
        return FastGradientMethod(classifier, norm=np.inf, eps=eps, eps_step=eps, batch_size=batch_size)
    if name == "pgd":
        return ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=2.5 * eps / pgd_iter,
                                        max_iter=pgd_iter, num_random_init=1, batch_size=batch_size,
                                        random_eps=False, verbose=False)
    raise ValueError(f"unknown attack {name!r}; choose fgsm or pgd")


def adversarial_examples(model: nn.Module, x: np.ndarray, y: np.ndarray, attack: str, *, eps: float, pgd_iter: int,
                         input_shape: list[int], num_classes: int, cons=None) -> np.ndarray:
    """ART's adversarial examples. For tabular data (``cons``: hardened_trainer.tabular.Constraints) ART gets
    a radius per feature and a mask (only mutable number columns move), and ``cons.snap`` makes integers whole
    and keeps each feature within its bounds; the result is checked against every constraint."""
    if cons is None:
        clf = art_classifier(model, input_shape, num_classes)
        x_adv = art_attack(attack, clf, eps=eps, pgd_iter=pgd_iter).generate(x=x, y=y).astype(np.float32)
        assert np.abs(x_adv - x).max() <= eps + 1e-5, "attack left the eps ball"
        return x_adv
    radius = cons.radius(eps)
    # ART clips to one box for all rows: wide enough for every row, so none is pulled in (snap bounds each row)
    clip = (np.minimum(cons.low, x.min(0)).astype(np.float32), np.maximum(cons.high, x.max(0)).astype(np.float32))
    clf = art_classifier(model, input_shape, num_classes, clip_values=clip)
    # ART wants every radius positive: immutable columns get a token one, and the mask keeps them still
    x_adv = art_attack(attack, clf, eps=np.maximum(radius, 1e-9), pgd_iter=pgd_iter).generate(
        x=x, y=y, mask=np.broadcast_to(cons.mask, x.shape).astype(np.float32))
    x_adv = cons.snap(x_adv.astype(np.float32), x, eps)
    moved = np.abs(x_adv - x)
    assert (moved <= radius + 1e-4 * (1 + np.abs(x))).all(), "attack left the per-feature radius"
    assert (moved[:, cons.mask == 0] == 0).all(), "attack moved an immutable feature"
    assert (x_adv[:, cons.integer] == np.rint(x_adv[:, cons.integer])).all(), "attack left the integer grid"
    return x_adv


def robust_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, attack: str, *, eps: float, pgd_iter: int,
                    input_shape: list[int], num_classes: int, cons=None) -> float:
    if eps == 0:
        return float((predict(model, x).argmax(1) == y).mean())
    x_adv = adversarial_examples(model, x, y, attack, eps=eps, pgd_iter=pgd_iter, input_shape=input_shape,
                                 num_classes=num_classes, cons=cons)
    return float((predict(model, x_adv).argmax(1) == y).mean())


def positive_class_metrics(model: nn.Module, x_test: np.ndarray, y_test: np.ndarray, spec: HardenedModelSpec,
                           cons) -> dict:
    """Precision, recall, F1, PR-AUC (average precision), ROC-AUC, balanced accuracy and the confusion matrix
    for class 1 (data.positiveClass) on the whole test split, and recall under the constrained attacks on its
    positives (at most evaluation.maxSamples): the lowest over the attacks."""
    from sklearn.metrics import (average_precision_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_recall_curve, precision_score, recall_score, roc_auc_score)

    ev = spec.evaluation
    score = predict(model, x_test)[:, 1]
    pred = (score >= 0.5).astype(np.int64)
    pos = np.flatnonzero(y_test == 1)[:ev.max_samples]
    robust = {}
    for attack in ev.attacks:
        x_adv = adversarial_examples(model, x_test[pos], y_test[pos], attack, eps=ev.eps, pgd_iter=ev.pgd_iter,
                                     input_shape=spec.model.input_shape, num_classes=2, cons=cons)
        robust[attack] = float((predict(model, x_adv)[:, 1] >= 0.5).mean()) if len(pos) else 0.0
    precision, recall, _ = precision_recall_curve(y_test, score)
    keep = np.unique(np.linspace(0, len(recall) - 1, min(len(recall), 200)).astype(int))
    return {"recall": float(recall_score(y_test, pred, zero_division=0)),
            "precision": float(precision_score(y_test, pred, zero_division=0)),
            "f1": float(f1_score(y_test, pred, zero_division=0)),
            "prAUC": float(average_precision_score(y_test, score)),
            "rocAUC": float(roc_auc_score(y_test, score)),
            "balancedAccuracy": float(balanced_accuracy_score(y_test, pred)),
            "robustRecall": min(robust.values()) if robust else None,
            "robustRecallByAttack": robust,
            "confusionMatrix": confusion_matrix(y_test, pred, labels=[0, 1]).tolist(),  # [[tn, fp], [fn, tp]]
            "prCurve": [[float(recall[i]), float(precision[i])] for i in keep],
            "positives": int((y_test == 1).sum()), "attackedPositives": int(len(pos))}


def membership_inference(model: nn.Module, x_member: np.ndarray, y_member: np.ndarray, x_out: np.ndarray,
                         y_out: np.ndarray, *, seed: int) -> tuple[float, list[list[float]]]:
    """Loss-threshold attack; returns (AUC, ROC points)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    n = min(len(y_member), len(y_out), MIA_MAX_EXAMPLES)
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

    cons = None
    if spec.model.architecture == "tabular-mlp":
        from .tabular import constraints

        cons = constraints(spec.data.features, x_train)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y_test), min(ev.max_samples, len(y_test)), replace=False)
    xs, ys = x_test[idx], y_test[idx]
    shape, k = spec.model.input_shape, spec.model.num_classes
    at_eps = {a: robust_accuracy(model, xs, ys, a, eps=ev.eps, pgd_iter=ev.pgd_iter, input_shape=shape,
                                 num_classes=k, cons=cons) for a in ev.attacks}
    # accuracy vs attack strength for the report, on at most 300 examples
    sweep_idx = idx[:300]
    sweep = {a: [[float(e), at_eps[a] if e == ev.eps and len(sweep_idx) == len(idx) else
                  robust_accuracy(model, x_test[sweep_idx], y_test[sweep_idx], a, eps=float(e),
                                  pgd_iter=ev.pgd_iter, input_shape=shape, num_classes=k, cons=cons)]
                 for e in np.round(np.linspace(0, 2 * ev.eps, 5), 6)] for a in ev.attacks}

    auc, roc = (None, [])
    if ev.membership_inference:
        auc, roc = membership_inference(model, x_train, y_train, x_test, y_test, seed=seed)
    positive = positive_class_metrics(model, x_test, y_test, spec, cons) if cons is not None else None
    return Evaluation(clean_accuracy=clean, robust_accuracy=min(at_eps.values()) if at_eps else None,
                      attack_accuracy=at_eps, epsilon=epsilon, membership_auc=auc, per_class_accuracy=per_class,
                      sweep=sweep, mia_roc=roc, samples=len(idx), positive=positive)
