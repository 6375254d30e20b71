"""Metrics: MCC, macro F1 and accuracy checked against their definitions and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

from conftest import random_probs
from harness.metrics import classification_metrics, confusion


def mcc_from_definition(y, p, classes):
    """Gorodkin's multi-class MCC from the confusion matrix (equals Matthews' for two classes)."""
    c = np.zeros((classes, classes))
    for a, b in zip(y, p):
        c[a, b] += 1
    t, pk, n, s = c.sum(1), c.sum(0), np.trace(c), c.sum()
    return (n * s - t @ pk) / np.sqrt((s**2 - pk @ pk) * (s**2 - t @ t))


@pytest.mark.parametrize("classes", [2, 3, 9])
def test_metrics_match_definitions_and_sklearn(classes):
    y, probs = random_probs(500, classes, seed=classes)
    pred = probs.argmax(1)
    m = classification_metrics(y, probs)
    assert m["mcc"] == pytest.approx(mcc_from_definition(y, pred, classes), abs=1e-12)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["accuracy"] == pytest.approx((y == pred).mean())
    per_class_f1 = [2 * ((pred == c) & (y == c)).sum() / ((pred == c).sum() + (y == c).sum()) for c in range(classes)]
    assert m["f1"] == pytest.approx(np.mean(per_class_f1))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert ("auroc" in m) == (classes == 2)
    if classes == 2:
        assert m["auroc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))


def test_auroc_undefined_with_one_class_and_confusion_shape():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert np.isnan(classification_metrics(np.array([0, 0]), probs)["auroc"])
    cm = confusion(np.array([0, 2, 2]), np.eye(3)[[0, 1, 2]])
    assert cm.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
