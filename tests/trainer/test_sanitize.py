"""Label-flip poisoning: the label-consistency filters catch it, a pixel IsolationForest does not."""
import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from hardened_trainer.data import load_dataset, split
from hardened_trainer.sanitize import flip_labels, sanitize


@pytest.fixture(scope="module")
def poisoned():
    ds = load_dataset("builtin:digits")
    s = split(ds, test_fraction=0.25, seed=0)
    y_poisoned, flipped = flip_labels(s.y_train, 0.10, 10, seed=1)
    return s.x_train, y_poisoned, flipped


def precision_recall(removed, flipped):
    tp = (removed & flipped).sum()
    return tp / max(removed.sum(), 1), tp / flipped.sum()


@pytest.mark.parametrize("method, min_precision, min_recall", [
    ("knn-label-consistency", 0.75, 0.95),   # measured: 0.827 / 1.000
    ("loss", 0.85, 0.85),                    # measured: 0.932 / 0.918
])
def test_catches_a_10_percent_label_flip(poisoned, method, min_precision, min_recall):
    x, y, flipped = poisoned
    res = sanitize(x, y, method=method, max_remove_fraction=0.2)
    precision, recall = precision_recall(~res.keep, flipped)
    assert precision >= min_precision and recall >= min_recall, (precision, recall)


def test_pixel_isolation_forest_misses_label_flips(poisoned):
    """Why this module exists: the reference capstone's filter is at chance on label flips."""
    x, y, flipped = poisoned
    removed = IsolationForest(contamination=0.1, random_state=0).fit(x.reshape(len(x), -1)).predict(
        x.reshape(len(x), -1)) == -1
    precision, recall = precision_recall(removed, flipped)
    assert precision < 0.3 and recall < 0.3


def test_removal_is_capped(poisoned):
    x, y, _ = poisoned
    res = sanitize(x, y, max_remove_fraction=0.05)
    assert res.removed == int(0.05 * len(y))


def test_clean_data_loses_little():
    ds = load_dataset("builtin:digits")
    res = sanitize(ds.x, ds.y)
    assert res.removed / len(ds.y) < 0.03


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose knn-label-consistency or loss"):
        sanitize(np.zeros((5, 1, 2, 2)), np.zeros(5, int), method="isolation")


def test_flip_labels_changes_exactly_the_fraction():
    y = np.arange(100) % 10
    yp, flipped = flip_labels(y, 0.1, 10, seed=0)
    assert flipped.sum() == 10 and (yp[flipped] != y[flipped]).all() and (yp[~flipped] == y[~flipped]).all()
