"""Fine-tuning vs probing in the analysis: the `probing` contrast (a variant − its `+probe` namesake),
`pretraining` within one mode, a run without a mode tag read as fine-tuned, and a probed cell's embedding
pass counted once in its compute. Synthetic tables only: no MLflow."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.collect import Results, arm_table, cell_table, parent_table
from analysis.contrasts import Contrast, default_contrasts, differing_factors, evaluate, sentence
from analysis.report import cost_md_columns, cost_table
from harness.schema import FACTORS, PROBE_SUFFIX, Init, Metric, Mode, Tag

SHA = "aaaa1111bbbb2222"  # the checkpoint's weights (init factor of the variants trained from it)
ARM_COLUMNS = [Tag.ARM, Tag.FAMILY, Tag.MODEL, Tag.TOKENIZER, Tag.INIT, Tag.MODE]


def arms_frame(rows: dict[str, tuple]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=ARM_COLUMNS).rename_axis("variant")


def checkpoint_arms() -> pd.DataFrame:
    """A checkpoint fine-tuned and probed, its scratch twin fine-tuned and probed, and arms that are neither."""
    return arms_frame({
        "hf_pretrained@aaaa1111": ("hf_pretrained", "hf", "hf", "hf", SHA, Mode.FINETUNE),
        "hf_pretrained@aaaa1111+probe": ("hf_pretrained", "hf", "hf", "hf", SHA, Mode.PROBE),
        "hf_scratch~aaaa1111": ("hf_scratch", "hf", "hf", "hf", Init.SCRATCH, Mode.FINETUNE),
        "hf_scratch~aaaa1111+probe": ("hf_scratch", "hf", "hf", "hf", Init.SCRATCH, Mode.PROBE),
        "unet_char": ("unet_char", "cnn", "unet", "char", Init.SCRATCH, Mode.FINETUNE),
        "kmer_logreg": ("kmer_logreg", "kmer", "logistic_regression", "kmer", Init.SCRATCH, "n/a"),
    })


def found(arms: pd.DataFrame) -> set[tuple[str, str, str]]:
    return {(c.effect, c.a, c.b) for c in default_contrasts(arms)}


# ------------------------------------------------------------------------------------ which pairs are asked
def test_probing_pairs_each_variant_with_its_probed_self_and_pretraining_stays_within_a_mode():
    assert found(checkpoint_arms()) == {
        ("probing", "hf_pretrained@aaaa1111", "hf_pretrained@aaaa1111+probe"),
        ("probing", "hf_scratch~aaaa1111", "hf_scratch~aaaa1111+probe"),
        ("pretraining", "hf_pretrained@aaaa1111", "hf_scratch~aaaa1111"),
        ("pretraining", "hf_pretrained@aaaa1111+probe", "hf_scratch~aaaa1111+probe"),
    }
    # Negative control: no pretraining contrast across modes, either way round.
    effects = found(checkpoint_arms())
    assert ("pretraining", "hf_pretrained@aaaa1111", "hf_scratch~aaaa1111+probe") not in effects
    assert ("pretraining", "hf_pretrained@aaaa1111+probe", "hf_scratch~aaaa1111") not in effects


def test_a_probed_variant_without_its_fine_tuned_self_gets_no_probing_contrast():
    arms = checkpoint_arms().drop(index=["hf_scratch~aaaa1111"])
    assert {c for c in found(arms) if c[0] == "probing"} == {
        ("probing", "hf_pretrained@aaaa1111", "hf_pretrained@aaaa1111+probe")}


def test_probed_variants_stay_out_of_the_end_to_end_questions():
    """bpe, architecture and pretrained_vs_cnn compare systems trained end to end: fine-tuned variants only."""
    sha = "1a2b3c4d5e6f7a8b"
    finetuned = {
        "dnabert2_pretrained": ("dnabert2_pretrained", "transformer", "dnabert2", "bpe", sha, Mode.FINETUNE),
        "dnabert2_scratch": ("dnabert2_scratch", "transformer", "dnabert2", "bpe", Init.SCRATCH, Mode.FINETUNE),
        "dnabert2_char_scratch": ("dnabert2_char_scratch", "transformer", "dnabert2", "char", Init.SCRATCH,
                                  Mode.FINETUNE),
        "convnova_char": ("convnova_char", "cnn", "convnova", "char", Init.SCRATCH, Mode.FINETUNE),
    }
    probed = {name + PROBE_SUFFIX: (*row[:5], Mode.PROBE) for name, row in finetuned.items()
              if row[1] == "transformer"}
    alone = found(arms_frame(finetuned))
    both = found(arms_frame({**finetuned, **probed}))
    assert alone == {
        ("pretraining", "dnabert2_pretrained", "dnabert2_scratch"),
        ("bpe", "dnabert2_scratch", "dnabert2_char_scratch"),
        ("architecture", "dnabert2_char_scratch", "convnova_char"),
        ("pretrained_vs_cnn", "dnabert2_pretrained", "convnova_char"),
    }
    # The probed namesakes add their probing contrasts and their own pretraining one, nothing else.
    assert both - alone == {
        ("probing", "dnabert2_pretrained", "dnabert2_pretrained+probe"),
        ("probing", "dnabert2_scratch", "dnabert2_scratch+probe"),
        ("probing", "dnabert2_char_scratch", "dnabert2_char_scratch+probe"),
        ("pretraining", "dnabert2_pretrained+probe", "dnabert2_scratch+probe"),
    }


def test_variants_without_a_mode_read_as_fine_tuned():
    """An arms table of an older harness (no mode column, or an empty tag) keeps its pretraining contrast."""
    arms = checkpoint_arms().drop(index=["hf_pretrained@aaaa1111+probe", "hf_scratch~aaaa1111+probe"])
    expected = {("pretraining", "hf_pretrained@aaaa1111", "hf_scratch~aaaa1111")}
    assert found(arms.drop(columns=[Tag.MODE])) == expected
    assert found(arms.assign(**{Tag.MODE: ""})) == expected


# ------------------------------------------------------------------------------------ the factor check
def cells_frame(arms: pd.DataFrame, tasks: list[str], **changes: dict[str, str]) -> pd.DataFrame:
    """One cell per (variant, task) with equal factors but the variant's own init, mode and head; `changes`
    maps a 'variant|task' to the factors its cell recorded otherwise."""
    rows = []
    for variant, arm in arms.iterrows():
        for t, task in enumerate(tasks):
            factors = {f: "same" for f in FACTORS}
            factors.update({Tag.MODEL: arm[Tag.MODEL], Tag.INIT: arm[Tag.INIT], Tag.MODE: arm[Tag.MODE],
                            Tag.ARCHITECTURE_SHA: f"head-{arm[Tag.MODE]}", Tag.PRECISION: "bf16"})
            factors.update(changes.get(f"{variant}|{task}", {}))
            score = 0.5 + 0.01 * t + (0.05 if arm[Tag.MODE] == Mode.FINETUNE else 0.0)
            rows.append({"arm": variant, "task": task, "score_mean": score, **factors})
    return pd.DataFrame(rows)


def test_the_probing_contrast_holds_everything_but_the_mode_and_head_equal():
    arms = checkpoint_arms().loc[["hf_pretrained@aaaa1111", "hf_pretrained@aaaa1111+probe"]]
    probing = Contrast("probing", "hf_pretrained@aaaa1111", "hf_pretrained@aaaa1111+probe")
    cells = cells_frame(arms, ["EMP/H3", "EMP/H4", "prom/core"], **{
        "hf_pretrained@aaaa1111+probe|EMP/H4": {Tag.INIT: "cccc3333dddd4444"},  # another checkpoint probed
        "hf_pretrained@aaaa1111+probe|prom/core": {Tag.TOKENIZER_SHA: "other"},  # another tokenizer
    })
    # Mode and head differ on every task, and are what the contrast is about: not a reason to leave a task out.
    assert differing_factors(probing, cells, "EMP/H3") == []
    assert differing_factors(probing, cells, "EMP/H4") == [
        f"init differs (hf_pretrained@aaaa1111: {SHA}, hf_pretrained@aaaa1111+probe: cccc3333dddd4444)"]
    assert differing_factors(probing, cells, "prom/core") == [
        "tokenizer_sha differs (hf_pretrained@aaaa1111: same, hf_pretrained@aaaa1111+probe: other)"]
    # Negative control: the pretraining contrast may not vary the mode; pairing across modes leaves it out.
    across = Contrast("pretraining", "hf_pretrained@aaaa1111", "hf_pretrained@aaaa1111+probe")
    assert any(d.startswith("mode differs") for d in differing_factors(across, cells, "EMP/H3"))


def test_an_older_cell_without_a_mode_meets_a_new_fine_tuned_one_as_fine_tuned():
    """collect reads an unrecorded mode as finetune in both tables, so old and new runs stay comparable."""
    class Run:  # the part of mlflow.entities.Run that arm_table and parent_table read
        def __init__(self, variant: str, tags: dict[str, str]):
            self.data = type("Data", (), {"tags": {Tag.VARIANT: variant, Tag.TASK: "EMP/H3", **tags},
                                          "metrics": {}})()

    old = Run("hf_scratch~aaaa1111", {Tag.ARM: "hf_scratch", Tag.INIT: Init.SCRATCH})  # no mode tag
    new = Run("hf_pretrained@aaaa1111", {Tag.ARM: "hf_pretrained", Tag.INIT: SHA, Tag.MODE: Mode.FINETUNE})
    assert arm_table([old, new])[Tag.MODE].to_dict() == {"hf_pretrained@aaaa1111": Mode.FINETUNE,
                                                          "hf_scratch~aaaa1111": Mode.FINETUNE}
    cells = parent_table([old, new])
    assert set(cells[Tag.MODE]) == {Mode.FINETUNE}
    # Negative control: a factor with no known meaning when absent stays unrecorded ("").
    assert set(cells[Tag.PRECISION]) == {""}


# ------------------------------------------------------------------------------------ cost
def runs_frame(arm: str, task: str, embed: float | None, seeds: int = 3) -> pd.DataFrame:
    rows = [{"arm": arm, "task": task, "seed": s, "test_mcc": 0.5 + 0.01 * s, "test_f1": 0.5, "test_accuracy": 0.5,
             "test_auroc": 0.5, "train_seconds": 1.0, "flops": 100.0, Metric.PARAMS: 10,
             "pretrain_seconds": math.nan, "pretrain_flops": math.nan, "pretrain_gpu_hours": math.nan,
             Metric.EMBED_SECONDS: math.nan if embed is None else embed,
             Metric.EMBED_FLOPS: math.nan if embed is None else 1000 * embed, "run_id": f"{arm}-{task}-{s}"}
            for s in range(seeds)]
    return pd.DataFrame(rows)


def tuning_frame(*cells: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": a, "task": t, "trials_run": 2, "tuning_seconds": 5.0, "tuning_flops": 500.0}
                         for a, t in cells])


def test_the_embedding_pass_counts_once_per_cell():
    probed, tuned = "hf_pretrained@aaaa1111+probe", "hf_pretrained@aaaa1111"
    runs = pd.concat([runs_frame(probed, "EMP/H3", embed=10.0), runs_frame(tuned, "EMP/H3", embed=None)])
    cells = cell_table(runs, "test_mcc", tuning_frame((probed, "EMP/H3"), (tuned, "EMP/H3"))).set_index("arm")
    # 3 final runs each carrying the cell's 10 s: tuning 5 + finals 3 + embedding 10, not 5 + 3 + 30.
    assert cells.loc[probed, ["embed_seconds", "compute_seconds"]].tolist() == [10.0, 18.0]
    assert cells.loc[probed, ["embed_flops", "compute_flops"]].tolist() == [10_000.0, 500 + 300 + 10_000]
    # Negative control: a fine-tuned cell embedded nothing; its compute is tuning and finals alone.
    assert cells.loc[tuned, ["embed_seconds", "compute_seconds", "compute_flops"]].tolist() == [0.0, 8.0, 800.0]


def test_runs_without_embedding_columns_cost_what_they_did():
    """Final runs of an older harness (or tables built by hand) have no embed_* columns at all."""
    runs = runs_frame("unet_char", "EMP/H3", embed=None).drop(columns=[Metric.EMBED_SECONDS, Metric.EMBED_FLOPS])
    cell = cell_table(runs, "test_mcc", tuning_frame(("unet_char", "EMP/H3"))).iloc[0]
    assert (cell["embed_seconds"], cell["embed_flops"], cell["compute_seconds"]) == (0.0, 0.0, 8.0)


def probing_results() -> Results:
    """A checkpoint fine-tuned and probed on 6 tasks (enough for a p-value), the same pretraining behind both."""
    tuned, probed = "hf_pretrained@aaaa1111", "hf_pretrained@aaaa1111+probe"
    tasks = [f"EMP/H{i}" for i in range(6)]
    runs = []
    for t, task in enumerate(tasks):
        for arm, embed, gain in ((tuned, None, 0.05 + 0.001 * t), (probed, 10.0, 0.0)):
            frame = runs_frame(arm, task, embed)
            frame["test_mcc"] += gain
            frame[["pretrain_seconds", "pretrain_flops"]] = (3600.0, 1e18)
            runs.append(frame)
    runs = pd.concat(runs, ignore_index=True)
    cells = cell_table(runs, "test_mcc", tuning_frame(*((a, t) for a in (tuned, probed) for t in tasks)))
    arms = checkpoint_arms().loc[[tuned, probed]]
    factors = cells_frame(arms, tasks).drop(columns=["score_mean"])
    cells = cells.merge(factors, on=["arm", "task"]).assign(device="cpu")
    return Results("e", "sqlite://", "test_mcc", runs, cells, arms)


def test_the_probing_sentence_reads_and_does_not_charge_the_shared_pretraining_to_one_side():
    results = probing_results()
    e = evaluate(Contrast("probing", "hf_pretrained@aaaa1111", "hf_pretrained@aaaa1111+probe"), results,
                 0.05, 0.01, n_resamples=200)
    assert e.row["n_tasks"] == 6 and e.row["wins"] == 6 and e.row["varies"] == "architecture_sha,mode"
    # Compute per task: fine-tuned 5 + 3 = 8 s, probed 5 + 3 + 10 = 18 s.
    assert (e.row["a_compute_seconds"], e.row["b_compute_seconds"]) == (8.0, 18.0)
    text = sentence(e.row, 0.05)
    assert text.startswith("fine-tuning (vs probing the frozen backbone) (hf_pretrained@aaaa1111 vs "
                           "hf_pretrained@aaaa1111+probe) improved MCC on 6 of 6 tasks")
    assert "FLOPs per task of hf_pretrained@aaaa1111+probe, both on the same pretraining (60 min, 1e+18 FLOPs)" in text
    assert "plus" not in text
    # Negative control: a side whose pretraining the other lacks is still charged it.
    row = {**e.row, "b_pretrain_seconds": math.nan, "b_pretrain_flops": math.nan}
    assert "plus 60 min, 1e+18 FLOPs of pretraining" in sentence(row, 0.05)


def test_the_cost_table_shows_the_embedding_pass_only_where_an_arm_was_probed():
    results = probing_results()
    cost = cost_table(results, pd.DataFrame()).set_index("arm")
    assert cost.loc["hf_pretrained@aaaa1111+probe", "embed_seconds_per_task"] == pytest.approx(10.0)
    assert cost.loc["hf_pretrained@aaaa1111", "embed_flops_per_task"] == 0.0
    assert "embed_flops_per_task" in cost_md_columns(cost.reset_index())
    fine_tuned_only = cost.drop(index="hf_pretrained@aaaa1111+probe").reset_index()
    assert "embed_flops_per_task" not in cost_md_columns(fine_tuned_only)


def test_each_contrast_of_a_checkpoint_has_its_own_figure():
    """`arm@sha`, `arm~sha` and their `+probe` variants differ only in marks a file name cannot hold: each
    contrast's difference figure must still be its own file (they used to overwrite one another)."""
    from analysis.report import difference_png

    variants = ["m@aaaa1111", "m@aaaa1111+probe", "m~aaaa1111", "m~aaaa1111+probe"]
    contrasts = [Contrast("exploratory", a, b) for a in variants for b in variants if a != b]
    names = {difference_png(c) for c in contrasts}
    assert len(names) == len(contrasts)
    assert difference_png(Contrast("bpe", "unet_bpe", "unet_char")) == "difference_unet_bpe_vs_unet_char.png"
