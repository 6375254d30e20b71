"""The statistics of a report, each a thin layer over scipy (or baycomp) that states its rules.

Comparing learners over several tasks follows Demšar (2006), "Statistical comparisons of classifiers over
multiple data sets", JMLR 7:
  - two arms: Wilcoxon signed-rank test on per-task means; zero differences are split evenly between
    the positive and negative rank sums ("zsplit", as Demšar recommends), tied differences share their
    average rank;
  - many arms: Friedman test on per-task ranks (Iman-Davenport F for the verdict), Nemenyi post-hoc with
    a critical difference;
  - Holm's step-down adjustment across the contrasts of one report.
and Benavoli et al. (2017), "Time for a change: a tutorial for comparing multiple classifiers through
Bayesian analysis", JMLR 18, for the Bayesian signed-rank test with a region of practical equivalence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import baycomp
import numpy as np
import pandas as pd
from scipy import stats

EXACT_PERMUTATION_MAX_N = 16  # 2**16 sign flips: an exact null distribution is cheap up to here


def smallest_signed_rank_p(n: int) -> float:
    """The smallest two-sided p an exact signed-rank test can return on n pairs (all of one sign)."""
    return min(1.0, 2.0 / 2**n)


def tasks_needed(alpha: float) -> int:
    """The fewest pairs with which a two-sided signed-rank test can reach p < alpha."""
    n = 1
    while smallest_signed_rank_p(n) >= alpha:
        n += 1
    return n


@dataclass(frozen=True)
class SignedRank:
    n: int  # pairs (zero differences included)
    n_zero: int
    r_plus: float  # rank sum of positive differences (plus half the zeros' ranks)
    r_minus: float
    statistic: float  # T = min(R+, R-)
    p: float  # NaN where the test cannot be informative; `note` says why
    method: str
    note: str = ""


def signed_rank(d: np.ndarray, alpha: float = 0.05) -> SignedRank:
    """Two-sided Wilcoxon signed-rank test of the paired differences `d` (one per task)."""
    d = np.asarray(d, dtype=float)
    n, n_zero = len(d), int(np.sum(d == 0))
    ranks = stats.rankdata(np.abs(d)) if n else np.array([])
    r_plus = float(ranks[d > 0].sum() + ranks[d == 0].sum() / 2)
    r_minus = float(ranks[d < 0].sum() + ranks[d == 0].sum() / 2)
    statistic = min(r_plus, r_minus)
    if n < 2:
        return SignedRank(n, n_zero, r_plus, r_minus, statistic, math.nan, "none", f"n = {n}: no test")
    if smallest_signed_rank_p(n) >= alpha:
        return SignedRank(n, n_zero, r_plus, r_minus, statistic, math.nan, "none",
                          f"{n} tasks cannot reach p < {alpha:g} (the smallest possible p is "
                          f"{smallest_signed_rank_p(n):.3g}); at least {tasks_needed(alpha)} are needed")
    if n_zero == n:
        return SignedRank(n, n_zero, r_plus, r_minus, statistic, 1.0, "none", "all differences are zero")
    ties = n_zero > 0 or len(np.unique(np.abs(d))) < n
    if not ties and n <= 50:
        method = "exact"
    elif n <= EXACT_PERMUTATION_MAX_N:  # zeros or ties change the null distribution: enumerate it
        method = stats.PermutationMethod(n_resamples=2**n)
    else:
        method = "asymptotic"  # normal approximation with scipy's tie correction
    result = stats.wilcoxon(d, zero_method="zsplit", method=method)
    name = method if isinstance(method, str) else "exact permutation (ties or zeros)"
    return SignedRank(n, n_zero, r_plus, r_minus, statistic, float(result.pvalue), name)


def median_ci(d: np.ndarray, confidence: float = 0.95, n_resamples: int = 9999,
              seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median difference (NaN below 3 values)."""
    d = np.asarray(d, dtype=float)
    if len(d) < 3 or np.all(d == d[0]):
        return (math.nan, math.nan) if len(d) < 3 else (float(d[0]), float(d[0]))
    res = stats.bootstrap((d,), np.median, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def holm(p: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries (no test) are left out of the family and stay NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, (m - i) * p[idx])  # adjusted p-values never decrease along the order
        out[idx] = min(1.0, running)
    return out


def bayesian_signed_rank(a: np.ndarray, b: np.ndarray, rope: float, seed: int = 0,
                         nsamples: int = 50_000) -> tuple[float, float, float]:
    """P(a better), P(practically equivalent), P(b better) from Benavoli's Bayesian signed-rank test
    (Dirichlet-process prior of strength 0.5 at zero; baycomp's implementation). A sample "votes" for
    the region with the largest posterior mass; the probabilities are the shares of votes."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if rope > 0:
        left, equivalent, right = baycomp.SignedRankTest.probs(a, b, rope=rope, nsamples=nsamples, random_state=seed)
    else:
        (left, right), equivalent = baycomp.SignedRankTest.probs(a, b, rope=0, nsamples=nsamples,
                                                                 random_state=seed), 0.0
    # baycomp's "left" is where b - a < -2 rope: a is better.
    return float(left), float(equivalent), float(right)


def paired_t_over_seeds(a: pd.Series, b: pd.Series) -> tuple[int, float, float, float, str]:
    """Paired t-test of one task's final runs, paired by seed: (n seeds, mean difference, t, p, note)."""
    seeds = sorted(set(a.index) & set(b.index))
    d = a.loc[seeds].to_numpy(float) - b.loc[seeds].to_numpy(float)
    if len(d) < 2:
        return len(d), float(d.mean()) if len(d) else math.nan, math.nan, math.nan, \
            f"{len(d)} common seed(s): a paired test needs at least 2"
    if np.all(d == d[0]):
        return len(d), float(d[0]), math.nan, math.nan, "the difference is the same for every seed: t undefined"
    res = stats.ttest_rel(a.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float))
    return len(d), float(d.mean()), float(res.statistic), float(res.pvalue), ""


