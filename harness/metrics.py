"""Classification metrics, always on a whole split's concatenated predictions (never per batch)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, roc_auc_score


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """MCC (GUE's metric), macro F1 and accuracy; AUROC for binary tasks.

    `probs` is [N, C] class probabilities; the prediction is their argmax.
    """
    preds = probs.argmax(axis=1)
    metrics = {
        "mcc": float(matthews_corrcoef(labels, preds)),
        "f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, preds)),
    }
    if probs.shape[1] == 2:
        # AUROC is undefined when the split holds a single class.
        metrics["auroc"] = float(roc_auc_score(labels, probs[:, 1])) if len(np.unique(labels)) == 2 else float("nan")
    return metrics


def confusion(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return confusion_matrix(labels, probs.argmax(axis=1), labels=np.arange(probs.shape[1]))
