"""The cheapest positional baseline: the one-hot of every position and multinomial logistic regression,
fitted in one pass by scikit-learn (the shared fit: `estimators.py`).

A sequence of length L becomes 4 * `length` binary features, feature 4 * i + c being "base i is c"
(c in A C G T), so a weight belongs to one base at one place: the model reads a splice site or a TATA
box at a fixed place, which k-mer counts (`kmer.py`) cannot tell from the same motif elsewhere. It is
the linear model position weight matrices and early splice-site predictors are built on.

Variable lengths: `length` is the longest sequence of the train split. Sequences are aligned at their
start (base i is position i from the 5' end, as the CNNs' positional pooling counts); shorter ones are
right-padded with all-zero positions, longer ones (dev or test only) are truncated to `length`, counted
and reported (truncated_* metrics). Any base other than A C G T (N) is an all-zero position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin

from .estimators import SklearnArm

# byte -> channel (A C G T = 0..3), -1 for anything else; upper and lower case alike
CHANNEL = np.full(256, -1, dtype=np.int64)
for _channel, _bases in enumerate(("Aa", "Cc", "Gg", "Tt")):
    CHANNEL[[ord(b) for b in _bases]] = _channel


class PositionalOneHot(TransformerMixin, BaseEstimator):
    """Sequences -> a sparse [N, 4 * length] one-hot, `length` learnt from the sequences `fit` sees."""

    def fit(self, sequences: list[str], y: Any = None) -> PositionalOneHot:
        self.length_ = max(len(s) for s in sequences)
        return self

    def transform(self, sequences: list[str]) -> sparse.csr_matrix:
        codes = np.full((len(sequences), self.length_), -1, dtype=np.int64)  # [N, length], -1 = no base
        for row, seq in enumerate(sequences):
            cut = seq[:self.length_].encode("ascii", errors="replace")
            codes[row, :len(cut)] = CHANNEL[np.frombuffer(cut, dtype=np.uint8)]
        rows, positions = np.nonzero(codes >= 0)
        columns = 4 * positions + codes[rows, positions]
        return sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)),
                                 shape=(len(sequences), 4 * self.length_))

    def truncated(self, sequences: list[str]) -> int:
        return sum(len(s) > self.length_ for s in sequences)


@dataclass(frozen=True)
class OneHotLogRegArm(SklearnArm):
    @property
    def hyperparameters(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("C",), ()

    def featurizer(self, params: dict[str, Any]) -> list[tuple[str, Any]]:
        return [("onehot", PositionalOneHot())]
