"""The analysis: every statistic against published values (Demšar 2006) or an independent computation,
the default contrasts, and a report built from a harness experiment alone, exclusions stated."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import baycomp
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from scipy import stats as sps

from analysis import stats
from analysis.cli import main as analyze
from analysis.collect import Results, cell_table
from analysis.contrasts import Contrast, default_contrasts, evaluate, per_task_tests, sentence
from analysis.report import family_table
from conftest import REPO, TINY_STUDY
from harness.cli import main as harness
from harness.schema import Metric

# Demšar (2006), JMLR 7, Tables 2 and 6: AUC of C4.5 with and without tuned m (minimal examples in a
# leaf) and cf (confidence interval for pruning) on 14 UCI data sets. The published table rounds to 3
# decimals; voting's C4.5+cf is 0.976 here so that its published rank (2, not a tie) is reproduced.
C45 = [.763, .599, .954, .628, .882, .936, .661, .583, .775, 1.000, .940, .619, .972, .957]
C45_M = [.768, .591, .971, .661, .888, .931, .668, .583, .838, 1.000, .962, .666, .981, .978]
C45_CF = [.771, .590, .968, .654, .886, .916, .609, .563, .866, 1.000, .965, .614, .976, .946]
C45_M_CF = [.798, .569, .967, .657, .898, .931, .685, .625, .875, 1.000, .962, .669, .975, .970]
DEMSAR = pd.DataFrame({"C4.5": C45, "C4.5+m": C45_M, "C4.5+cf": C45_CF, "C4.5+m+cf": C45_M_CF})


# ------------------------------------------------------------------------------------ two arms
def exact_signed_rank_p(d: np.ndarray) -> float:
    """Independent of scipy: enumerate every sign assignment of the (zsplit) ranks."""
    ranks = sps.rankdata(np.abs(d))
    nonzero = ranks[d != 0]
    half_zero = ranks[d == 0].sum() / 2
    observed = min(nonzero[d[d != 0] > 0].sum(), nonzero[d[d != 0] < 0].sum()) + half_zero
    total = ranks.sum()
    count = 0
    signs = list(itertools.product((0, 1), repeat=len(nonzero)))
    for s in signs:
        r_plus = float(np.dot(s, nonzero)) + half_zero
        count += min(r_plus, total - r_plus) <= observed + 1e-9
    return count / len(signs)


def test_wilcoxon_reproduces_demsar_table_2():
    d = np.round(np.array(C45_M) - np.array(C45), 3)
    result = stats.signed_rank(d)
    # Published: R+ = 93, R- = 12 (the two zero differences split), T = 12 < 21, the critical value for
    # N = 14 at alpha 0.05: C4.5+m is significantly better.
    assert (result.r_plus, result.r_minus, result.statistic, result.n_zero) == (93.0, 12.0, 12.0, 2)
    assert result.p == pytest.approx(exact_signed_rank_p(d)) and result.p < 0.05
    assert "permutation" in result.method  # zeros and ties: the plain exact distribution would be wrong


def test_wilcoxon_without_ties_is_scipys_exact_test():
    d = np.array([0.031, -0.012, 0.044, 0.005, 0.027, 0.019, -0.003, 0.038])
    result = stats.signed_rank(d)
    assert result.method == "exact"
    assert result.p == pytest.approx(sps.wilcoxon(d, method="exact").pvalue)
    assert result.p == pytest.approx(exact_signed_rank_p(d))
    assert stats.signed_rank(np.full(6, 0.02) + np.arange(6) * 1e-3).p == pytest.approx(2 / 2**6)


def test_wilcoxon_refuses_a_meaningless_p():
    result = stats.signed_rank(np.array([0.01, 0.02, 0.03, 0.04, 0.05]))
    assert math.isnan(result.p)
    assert "5 tasks cannot reach p < 0.05" in result.note and "at least 6" in result.note
    assert stats.tasks_needed(0.05) == 6 and stats.tasks_needed(0.01) == 8
    assert math.isnan(stats.signed_rank(np.array([0.1])).p)


def test_holm_against_a_worked_example():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    with_gap = stats.holm([0.01, math.nan, 0.04])
    assert math.isnan(with_gap[1]) and with_gap[0] == pytest.approx(0.02) and with_gap[2] == pytest.approx(0.04)
    assert stats.holm([0.6, 0.7]).max() == 1.0


def test_median_interval_brackets_the_median():
    d = np.array([0.01, 0.03, -0.02, 0.05, 0.02, 0.04, 0.00, 0.06, 0.01])
    lo, hi = stats.median_ci(d)
    assert lo <= np.median(d) <= hi and d.min() <= lo < hi <= d.max()
    assert all(math.isnan(x) for x in stats.median_ci(d[:2]))
    assert stats.median_ci(np.full(5, 0.02)) == (0.02, 0.02)


def test_bayesian_signed_rank_is_baycomps_with_a_stated_orientation():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.4, 0.8, 12)
    a = b + 0.05 + rng.normal(0, 0.01, 12)
    p_a, p_equal, p_b = stats.bayesian_signed_rank(a, b, rope=0.01)
    assert (p_a, p_equal, p_b) == pytest.approx(baycomp.SignedRankTest.probs(a, b, rope=0.01, random_state=0))
    assert p_a > 0.95 and p_a + p_equal + p_b == pytest.approx(1)
    assert stats.bayesian_signed_rank(b, a, rope=0.01)[2] > 0.95  # swapped arms, swapped answer
    assert stats.bayesian_signed_rank(b + 0.001, b, rope=0.01)[1] > 0.9  # within the ROPE: equivalent


def test_hodges_lehmann_is_the_median_of_walsh_averages_and_inverts_scipys_wilcoxon():
    rng = np.random.default_rng(3)
    d = np.round(rng.normal(0.02, 0.03, 12), 6)  # no ties: scipy's exact test applies at every shift
    estimate, low, high, method = stats.hodges_lehmann(d)
    walsh = np.sort([(x + y) / 2 for x, y in itertools.combinations_with_replacement(d, 2)])  # brute force
    assert len(walsh) == 12 * 13 // 2 and estimate == pytest.approx(np.median(walsh)) and method == "exact"
    # The interval is every shift theta the two-sided exact test does not reject at 0.05: between two
    # consecutive Walsh averages the test of d - theta has no zeros and no ties, so scipy's exact p applies.
    mids = (walsh[:-1] + walsh[1:]) / 2
    kept = [m for m in mids if sps.wilcoxon(d - m, method="exact").pvalue > 0.05]
    assert low == pytest.approx(walsh[np.searchsorted(walsh, min(kept)) - 1])
    assert high == pytest.approx(walsh[np.searchsorted(walsh, max(kept))])
    assert all(low < m < high for m in kept) and len(kept) == sum(low < m < high for m in mids)
    # Shifting the data shifts the estimate and the interval (negative control: nothing else moves).
    shifted = stats.hodges_lehmann(d + 1.0)
    assert shifted[:3] == pytest.approx((estimate + 1, low + 1, high + 1))


def test_hodges_lehmann_critical_values_and_the_normal_approximation():
    # The exact null distribution of T+ against a brute-force enumeration of the sign assignments (n = 10).
    n = 10
    sums = [sum(r for r, s in zip(range(1, n + 1), signs) if s) for signs in itertools.product((0, 1), repeat=n)]
    np.testing.assert_array_equal(stats.signed_rank_null_counts(n), np.bincount(sums))
    # Too few differences for a 95% interval (as no p below 0.05): the bounds are NaN, the estimate is not.
    estimate, low, high, _ = stats.hodges_lehmann(np.array([0.01, 0.03, 0.02, 0.05, 0.04]))
    assert estimate == pytest.approx(0.03) and math.isnan(low) and math.isnan(high)
    # Above 50 differences: Hollander & Wolfe's normal approximation; the shifts inside the interval are
    # those scipy's normal-approximation test (no continuity correction) does not reject, give or take the
    # rounding of C to an integer at each end.
    rng = np.random.default_rng(4)
    d = rng.normal(0.01, 0.02, 60)
    estimate, low, high, method = stats.hodges_lehmann(d)
    assert method == "normal approximation"
    walsh = np.sort([(x + y) / 2 for x, y in itertools.combinations_with_replacement(d, 2)])
    mids = (walsh[:-1] + walsh[1:]) / 2
    kept = [i for i, m in enumerate(mids) if sps.wilcoxon(d - m, method="approx", correction=False).pvalue > 0.05]
    # A kept shift between W(i) and W(i+1) (0-based) puts W(i) in the interval as its lower end, W(i+1) as its upper.
    assert abs(np.searchsorted(walsh, low) - min(kept)) <= 1
    assert abs(np.searchsorted(walsh, high) - (max(kept) + 1)) <= 1


def test_cluster_bootstrap_resamples_families_then_tasks():
    # Six families of two tasks; tasks of a family agree. The pooled median of a two-stage draw is then the
    # mean of the 3rd and 4th smallest of six family values drawn with replacement: enumerate all 6**6 draws.
    values = np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    d = np.repeat(values, 2)
    families = np.repeat([f"f{i}" for i in range(6)], 2)
    draws = np.sort(np.array(list(itertools.product(values, repeat=6))), axis=1)
    exact = (draws[:, 2] + draws[:, 3]) / 2
    low, high = stats.cluster_median_ci(d, families, seed=1)
    assert np.quantile(exact, 0.02) <= low <= np.quantile(exact, 0.03)
    assert np.quantile(exact, 0.97) <= high <= np.quantile(exact, 0.98)
    # Tasks that come in agreeing pairs are less evidence than 12 independent tasks: a wider interval.
    task_low, task_high = stats.median_ci(d, seed=1)
    assert high - low > task_high - task_low
    # Negative control: one family is the task bootstrap, with the same seed the same interval.
    assert stats.cluster_median_ci(d, ["EMP"] * 12, seed=1) == stats.median_ci(d, seed=1)
    assert all(math.isnan(x) for x in stats.cluster_median_ci(d[:2], ["a", "b"]))


def test_mcc_from_confusion_is_sklearns():
    from sklearn.metrics import confusion_matrix

    from harness.metrics import classification_metrics

    rng = np.random.default_rng(5)
    for k in (2, 3, 5):
        labels = rng.integers(0, k, 300)
        probs = rng.dirichlet(np.ones(k), 300) + 0.5 * np.eye(k)[labels]
        conf = confusion_matrix(labels, probs.argmax(1), labels=range(k))
        assert stats.mcc_from_confusion(conf) == pytest.approx(classification_metrics(labels, probs)["mcc"])
    constant = np.array([[5, 0], [3, 0]])  # one predicted class: sklearn's MCC is 0, not NaN
    assert stats.mcc_from_confusion(np.stack([constant, constant])).tolist() == [0.0, 0.0]


def test_paired_bootstrap_scores_both_arms_on_the_same_draw():
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 150)
    good = np.eye(2)[np.where(rng.random(150) < 0.85, labels, 1 - labels)] * 0.8 + 0.1
    fair = np.eye(2)[np.where(rng.random(150) < 0.7, labels, 1 - labels)] * 0.8 + 0.1
    result = stats.paired_bootstrap_mcc(labels, good, fair, n_resamples=400, seed=2, chunk=128)
    assert result.difference == pytest.approx(matthews_corrcoef(labels, good.argmax(1))
                                              - matthews_corrcoef(labels, fair.argmax(1)))
    # Independently: the same 400 draws of sequences (chunks of 128 from one generator), each arm scored by
    # sklearn on the same draw.
    generator, all_diffs = np.random.default_rng(2), []
    for size in (128, 128, 128, 16):
        for i in generator.integers(0, 150, (size, 150)):
            all_diffs.append(matthews_corrcoef(labels[i], good[i].argmax(1))
                             - matthews_corrcoef(labels[i], fair[i].argmax(1)))
    all_diffs = np.array(all_diffs)
    assert (result.ci_low, result.ci_high) == pytest.approx(tuple(np.percentile(all_diffs, [2.5, 97.5])))
    assert result.p == pytest.approx(min(1.0, 2 * (np.sum(all_diffs <= 0) + 1) / 401))
    assert result.p < 0.05 and result.ci_low > 0
    # Negative control: an arm against itself differs by nothing, on every draw.
    same = stats.paired_bootstrap_mcc(labels, fair, fair, n_resamples=200)
    assert (same.difference, same.ci_low, same.ci_high, same.p) == (0.0, 0.0, 0.0, 1.0)


# ------------------------------------------------------------------------------------ many arms
def test_friedman_and_nemenyi_reproduce_demsar_section_3_2_4():
    result = stats.friedman(DEMSAR)
    assert result.avg_ranks.round(3).to_dict() == {"C4.5+m+cf": 1.964, "C4.5+m": 2.0, "C4.5+cf": 2.893, "C4.5": 3.143}
    assert round(result.chi2, 2) == 9.28 and round(result.f, 2) == 3.69 and result.f_df == (3, 39)
    assert round(result.q_alpha, 3) == 2.569 and round(result.cd, 2) == 1.25
    scipy_result = sps.friedmanchisquare(*(DEMSAR[c] for c in DEMSAR))
    assert (result.chi2_tie_corrected, result.chi2_tie_corrected_p) == pytest.approx(tuple(scipy_result))
    assert result.f_p == pytest.approx(sps.f.sf(result.f, 3, 39)) and result.f_p < 0.05
    assert 0.005 < result.permutation_p < 0.02 and not result.permutation_exact  # ~0.011, between chi2 and F


def test_friedman_permutation_p_is_exact_for_few_tasks():
    perfect = pd.DataFrame({"a": [0.9, 0.8], "b": [0.7, 0.6], "c": [0.5, 0.4], "d": [0.3, 0.2]})
    result = stats.friedman(perfect)
    # Every task ranks the arms alike: 1 of the 4! orders of the second task matches the first.
    assert result.permutation_exact and result.permutation_p == pytest.approx(1 / 24)
    assert math.isinf(result.f)  # the F approximation breaks down here; the permutation p does not
    # Demšar: at alpha 0.05 (CD 1.25) no pair differs; at 0.10 (CD 1.12) C4.5 is worse than C4.5+m and C4.5+m+cf.
    assert not stats.nemenyi_pairs(result)["significant"].any()
    loose = stats.friedman(DEMSAR, alpha=0.10)
    assert round(loose.cd, 2) == 1.12
    pairs = stats.nemenyi_pairs(loose)
    assert {frozenset(p) for p in pairs.loc[pairs["significant"], ["arm_a", "arm_b"]].itertuples(index=False)} == \
        {frozenset({"C4.5", "C4.5+m"}), frozenset({"C4.5", "C4.5+m+cf"})}


def test_nemenyi_critical_values_match_the_published_table():
    published = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]  # Demšar Table 5(a), k = 2..10
    # The printed table is rounded to 3 decimals (2.343 for 2.3437): agree to within its last digit.
    assert [stats.nemenyi_q(k) for k in range(2, 11)] == pytest.approx(published, abs=1e-3)
    assert stats.nemenyi_q(4, alpha=0.10) == pytest.approx(2.291, abs=1e-3)


def test_friedman_needs_three_arms():
    with pytest.raises(ValueError, match="at least 3 arms and 2 tasks"):
        stats.friedman(DEMSAR[["C4.5", "C4.5+m"]])


# ------------------------------------------------------------------------------------ contrasts
def test_default_contrasts_ask_the_study_questions():
    sha = "1a2b3c4d5e6f7a8b"  # a checkpoint's weights: the init factor of the variants fine-tuned from it
    arms = pd.DataFrame([
        ("dnabert2_pretrained", "transformer", "dnabert2", "bpe", sha),
        ("dnabert2_scratch", "transformer", "dnabert2", "bpe", "scratch"),
        ("dnabert2_scratch", "transformer", "dnabert2", "bpe", "scratch"),
        ("dnabert2_char_scratch", "transformer", "dnabert2", "char", "scratch"),
        ("convnova_char", "cnn", "convnova", "char", "scratch"),
        ("convnova_bpe", "cnn", "convnova", "bpe", "scratch"),
        ("unet_char", "cnn", "unet", "char", "scratch"),
        ("kmer_logreg", "kmer", "logistic_regression", "kmer", "scratch"),
        ("convnova_char", "cnn", "convnova", "char", "9f8e7d6c5b4a3210"),
    ], columns=["arm", "family", "model", "tokenizer", "init"],
        index=["dnabert2_pretrained", "dnabert2_scratch", "dnabert2_scratch~1a2b3c4d", "dnabert2_char_scratch",
               "convnova_char", "convnova_bpe", "unet_char", "kmer_logreg", "convnova_char@9f8e7d6c"])
    found = {(c.effect, c.a, c.b) for c in default_contrasts(arms)}
    assert found == {
        # pretraining: a pretrained variant against every scratch variant of its model and tokenizer kind; the
        # factor check then keeps only the twin (same architecture and tokenizer) where the other differs
        ("pretraining", "dnabert2_pretrained", "dnabert2_scratch"),
        ("pretraining", "dnabert2_pretrained", "dnabert2_scratch~1a2b3c4d"),
        ("pretraining", "convnova_char@9f8e7d6c", "convnova_char"),
        ("bpe", "dnabert2_scratch", "dnabert2_char_scratch"),
        ("bpe", "dnabert2_scratch~1a2b3c4d", "dnabert2_char_scratch"),
        ("bpe", "convnova_bpe", "convnova_char"),  # unet has no BPE arm here: no U-Net BPE contrast
        ("architecture", "dnabert2_scratch", "convnova_bpe"),
        ("architecture", "dnabert2_scratch~1a2b3c4d", "convnova_bpe"),
        ("architecture", "dnabert2_char_scratch", "convnova_char"),
        ("architecture", "dnabert2_char_scratch", "unet_char"),
        # question 1 as posed: the pretrained transformer against every CNN trained from scratch
        ("pretrained_vs_cnn", "dnabert2_pretrained", "convnova_char"),
        ("pretrained_vs_cnn", "dnabert2_pretrained", "convnova_bpe"),
        ("pretrained_vs_cnn", "dnabert2_pretrained", "unet_char"),
    }


def predictions_frame(labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"row": np.arange(len(labels)), "label": labels, "prediction": probs.argmax(1)})
    return frame.join(pd.DataFrame(probs, columns=[f"prob_{c}" for c in range(probs.shape[1])]))


def synthetic_results(n_test: int = 120, missing: str = "") -> Results:
    """Arms A (two seeds that differ) and K (two identical seeds, a deterministic solver) on tasks EMP/H3,
    EMP/H4 and prom/core, with test predictions; `missing` is a run id whose predictions were not logged."""
    from conftest import random_probs

    runs, predictions = [], {}
    for t, task in enumerate(("EMP/H3", "EMP/H4", "prom/core")):
        labels, _ = random_probs(n_test, 2, seed=t)
        for arm in ("A", "K"):
            for seed in (0, 1):
                noise = 0.6 if arm == "K" else 0.4
                own = np.random.default_rng(100 * t + (0 if arm == "K" else 10 + seed))
                right = own.random(n_test) > noise / 2
                probs = np.eye(2)[np.where(right, labels, 1 - labels)] * 0.6 + 0.2 + own.normal(0, 0.01, (n_test, 2))
                run_id = f"{arm}-{task}-{seed}"
                mcc = harness_mcc(labels, probs)
                runs.append({"arm": arm, "task": task, "seed": seed, "test_mcc": mcc, "test_f1": mcc,
                             "test_accuracy": mcc, "test_auroc": mcc, "train_seconds": 1.0, "flops": 1.0,
                             Metric.PARAMS: 10, "pretrain_seconds": math.nan, "pretrain_flops": math.nan,
                             "pretrain_gpu_hours": math.nan, "run_id": run_id})
                if run_id != missing:
                    predictions[run_id] = predictions_frame(labels, probs)
    runs = pd.DataFrame(runs)
    cells = cell_table(runs, "test_mcc", pd.DataFrame(columns=["arm", "task", "trials_run", "tuning_seconds",
                                                               "tuning_flops"]), predictions)
    cells["device"] = "cpu"
    return Results("e", "sqlite://", "test_mcc", runs, cells, pd.DataFrame(index=["A", "K"]),
                   predictions=predictions)


def harness_mcc(labels: np.ndarray, probs: np.ndarray) -> float:
    from harness.metrics import classification_metrics

    return classification_metrics(labels, probs)["mcc"]


def test_identical_replicates_count_as_one_seed():
    results = synthetic_results()
    cells = results.cells.set_index(["arm", "task"])
    k, a = cells.loc[("K", "EMP/H3")], cells.loc[("A", "EMP/H3")]
    assert (k["n_runs"], k["n_seeds"], bool(k["identical_replicates"])) == (2, 1, True) and math.isnan(k["score_sd"])
    # Negative control: seeds that differ are two seeds, with their sample standard deviation.
    mine = results.runs[(results.runs["arm"] == "A") & (results.runs["task"] == "EMP/H3")]["test_mcc"]
    assert (a["n_seeds"], bool(a["identical_replicates"])) == (2, False)
    assert a["score_sd"] == pytest.approx(np.std(mine, ddof=1)) and a["score_sd"] > 0
    assert results.identical_replicate_arms() == ["K"]
    # Negative control: a model that collapsed to one class on both seeds has the same metrics on both (MCC 0),
    # but not the same probabilities: two seeds, not a deterministic solver.
    runs = results.runs[results.runs["task"] == "EMP/H3"].copy()
    runs[["test_mcc", "test_f1", "test_accuracy", "test_auroc"]] = 0.0
    tuning = pd.DataFrame(columns=["arm", "task", "trials_run", "tuning_seconds", "tuning_flops"])
    collapsed = cell_table(runs, "test_mcc", tuning, results.predictions).set_index("arm")
    assert not collapsed.loc["A", "identical_replicates"] and collapsed.loc["A", "n_seeds"] == 2
    assert collapsed.loc["K", "identical_replicates"]  # identical probabilities too
    assert cell_table(runs, "test_mcc", tuning).set_index("arm").loc["A", "n_seeds"] == 1  # metrics alone: fooled


def test_per_task_tests_compare_seed_averaged_predictions_on_the_same_sequences():
    results = synthetic_results(missing="K-prom/core-0")
    frame = per_task_tests(Contrast("user", "A", "K"), results, ["EMP/H3", "prom/core"], 0.05, n_resamples=500)
    row = frame.set_index("task").loc["EMP/H3"]
    p = results.predictions
    averaged = (p["A-EMP/H3-0"].filter(like="prob_").to_numpy() + p["A-EMP/H3-1"].filter(like="prob_").to_numpy()) / 2
    labels = p["A-EMP/H3-0"]["label"].to_numpy()
    expected = harness_mcc(labels, averaged) - harness_mcc(labels, p["K-EMP/H3-0"].filter(like="prob_").to_numpy())
    assert row["mcc_difference"] == pytest.approx(expected) and row["ci_low"] <= expected <= row["ci_high"]
    assert (row["n_test"], row["n_seeds_a"], row["n_seeds_b"]) == (120, 2, 1)  # K's identical seeds: one
    reference = stats.paired_bootstrap_mcc(labels, averaged, p["K-EMP/H3-0"].filter(like="prob_").to_numpy(),
                                           n_resamples=500)
    assert row["p"] == pytest.approx(reference.p)
    # One of K's seeds lacks predictions on prom/core: the other still stands for the (identical) seeds.
    assert frame.set_index("task").loc["prom/core", "n_seeds_b"] == 1
    # Negative control: an arm whose seeds logged no predictions gets no test, and says why.
    for run_id in [r for r in p if r.startswith("K-EMP/H4")]:
        del p[run_id]
    none = per_task_tests(Contrast("user", "A", "K"), results, ["EMP/H4"], 0.05, n_resamples=100).iloc[0]
    assert math.isnan(none["p"]) and none["note"] == "no K seed logged test predictions"
    assert list(frame.columns[:12]) == ["contrast", "task", "n_test", "n_seeds_a", "n_seeds_b", "mcc_a", "mcc_b",
                                        "mcc_difference", "ci_low", "ci_high", "p", "note"]


def test_families_from_task_names_or_the_study():
    results = synthetic_results()
    assert [results.family(t) for t in ("EMP/H3", "prom/core", "virus/covid")] == ["EMP", "prom", "virus"]
    table = family_table(results).set_index(["family", "arm"])
    cells = results.cells.set_index(["arm", "task"])["score_mean"]
    assert table.loc[("EMP", "A"), "n_tasks"] == 2
    assert table.loc[("EMP", "A"), "mean"] == pytest.approx(np.mean([cells[("A", "EMP/H3")], cells[("A", "EMP/H4")]]))
    results.family_overrides = {"prom/core": "EMP"}
    assert family_table(results).set_index(["family", "arm"]).loc[("EMP", "K"), "n_tasks"] == 3
    e = evaluate(Contrast("user", "A", "K"), results, 0.05, 0.01, n_resamples=200)
    assert e.row["n_families"] == 1
    assert (e.row["cluster_ci_low"], e.row["cluster_ci_high"]) == (e.row["ci_low"], e.row["ci_high"])
    hl = stats.hodges_lehmann(e.diffs.to_numpy())
    assert e.row["hl_estimate"] == pytest.approx(hl[0]) and math.isnan(e.row["hl_ci_low"])  # 3 tasks: no interval


def test_study_families_are_parsed_and_checked():
    from harness.errors import StudyError
    from harness.studies import parse_study

    raw = yaml.safe_load(TINY_STUDY)
    raw["analysis"] = {"families": {"toy/motif_binary": "synthetic"}}
    assert parse_study(raw, "s.yaml").families == {"toy/motif_binary": "synthetic"}
    raw["analysis"] = {"families": {"toy/motif_binary": 3}}
    with pytest.raises(StudyError, match="analysis.families must map task names to family names"):
        parse_study(raw, "s.yaml")
    assert parse_study(yaml.safe_load(TINY_STUDY), "s.yaml").families == {}


def test_the_sentence_says_when_families_and_tasks_disagree():
    row = {"effect": "user", "contrast": "x", "metric": "test_mcc", "a": "A", "b": "B", "n_tasks": 12, "wins": 10,
           "losses": 2, "median_difference": 0.02, "ci_low": 0.005, "ci_high": 0.04, "n_families": 3,
           "cluster_ci_low": -0.01, "cluster_ci_high": 0.05, "p_holm": 0.01, "p_a_better": math.nan,
           "flops_ratio": math.nan, "compute_ratio": math.nan}
    assert "3 task families as well, the interval [-0.010, +0.050] includes 0" in sentence(row, 0.05)
    # Negative control: both intervals exclude 0, nothing to add.
    assert "families" not in sentence({**row, "cluster_ci_low": 0.001}, 0.05)


# ------------------------------------------------------------------ a report from a harness experiment
ARMS_RUN = [("kmer_logreg", 2), ("unet_char", 2), ("unet_bpe", 2), ("dnabert2_scratch", 2)]
STUDY_WITH_CONTRASTS = TINY_STUDY.replace("name: tiny", "name: tiny_analysis") + """
analysis:
  contrasts:
    - {name: "k-mer vs U-Net", a: kmer_logreg, b: unet_char}
    - {a: convnova_char, b: unet_char}
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A small harness experiment: 4 arms on 2 tasks, a fifth on one task, one final run FAILED."""
    from conftest import tiny_gue

    root = tmp_path_factory.mktemp("analysis")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        data = tiny_gue.__wrapped__(root)
        study = root / "tiny_analysis.yaml"
        study.write_text(STUDY_WITH_CONTRASTS)
        both = "toy/motif_binary,toy/motif_multiclass"
        for arm, seeds in ARMS_RUN:
            assert harness(["run", "--arm", arm, "--study", str(study), "--data", str(data), "--tasks", both,
                            "--n-trials", "1", "--seeds", str(seeds)]) == 0
        assert harness(["run", "--arm", "dnabert2_char_scratch", "--study", str(study), "--data", str(data),
                        "--tasks", "toy/motif_binary", "--n-trials", "1", "--seeds", "2"]) == 0
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("tiny_analysis").experiment_id
        failed = client.search_runs([exp], "tags.stage = 'final' and tags.arm = 'unet_bpe' and "
                                    "tags.task = 'toy/motif_multiclass' and tags.seed = '1'")[0]
        client.set_terminated(failed.info.run_id, "FAILED")
    return root, uri, failed.info.run_id


@pytest.fixture
def at_experiment(experiment, monkeypatch):
    root, uri, failed = experiment
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return root, uri, failed


def final_means(uri: str) -> pd.DataFrame:
    """Per (arm, task) mean test MCC straight from MLflow, FINISHED final runs only."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_analysis").experiment_id
    runs = client.search_runs([exp], "tags.stage = 'final' and attributes.status = 'FINISHED'")
    frame = pd.DataFrame([(r.data.tags["arm"], r.data.tags["task"], r.data.metrics["test_mcc"]) for r in runs],
                         columns=["arm", "task", "mcc"])
    return frame.groupby(["arm", "task"])["mcc"].mean().unstack("task")


