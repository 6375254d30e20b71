"""The cheapest honest baseline: overlapping k-mer counts (tf-idf weighted, L2-normalised) and multinomial
logistic regression, fitted in one pass by scikit-learn (the shared fit: `estimators.py`). Position-blind:
a motif counts the same wherever it is (`onehot.py` is the positional counterpart)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

from .estimators import SklearnArm, SklearnFitted

__all__ = ["KmerLogRegArm", "SklearnFitted"]


@dataclass(frozen=True)
class KmerLogRegArm(SklearnArm):
    @property
    def hyperparameters(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("k", "C"), ()

    def featurizer(self, params: dict[str, Any]) -> list[tuple[str, Any]]:
        k = int(params["k"])
        return [("kmers", CountVectorizer(analyzer="char", ngram_range=(k, k), lowercase=False, dtype=np.float32)),
                ("tfidf", TfidfTransformer(sublinear_tf=True))]
