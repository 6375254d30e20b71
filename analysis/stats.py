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
Beside the median's bootstrap interval over tasks: a two-stage cluster bootstrap over task families
(`cluster_median_ci`) and the Hodges-Lehmann estimate with the interval that inverts the signed-rank test
(`hodges_lehmann`). Within one task: a paired bootstrap over test sequences (`paired_bootstrap_mcc`).
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


def cluster_median_ci(d: np.ndarray, families: list[str] | np.ndarray, confidence: float = 0.95,
                      n_resamples: int = 9999, seed: int = 0) -> tuple[float, float]:
    """Two-stage cluster bootstrap percentile interval of the median difference (Davison & Hinkley 1997,
    "Bootstrap Methods and their Application", section 3.8, strategy of resampling clusters and then units
    within them; Field & Welsh 2007, "Bootstrapping clustered data", JRSS B 69). Each resample draws as many families as there are, with
    replacement, then as many tasks as the drawn family has, with replacement, from that family; the
    statistic is the median of the pooled draw, as in `median_ci`. Tasks of one family (all EMP histone
    marks, say) are not independent evidence, so the interval widens when the families disagree.

    With a single family the first stage always draws that family, so the procedure is the task bootstrap:
    the interval is `median_ci`'s (same resamples, same seed), and it cannot show between-family variation.
    NaN below 3 tasks, as `median_ci`."""
    d = np.asarray(d, dtype=float)
    families = np.asarray(families, dtype=object)
    if len(d) != len(families):
        raise ValueError(f"{len(d)} differences but {len(families)} family labels")
    groups = [d[families == f] for f in dict.fromkeys(families)]  # first-seen order: reproducible
    if len(groups) <= 1 or len(d) < 3 or np.all(d == d[0]):
        return median_ci(d, confidence, n_resamples, seed)
    rng = np.random.default_rng(seed)
    medians = np.empty(n_resamples)
    for r in range(n_resamples):
        drawn = rng.integers(0, len(groups), len(groups))
        medians[r] = np.median(np.concatenate([rng.choice(groups[g], len(groups[g])) for g in drawn]))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def signed_rank_null_counts(n: int) -> np.ndarray:
    """counts[t] = number of the 2**n sign assignments of the ranks 1..n whose positive rank sum is t (the
    exact null distribution of Wilcoxon's T+ without ties): the coefficients of prod_i (1 + x**i)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1
    for i in range(1, n + 1):
        counts[i:] = counts[i:] + counts[:-i].copy()
    return counts


HL_EXACT_MAX_N = 50  # as `signed_rank`: exact critical values up to here, the normal approximation above


def hodges_lehmann(d: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float, str]:
    """Hodges-Lehmann estimate of the location of the paired differences with the confidence interval that
    inverts the two-sided Wilcoxon signed-rank test (Hodges & Lehmann 1963; Hollander & Wolfe 1999,
    "Nonparametric Statistical Methods", 2nd ed., section 3.2 and 3.3). Returns (estimate, low, high, method).

    The M = n(n+1)/2 Walsh averages (d_i + d_j)/2, i <= j, sorted as W(1) <= ... <= W(M): the estimate is
    their median, the interval [W(C), W(M + 1 - C)], where C is the largest integer with
    P(T+ <= C - 1) <= alpha/2 under the null (exact for n <= 50; above, H&W's normal approximation
    C = n(n+1)/4 - z_{alpha/2} sqrt(n(n+1)(2n+1)/24), rounded down). The coverage is at least `confidence`
    (exactly so without ties). Where no such C >= 1 exists (n < 6 at 95%), the bounds are NaN: no interval
    at this level exists, as no p below alpha does."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan, "none"
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2)
    estimate = float(np.median(walsh))
    m, alpha = len(walsh), 1 - confidence
    if n <= HL_EXACT_MAX_N:
        cdf = np.cumsum(signed_rank_null_counts(n)) / 2.0**n  # cdf[t] = P(T+ <= t)
        c = int(np.sum(cdf <= alpha / 2))  # P(T+ <= c - 1) <= alpha/2 for exactly these c - 1 = 0..c-1
        method = "exact"
    else:
        z = stats.norm.ppf(1 - alpha / 2)
        c = math.floor(n * (n + 1) / 4 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24))
        method = "normal approximation"
    if c < 1:
        return estimate, math.nan, math.nan, f"{n} differences are too few for a {confidence:.0%} interval"
    return estimate, float(walsh[c - 1]), float(walsh[m - c]), method


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