# ------------------------------------------------------------------------------ many arms: Friedman
def average_ranks(scores: pd.DataFrame) -> pd.Series:
    """Average rank of each arm (columns) over tasks (rows); rank 1 = highest score, ties share ranks."""
    return scores.rank(axis=1, ascending=False, method="average").mean(axis=0)


@dataclass(frozen=True)
class Friedman:
    n: int  # tasks
    k: int  # arms
    avg_ranks: pd.Series
    chi2: float  # Friedman's statistic as Demšar (2006) writes it (no tie correction)
    chi2_p: float
    chi2_tie_corrected: float  # scipy's friedmanchisquare
    chi2_tie_corrected_p: float
    f: float  # Iman-Davenport's F, less conservative than chi2: the verdict
    f_df: tuple[int, int]
    f_p: float
    permutation_p: float  # p of chi2 over within-task permutations of the arms: right for any N and k
    permutation_exact: bool
    q_alpha: float  # Nemenyi's critical value
    cd: float  # Nemenyi's critical difference of average ranks
    alpha: float


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi's q_alpha: the studentized range quantile (k groups, infinite df) over sqrt(2)."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


def friedman_chi2(ranks: np.ndarray) -> float:
    """Friedman's statistic from a tasks × arms matrix of within-task ranks (Demšar 2006, no tie correction)."""
    n, k = ranks.shape
    return 12 * n / (k * (k + 1)) * (float(np.sum(ranks.mean(axis=0) ** 2)) - k * (k + 1) ** 2 / 4)


PERMUTATIONS = 9999  # random within-task permutations when there are more than EXACT_PERMUTATIONS orders
EXACT_PERMUTATIONS = 50_000


def friedman(scores: pd.DataFrame, alpha: float = 0.05, seed: int = 0) -> Friedman:
    """Friedman test on a complete block: rows = tasks, columns = arms (>= 3 arms, >= 2 tasks)."""
    n, k = scores.shape
    if k < 3 or n < 2:
        raise ValueError(f"the Friedman test needs at least 3 arms and 2 tasks, got {k} arms on {n} tasks")
    ranks = average_ranks(scores)
    chi2 = friedman_chi2(scores.rank(axis=1, ascending=False).to_numpy())
    # The chi2 and F approximations are poor for few tasks; the permutation distribution is not.
    orders = math.factorial(k) ** n
    exact = orders <= EXACT_PERMUTATIONS
    within_task = stats.permutation_test(
        [scores[c].to_numpy(float) for c in scores.columns],
        lambda *arms: friedman_chi2(stats.rankdata(-np.column_stack(arms), axis=1)),
        permutation_type="samples", n_resamples=orders if exact else PERMUTATIONS, alternative="greater",
        vectorized=False,
        rng=np.random.default_rng(seed))
    corrected = stats.friedmanchisquare(*(scores[c].to_numpy(float) for c in scores.columns))
    df1, df2 = k - 1, (k - 1) * (n - 1)
    denominator = n * (k - 1) - chi2
    f = (n - 1) * chi2 / denominator if denominator > 0 else math.inf
    return Friedman(n, k, ranks.sort_values(), chi2, float(stats.chi2.sf(chi2, k - 1)),
                    float(corrected.statistic), float(corrected.pvalue),
                    f, (df1, df2), float(stats.f.sf(f, df1, df2)) if math.isfinite(f) else 0.0,
                    float(within_task.pvalue), exact, nemenyi_q(k, alpha), critical_difference(k, n, alpha), alpha)


def nemenyi_pairs(result: Friedman) -> pd.DataFrame:
    """Every pair of arms: rank difference, Nemenyi p and whether it reaches the critical difference
    (Demšar: "significantly different if the average ranks differ by at least the critical difference")."""
    se = math.sqrt(result.k * (result.k + 1) / (6 * result.n))
    rows = []
    arms = list(result.avg_ranks.index)
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            diff = abs(result.avg_ranks[a] - result.avg_ranks[b])
            p = float(stats.studentized_range.sf(diff / se * math.sqrt(2), result.k, np.inf))
            rows.append({"arm_a": a, "arm_b": b, "rank_a": result.avg_ranks[a], "rank_b": result.avg_ranks[b],
                         "rank_difference": diff, "nemenyi_p": min(1.0, p), "significant": diff >= result.cd})
    return pd.DataFrame(rows)
