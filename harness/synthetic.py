"""The embedded synthetic suite: deterministic, GUE-shaped, motif-planted tasks.

Each task is generated on the fly from a seed derived from its name, so every machine gets the same
sequences with no download. Sequences have variable lengths (like GUE's), a GC-biased background, and
motifs planted with point mutations; a few labels are flipped so no arm can reach a perfect score.

  synthetic/motif_binary      2 classes, 90-110 bp: a TATA-like box (with mutations) marks positives.
  synthetic/motif_pair        2 classes, 60-80 bp: positive only when two motifs co-occur; negatives
                              carry one of them or none (a single k-mer cannot decide it).
  synthetic/motif_multiclass  3 classes, 110-140 bp: class 0 background, classes 1 and 2 each carry
                              two copies of their own motif, both classes share a decoy motif.
  synthetic/motif_position    2 classes, 100-104 bp: every sequence carries one copy of the same motif,
                              the 5' splice-site consensus CAGGTAAGT (Shapiro & Senapathy 1987); in
                              class 1 it starts at base 46 (the centre of the first 100 bp, a fixed
                              place counted from the start, as a splice site sits at the centre of
                              GUE's splice sequences), in class 0 anywhere else, not overlapping it.
                              Both classes have the same background, motif and mutation rate, so their
                              k-mer counts have one distribution: only WHERE the motif is decides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .data import Split, TaskData, count_overlaps

ALPHABET = np.array(list("ACGT"))


@dataclass(frozen=True)
class SyntheticSpec:
    name: str
    num_classes: int
    length: tuple[int, int]
    sizes: tuple[int, int, int]  # train, dev, test
    motifs: tuple[tuple[str, ...], ...]  # motifs planted for each class
    mutation_rate: float = 0.1
    label_noise: float = 0.03
    decoys: tuple[str, ...] = ()  # planted at random in every class
    copies: int = 1  # copies of each class motif per sequence
    site: int | None = None  # positional task: class 1's motif starts at this base, class 0's elsewhere


SPECS = {
    s.name: s
    for s in [
        SyntheticSpec("synthetic/motif_binary", 2, (90, 110), (800, 200, 200),
                      motifs=((), ("TATAAAAG",))),
        SyntheticSpec("synthetic/motif_pair", 2, (60, 80), (800, 200, 200),
                      motifs=((), ("GGGCGG", "CCAAT")), mutation_rate=0.05),
        SyntheticSpec("synthetic/motif_multiclass", 3, (110, 140), (750, 200, 200),
                      motifs=((), ("CACGTG",), ("TGACTCA",)), decoys=("GATA",), copies=2),
        SyntheticSpec("synthetic/motif_position", 2, (100, 104), (800, 200, 200),
                      motifs=(("CAGGTAAGT",), ("CAGGTAAGT",)), site=46),
    ]
}


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def _plant(seq: np.ndarray, motif: str, rng: np.random.Generator, mutation_rate: float,
           start: int | None = None) -> None:
    """Write `motif` (with point mutations) into `seq` at `start`, or at a random place."""
    site = np.array(list(motif))
    mutate = rng.random(len(site)) < mutation_rate
    site[mutate] = rng.choice(ALPHABET, size=int(mutate.sum()))
    if start is None:
        start = rng.integers(0, len(seq) - len(site) + 1)
    seq[start:start + len(site)] = site


def _elsewhere(length: int, width: int, site: int, rng: np.random.Generator) -> int:
    """A random start for a motif of `width` in a sequence of `length` that does not overlap `site`."""
    starts = np.arange(length - width + 1)
    return int(rng.choice(starts[np.abs(starts - site) >= width]))


def _sample(spec: SyntheticSpec, n: int, rng: np.random.Generator) -> Split:
    labels = rng.integers(0, spec.num_classes, size=n)
    sequences = []
    for label in labels:
        length = int(rng.integers(spec.length[0], spec.length[1] + 1))
        seq = rng.choice(ALPHABET, size=length, p=[0.275, 0.225, 0.225, 0.275])
        motifs = list(spec.motifs[label])
        if spec.num_classes == 2 and label == 0 and spec.motifs[1][1:]:
            # Negatives of a co-occurrence task carry one of the positive motifs half of the time.
            if rng.random() < 0.5:
                motifs = [str(rng.choice(spec.motifs[1]))]
        if spec.site is not None:  # one copy, at the site (class 1) or elsewhere (class 0)
            (motif,) = motifs
            start = spec.site if label == 1 else _elsewhere(length, len(motif), spec.site, rng)
            _plant(seq, motif, rng, spec.mutation_rate, start)
            motifs = []
        for motif in motifs * spec.copies + [d for d in spec.decoys if rng.random() < 0.5]:
            _plant(seq, motif, rng, spec.mutation_rate)
        sequences.append("".join(seq))
    flip = rng.random(n) < spec.label_noise
    labels[flip] = rng.integers(0, spec.num_classes, size=int(flip.sum()))
    return Split(sequences, labels.astype(np.int64))


def make_synthetic_task(name: str) -> TaskData:
    spec = SPECS[name]
    rng = np.random.default_rng(_seed(name))
    train, dev, test = (_sample(spec, n, rng) for n in spec.sizes)
    splits = {"train": train, "dev": dev, "test": test}
    return TaskData(name, train, dev, test, spec.num_classes, "synthetic (generated)", count_overlaps(splits))