def mcc_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Matthews correlation of a stack of confusion matrices [..., true class, predicted class], by the
    formula sklearn.metrics.matthews_corrcoef uses (Gorodkin 2004's multiclass R_K; 0 where it is 0/0).
    It exists because the bootstrap needs thousands of MCCs per task: one bincount per chunk of resamples
    instead of one sklearn call per resample; tests/test_analysis.py checks it against harness.metrics (sklearn)."""
    c = np.asarray(confusion, dtype=float)
    t_sum, p_sum = c.sum(axis=-1), c.sum(axis=-2)
    n = t_sum.sum(axis=-1)
    correct = np.trace(c, axis1=-2, axis2=-1)
    cov_tp = correct * n - np.sum(t_sum * p_sum, axis=-1)
    cov_pp = n**2 - np.sum(p_sum * p_sum, axis=-1)
    cov_tt = n**2 - np.sum(t_sum * t_sum, axis=-1)
    denominator = np.sqrt(cov_tt * cov_pp)
    return np.divide(cov_tp, denominator, out=np.zeros_like(cov_tp), where=denominator > 0)


@dataclass(frozen=True)
class PairedBootstrap:
    n: int  # test sequences
    mcc_a: float
    mcc_b: float
    difference: float  # mcc_a - mcc_b on the whole test set
    ci_low: float
    ci_high: float
    p: float


def paired_bootstrap_mcc(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, confidence: float = 0.95,
                         n_resamples: int = 9999, seed: int = 0, chunk: int = 500) -> PairedBootstrap:
    """Paired bootstrap over test sequences of the MCC difference of two classifiers scored on the same
    test set (Efron & Tibshirani 1993, ch. 15-16; as used for comparing systems on one test set by
    Koehn 2004, "Statistical significance tests for machine translation evaluation", EMNLP). Each resample
    draws n sequences with replacement and scores both arms on that same draw, so the sequences' difficulty
    cancels. CI: percentiles of the resampled differences. p, two-sided: the share of resampled
    differences on the other side of 0 from the observed one (0 counted as the other side), doubled, with
    one added to count and total so it is never 0 (as for Monte Carlo tests, Davison & Hinkley 1997, ch. 4),
    at most 1.
    The observed MCCs come from harness.metrics (sklearn)."""
    from harness.metrics import classification_metrics

    labels = np.asarray(labels, dtype=int)
    probs_a, probs_b = np.asarray(probs_a, dtype=float), np.asarray(probs_b, dtype=float)
    k = probs_a.shape[1]
    mcc_a, mcc_b = (classification_metrics(labels, p)["mcc"] for p in (probs_a, probs_b))
    observed = mcc_a - mcc_b
    # A sequence's cell in each arm's confusion matrix; a resample's matrices are bincounts of its draw.
    cell_a, cell_b = labels * k + probs_a.argmax(axis=1), labels * k + probs_b.argmax(axis=1)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draw = rng.integers(0, len(labels), (size, len(labels)))
        offset = np.arange(size)[:, None] * k * k  # one block of k*k cells per resample
        conf = [np.bincount((offset + cell[draw]).ravel(), minlength=size * k * k).reshape(size, k, k)
                for cell in (cell_a, cell_b)]
        diffs[start:start + size] = mcc_from_confusion(conf[0]) - mcc_from_confusion(conf[1])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    other_side = np.sum(diffs <= 0) if observed > 0 else np.sum(diffs >= 0) if observed < 0 else n_resamples
    p = min(1.0, 2 * (int(other_side) + 1) / (n_resamples + 1))
    return PairedBootstrap(len(labels), mcc_a, mcc_b, float(observed), float(low), float(high), p)


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