@pytest.mark.slow
def test_report_builds_from_the_mlflow_runs_alone(at_experiment):
    root, uri, failed = at_experiment
    assert analyze(["--experiment", "tiny_analysis", "--out", "report"]) == 0
    out = root / "report"
    assert {"report.md", "runs.csv", "cells.csv", "contrasts.csv", "per_task_tests.csv", "ranks.csv", "friedman.csv",
            "nemenyi.csv", "cost.csv", "exclusions.csv", "families.csv"} <= {p.name for p in out.iterdir()}

    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 * 2 * 4 + 2 - 1 and failed not in set(runs["run_id"])
    assert not runs.duplicated(["arm", "task", "seed"]).any()
    cells = pd.read_csv(out / "cells.csv").set_index(["arm", "task"])
    means = final_means(uri)
    for (arm, task), row in cells.iterrows():
        assert row["test_mcc_mean"] == pytest.approx(means.loc[arm, task])
    assert cells.loc[("unet_bpe", "toy/motif_multiclass"), "n_seeds"] == 1
    # The k-mer logistic regression ignores the seed: its two seeds are one (and the report says so).
    kmer = cells.loc["kmer_logreg"]
    assert kmer["identical_replicates"].all() and (kmer["n_seeds"] == 1).all() and (kmer["n_runs"] == 2).all()
    assert not cells.loc["unet_char", "identical_replicates"].any()
    assert (cells["tuning_seconds"] > 0).all() and (cells["trials_run"] == 1).all()

    contrasts = pd.read_csv(out / "contrasts.csv").set_index("contrast")
    assert set(contrasts.index[contrasts["kind"] == "named"]) == {
        "bpe: unet_bpe − unet_char", "bpe: dnabert2_scratch − dnabert2_char_scratch",
        "architecture: dnabert2_scratch − unet_bpe", "architecture: dnabert2_char_scratch − unet_char",
        "k-mer vs U-Net"}
    # Every other pair of the five arms is compared as exploratory, in a Holm family of its own.
    assert set(contrasts.index[contrasts["kind"] == "exploratory"]) == {
        "exploratory: dnabert2_char_scratch − kmer_logreg", "exploratory: dnabert2_char_scratch − unet_bpe",
        "exploratory: dnabert2_scratch − kmer_logreg", "exploratory: dnabert2_scratch − unet_char",
        "exploratory: kmer_logreg − unet_bpe"}
    unet = contrasts.loc["bpe: unet_bpe − unet_char"]
    d = means.loc["unet_bpe"] - means.loc["unet_char"]
    assert unet["n_tasks"] == 2 and unet["median_difference"] == pytest.approx(d.median())
    assert math.isnan(unet["p"]) and "cannot reach p < 0.05" in unet["note"]  # 2 tasks: no p printed
    assert unet["n_families"] == 1 and (unet["cluster_ci_low"], unet["cluster_ci_high"]) == \
        pytest.approx((unet["ci_low"], unet["ci_high"]), nan_ok=True)  # one family (toy): the task interval
    assert unet["hl_estimate"] == pytest.approx(d.mean()) and math.isnan(unet["hl_ci_low"])  # 2 tasks: mean, no CI
    families = pd.read_csv(out / "families.csv").set_index(["family", "arm"])
    assert families.loc[("toy", "unet_char"), "n_tasks"] == 2
    assert families.loc[("toy", "unet_char"), "mean"] == pytest.approx(means.loc["unet_char"].mean())

    # Per task: the two arms' seed-averaged predictions on the same test sequences, read back from MLflow.
    per_task = pd.read_csv(out / "per_task_tests.csv")
    assert "t" not in per_task and {"mcc_difference", "ci_low", "ci_high", "p", "p_holm"} <= set(per_task.columns)
    row = per_task[(per_task["contrast"] == "k-mer vs U-Net") & (per_task["task"] == "toy/motif_binary")].iloc[0]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_analysis").experiment_id

    def averaged(arm: str) -> pd.DataFrame:
        found = client.search_runs([exp], f"tags.stage = 'final' and tags.arm = '{arm}' and "
                                          "tags.task = 'toy/motif_binary' and attributes.status = 'FINISHED'")
        frames = [pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{r.info.run_id}/test_predictions.csv"))
                  for r in found]
        return sum(f.filter(like="prob_") for f in frames) / len(frames), frames[0]["label"].to_numpy()

    (kmer, labels), (unet_probs, _) = averaged("kmer_logreg"), averaged("unet_char")
    expected = harness_mcc(labels, kmer.to_numpy()) - harness_mcc(labels, unet_probs.to_numpy())
    assert row["mcc_difference"] == pytest.approx(expected) and 0 < row["p"] <= 1
    assert row["n_test"] == len(labels)

    one_task = contrasts.loc["bpe: dnabert2_scratch − dnabert2_char_scratch"]
    assert one_task["n_tasks"] == 1 and one_task["tasks_left_out"] == "toy/motif_multiclass (no dnabert2_char_scratch)"

    ranks = pd.read_csv(out / "ranks.csv").set_index("arm")["average_rank"]
    block = means.drop(index="dnabert2_char_scratch")[["toy/motif_binary", "toy/motif_multiclass"]]
    expected = block.rank(ascending=False).mean(axis=1)  # arms ranked within each task, averaged
    assert ranks.to_dict() == pytest.approx(expected.to_dict())

    exclusions = pd.read_csv(out / "exclusions.csv")
    reasons = " | ".join(exclusions["what"] + ": " + exclusions["reason"])
    assert f"final run {failed} is FAILED" in reasons
    assert "unet_bpe | toy/motif_multiclass: one seed only" in reasons
    assert "Friedman / Nemenyi: dnabert2_char_scratch left out of the ranking: it lacks toy/motif_multiclass" in reasons
    assert "contrast convnova_char − unet_char" not in reasons and "no results for convnova_char" in reasons

    report = (out / "report.md").read_text()
    for text in ("## Contrasts", "Friedman χ²_F", "critical difference CD", "## Cost", "## Exclusions",
                 "### By task family", "HL [95% CI]", "### Per task, on the same test sequences",
                 "kmer_logreg: its seeds gave identical test metrics on 2 of 2 tasks",
                 "k-mer vs U-Net (kmer_logreg vs unet_char) ", "2 contrast(s) declared in study.yaml of run"):
        assert text in report
    for png in ["scores_by_task", "cost_benefit", "critical_difference",
                "difference_unet_bpe_vs_unet_char", "difference_kmer_logreg_vs_unet_char"]:
        assert (out / "figures" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"figures/{png}.png" in report

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_analysis").experiment_id
    (run,) = client.search_runs([exp], "tags.stage = 'analysis'")
    assert run.info.status == "FINISHED" and run.data.params["metric"] == "test_mcc"
    assert "report/report.md" in {a.path for a in client.list_artifacts(run.info.run_id, "report")}


@pytest.mark.slow
def test_a_failed_report_leaves_the_previous_one_and_marks_the_run_failed(at_experiment, monkeypatch):
    root, uri, _ = at_experiment
    assert analyze(["--experiment", "tiny_analysis", "--out", "kept", "--no-log"]) == 0
    before = (root / "kept" / "report.md").read_text()
    from harness import figures

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(figures, "cost_benefit", broken)
    with pytest.raises(OSError, match="disk full"):
        analyze(["--experiment", "tiny_analysis", "--out", "kept"])
    assert (root / "kept" / "report.md").read_text() == before
    assert not [p for p in root.iterdir() if p.name.startswith(".kept")]  # no half-written folder left
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_analysis").experiment_id
    statuses = [r.info.status for r in client.search_runs([exp], "tags.stage = 'analysis'")]
    assert "FAILED" in statuses and "RUNNING" not in statuses


@pytest.mark.slow
def test_bad_requests_get_clear_errors(at_experiment, capsys):
    assert analyze(["--experiment", "nope", "--no-log"]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err
    assert analyze(["--experiment", "tiny_analysis", "--metric", "dev_loss", "--no-log"]) == 2
    assert "metric='dev_loss'" in capsys.readouterr().err
    assert analyze(["--experiment", "tiny_analysis", "--rope", "-1", "--no-log"]) == 2
    assert "--rope must be" in capsys.readouterr().err
    assert analyze(["--experiment", "tiny_analysis", "--study", "other", "--no-log"]) == 2
    assert "no harness runs" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_run_analyze_entry_point(experiment):
    root, uri, _ = experiment
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "analyze", "--env-manager", "local",
           "-P", "experiment=tiny_analysis", "-P", f"out={root}/via_mlflow"]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "via_mlflow" / "report.md").is_file()
