"""Poisoning sanitization that catches label flips.

A pixel-space IsolationForest looks for odd *images*; a label-flipped example
has an ordinary image with the wrong label, so it passes. These filters look
at label *consistency* instead:

- ``knn-label-consistency``: in a PCA feature space, an example whose label
  disagrees with the majority of its k nearest neighbours is suspect.
- ``loss``: a cross-validated classifier (each example scored by a model that
  never saw it) gives the probability of the example's own label; the least
  likely labels are suspect.

Either way at most ``max_remove_fraction`` of the data is removed, the least
consistent first. docs/benchmarks.md has precision/recall on a 10% flip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SanitizeResult:
    keep: np.ndarray        # bool mask over the input
    scores: np.ndarray      # label consistency in [0, 1]; low = suspect
    method: str

    @property
    def removed(self) -> int:
        return int((~self.keep).sum())


def _features(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    flat = x.reshape(len(x), -1).astype(np.float32)
    n = min(30, flat.shape[1], len(flat) - 1)
    return PCA(n_components=n, random_state=seed).fit_transform(flat) if n >= 2 else flat


def _knn_consistency(feats: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(y) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(feats).kneighbors(feats)
    neighbours = y[idx[:, 1:]]  # drop the example itself
    return (neighbours == y[:, None]).mean(axis=1)


def _loss_consistency(feats: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    proba = cross_val_predict(LogisticRegression(max_iter=300), feats, y, cv=folds, method="predict_proba")
    classes = np.unique(y)
    col = np.searchsorted(classes, y)
    return proba[np.arange(len(y)), col]


def sanitize(x: np.ndarray, y: np.ndarray, *, method: str = "knn-label-consistency", k: int = 10,
             max_remove_fraction: float = 0.2, seed: int = 0) -> SanitizeResult:
    """Flag suspected label-flipped examples; return which to keep."""
    if len(y) < 3:
        return SanitizeResult(np.ones(len(y), bool), np.ones(len(y)), method)
    feats = _features(x, seed)
    if method == "knn-label-consistency":
        scores = _knn_consistency(feats, y, k)
        suspect = scores < 0.5  # most neighbours carry another label
    elif method == "loss":
        scores = _loss_consistency(feats, y, seed)
        suspect = scores < 0.1  # the held-out model gives the label under 10%
    else:
        raise ValueError(f"unknown sanitization method {method!r}; choose knn-label-consistency or loss")
    budget = int(max_remove_fraction * len(y))
    order = np.argsort(scores, kind="stable")  # least consistent first
    drop = order[:budget][suspect[order[:budget]]]
    keep = np.ones(len(y), bool)
    keep[drop] = False
    return SanitizeResult(keep=keep, scores=scores, method=method)


def flip_labels(y: np.ndarray, fraction: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A label-flip poisoning attack (for tests and benchmarks): returns (poisoned y, flipped mask)."""
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(y), bool)
    flipped[rng.choice(len(y), int(fraction * len(y)), replace=False)] = True
    out = y.copy()
    shift = rng.integers(1, num_classes, size=int(flipped.sum()))
    out[flipped] = (y[flipped] + shift) % num_classes
    return out, flipped
