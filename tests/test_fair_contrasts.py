"""Fair contrasts: every (variant, task) records its factors, a contrast varies only its own, scratch twins of a
checkpoint, study-wide checkpoint and tokenizer, search spaces per initialisation, tuning adequacy, declared
pretraining cost."""

from __future__ import annotations

import csv
import json
import math
import time

import optuna
import pandas as pd
import pytest
from conftest import TINY_STUDY, shared_path
from mlflow.tracking import MlflowClient

from analysis.cli import main as analyze
from analysis.collect import Results
from analysis.contrasts import Contrast, comparable_tasks, evaluate
from analysis.report import Settings, build_report
from harness.arms import ARMS
from harness.cli import main as harness
from harness.errors import CheckpointError, ParameterError, StudyError
from harness.request import RunRequest
from harness.schema import FACTORS, Tag
from harness.studies import parse_study
from harness.tuning import boundary_side

SHA = "1a2b3c4d5e6f7a8b"


# ------------------------------------------------------------------------------ the factor check
def results_of(cells: list[dict]) -> Results:
    """Results of arms A and B on three tasks, 3 seeds each, with the factors given per cell."""
    base = {f: "x" for f in FACTORS}
    rows, runs = [], []
    for c in cells:
        rows.append({**base, "n_seeds": 3, "score_mean": c["score"], "score_sd": 0.01, "compute_seconds": 10.0,
                     "compute_flops": 1e9, "pretrain_seconds": math.nan, "pretrain_flops": math.nan,
                     "pretrain_gpu_hours": math.nan, "device": "cpu", "params": 1000, **c})
        runs += [{"arm": c["arm"], "task": c["task"], "seed": s, "test_mcc": c["score"] + 0.01 * s} for s in range(3)]
    arms = pd.DataFrame(index=sorted({c["arm"] for c in cells}))
    return Results("e", "sqlite://", "test_mcc", pd.DataFrame(runs), pd.DataFrame(rows), arms)


def two_arms(differ_on: dict[str, dict[str, str]]) -> Results:
    """A and B on tasks t1..t3; `differ_on[task]` gives B's factors that differ from A's there."""
    cells = []
    for i, task in enumerate(("t1", "t2", "t3")):
        cells.append({"arm": "A", "task": task, "score": 0.5 + 0.1 * i})
        cells.append({"arm": "B", "task": task, "score": 0.4 + 0.1 * i, **differ_on.get(task, {})})
    return results_of(cells)


def test_a_task_whose_arms_differ_in_an_unvaried_factor_is_left_out_with_the_factor():
    results = two_arms({"t1": {Tag.INIT: SHA}, "t2": {Tag.TOKENIZER_SHA: "bpe-other", Tag.INIT: SHA},
                        "t3": {Tag.INIT: SHA, Tag.SEEDS: "5"}})
    c = Contrast("pretraining", "B", "A")
    common, missing, unlike = comparable_tasks(c, results)
    assert common == ["t1"] and missing == []
    assert unlike == {"t2": ["tokenizer_sha differs (B: bpe-other, A: x)"], "t3": ["seeds differs (B: 5, A: x)"]}
    e = evaluate(c, results, 0.05, 0.01)
    assert e.row["n_tasks"] == 1 and "t2 (tokenizer_sha differs" in e.row["tasks_left_out"]
    assert e.row["varies"] == "init"


def test_negative_control_a_contrast_of_arms_that_differ_only_in_a_factor_it_may_not_vary(tmp_path):
    """The same two arms differ only in architecture: fine for an architecture contrast, never for pretraining."""
    results = two_arms({t: {Tag.ARCHITECTURE_SHA: "other"} for t in ("t1", "t2", "t3")})
    assert comparable_tasks(Contrast("architecture", "B", "A"), results)[0] == ["t1", "t2", "t3"]
    assert comparable_tasks(Contrast("pretraining", "B", "A"), results)[0] == []
    build_report(results, [Contrast("pretraining", "B", "A"), Contrast("architecture", "B", "A")],
                 tmp_path / "report", Settings())
    contrasts = pd.read_csv(tmp_path / "report" / "contrasts.csv")
    assert list(contrasts["contrast"]) == ["architecture: B − A"] and contrasts["n_tasks"].iloc[0] == 3
    exclusions = pd.read_csv(tmp_path / "report" / "exclusions.csv")
    reasons = dict(zip(exclusions["what"], exclusions["reason"]))
    assert reasons["contrast pretraining: B − A"].startswith("not evaluated: on no task do its arms differ only in init")
    assert reasons["contrast pretraining: B − A | t2"].startswith("architecture_sha differs (B: other, A: x)")


def test_a_factor_an_arm_does_not_have_differs_from_nothing():
    results = two_arms({t: {Tag.PRECISION: "n/a", Tag.MODEL: "logistic_regression"} for t in ("t1", "t2", "t3")})
    assert comparable_tasks(Contrast("user", "B", "A"), results)[0] == ["t1", "t2", "t3"]
    narrow = Contrast("user", "B", "A", varies=frozenset({Tag.INIT}))
    assert comparable_tasks(narrow, results)[2]["t1"] == ["model differs (B: logistic_regression, A: x)"]


def test_an_unrecorded_factor_is_unknown_and_an_empty_varies_varies_nothing():
    results = two_arms({"t1": {Tag.TOKENIZER_SHA: ""}})  # t1: B's run did not record its tokenizer
    common, _, unlike = comparable_tasks(Contrast("architecture", "B", "A"), results)
    assert common == ["t2", "t3"] and unlike["t1"] == ["tokenizer_sha not recorded (B: a run of an older harness?)"]
    results = two_arms({t: {Tag.MODEL: "other"} for t in ("t1", "t2", "t3")})
    assert comparable_tasks(Contrast("user", "B", "A", varies=frozenset()), results)[0] == []
    assert comparable_tasks(Contrast("user", "B", "A"), results)[0] == ["t1", "t2", "t3"]


def test_a_contrast_without_a_common_task_is_reported_not_dropped(tmp_path):
    results = results_of([{"arm": "A", "task": "t1", "score": 0.5}, {"arm": "A", "task": "t2", "score": 0.6},
                          {"arm": "B", "task": "t3", "score": 0.4}])
    build_report(results, [Contrast("architecture", "B", "A")], tmp_path / "report", Settings())
    exclusions = pd.read_csv(tmp_path / "report" / "exclusions.csv")
    (reason,) = exclusions.loc[exclusions["what"] == "contrast architecture: B − A", "reason"]
    assert reason == "not evaluated: no task completed by both arms (t3 (no A); t1 (no B); t2 (no B))"


def test_a_study_contrast_declares_real_factors(tmp_path):
    import yaml

    raw = yaml.safe_load(TINY_STUDY)
    raw["analysis"] = {"contrasts": [{"a": "unet_char", "b": "kmer_logreg", "varies": ["model", "colour"]}]}
    with pytest.raises(StudyError, match=r"varies must be a list of factors .*\['colour'\]"):
        parse_study(raw, "s.yaml")
    raw["analysis"]["contrasts"][0]["varies"] = ["model", "architecture_sha"]
    assert parse_study(raw, "s.yaml").contrasts[0]["varies"] == ["model", "architecture_sha"]


# ------------------------------------------------------------------------- tuning adequacy
def test_boundary_side_reads_log_ranges_in_log_space():
    lr = optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert boundary_side(1.2e-5, lr) == "lower" and boundary_side(9e-4, lr) == "upper"
    assert boundary_side(1e-4, lr) is None  # the middle of the range in log space
    assert boundary_side(5e-4, lr) is None  # far from the top in log space, though near it linearly
    dropout = optuna.distributions.FloatDistribution(0.0, 0.3)
    assert boundary_side(0.29, dropout) == "upper" and boundary_side(0.01, dropout) == "lower"
    assert boundary_side(0.15, dropout) is None
    assert boundary_side(64, optuna.distributions.CategoricalDistribution([32, 64])) is None
    assert boundary_side(7, optuna.distributions.IntDistribution(3, 7)) == "upper"


# --------------------------------------------------------------- study-wide checkpoint and tokenizer
STUDY_WITH_SHARED = TINY_STUDY.replace("tokenizer: {bpe_vocab_size: 64}", """tokenizer:
  bpe: {tokenizer}
  bpe_vocab_size: 64
checkpoint:
  source: {checkpoint}
  arms: [dnabert2_pretrained, dnabert2_scratch]""").replace("""  transformer:
    lr:""", """  transformer_scratch:
    lr: {type: float, low: 3.0e-3, high: 9.0e-3, log: true}
    batch_size: {type: categorical, choices: [16]}
    fixed: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64}
  transformer:
    lr:""")


@pytest.fixture
def shared_study(tmp_path):
    checkpoint = shared_path("fixtures", "dnabert2_tiny", "mlm")
    tokenizer = shared_path("dnabert2", "tokenizer.json")
    path = tmp_path / "shared.yaml"
    path.write_text(STUDY_WITH_SHARED.replace("{tokenizer}", str(tokenizer)).replace("{checkpoint}", str(checkpoint)))
    return path, str(checkpoint), str(tokenizer)


def test_a_study_names_the_checkpoint_and_tokenizer_once_for_a_mixed_sweep(shared_study, tiny_gue):
    from harness.sweep import cell_requests, command

    path, checkpoint, tokenizer = shared_study
    request = RunRequest.parse({"study": str(path), "data": str(tiny_gue), "arms": "dnabert2_pretrained,"
                                "dnabert2_scratch,dnabert2_char_scratch,unet_char,unet_bpe"})
    options = {name: request.options(ARMS.get(name)) for name in request.arms}
    assert options["dnabert2_pretrained"].init == checkpoint and options["dnabert2_pretrained"].pretrained
    assert options["dnabert2_scratch"].init == checkpoint and options["dnabert2_scratch"].twin
    assert options["dnabert2_char_scratch"].init is None and options["unet_char"].init is None
    assert options["unet_bpe"].tokenizer_path == tokenizer and options["unet_char"].tokenizer_path is None
    assert options["dnabert2_char_scratch"].tokenizer_path is None
    request.validate()  # single-nucleotide arms do not reject the study's BPE tokenizer
    # the twin is its own variant (and Optuna study); it is tuned in the from-scratch space
    fingerprint = options["dnabert2_pretrained"].checkpoint.fingerprint
    assert ARMS.get("dnabert2_scratch").variant(options["dnabert2_scratch"]) == f"dnabert2_scratch~{fingerprint[:8]}"
    assert ARMS.get("dnabert2_scratch").space(request.spec, options["dnabert2_scratch"]) == "transformer_scratch"
    assert ARMS.get("dnabert2_pretrained").space(request.spec, options["dnabert2_pretrained"]) == "transformer"
    lines = [command(one) for one in cell_requests(request)]
    assert not any("-P checkpoint" in line or "-P tokenizer" in line for line in lines)  # the study says it


def test_command_line_tokenizer_goes_to_bpe_arms_and_is_refused_only_when_none_is_bpe(tiny_study, tiny_gue):
    tokenizer = str(shared_path("dnabert2", "tokenizer.json"))
    request = RunRequest.parse({"study": str(tiny_study), "arms": "unet_char,unet_bpe", "tokenizer": tokenizer,
                                "data": str(tiny_gue)})
    request.validate()
    assert request.options(ARMS.get("unet_char")).tokenizer_path is None
    with pytest.raises(ParameterError, match="applies to BPE arms"):
        RunRequest.parse({"study": str(tiny_study), "arm": "unet_char", "tokenizer": tokenizer}).validate()


def test_a_hub_tokenizer_offline_fails_fast_saying_what_to_pass(tiny_study, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    request = RunRequest.parse({"study": str(tiny_study), "arm": "unet_bpe", "tokenizer": "someone/no-such-model"})
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="pass tokenizer=<its tokenizer.json> instead"):
        request.validate()
    assert time.perf_counter() - start < 10


def test_init_overrides_the_study_checkpoint_and_keeps_the_checkpoint_tokenizer(shared_study, tmp_path):
    """init= fine-tunes from its checkpoint even where the study names another one for the twins, and a
    checkpoint with its own tokenizer.json keeps it over the study's BPE tokenizer."""
    import shutil

    path, checkpoint, tokenizer = shared_study
    own = tmp_path / "own"
    shutil.copytree(checkpoint, own)
    shutil.copy(tokenizer, own / "tokenizer.json")
    scratch = ARMS.get("dnabert2_scratch")
    options = RunRequest.parse({"study": str(path), "arm": scratch.name, "init": str(own)}).options(scratch)
    assert options.init == str(own) and options.pretrained and options.tokenizer_path is None
    pretrained = ARMS.get("dnabert2_pretrained")
    options = RunRequest.parse({"study": str(path), "arm": pretrained.name, "init": str(own)}).options(pretrained)
    assert options.init == str(own) and options.pretrained
    # the study's checkpoint has no tokenizer.json: the study's tokenizer serves it
    assert RunRequest.parse({"study": str(path), "arm": pretrained.name}).options(pretrained).tokenizer_path == tokenizer


def test_a_sweep_with_a_convnova_checkpoint_leaves_dnabert2_pretrained_out(tiny_study, tmp_path):
    from harness.checkpoints import save_checkpoint
    from harness.models import MODELS
    from harness.tokenizers import CharTokenizer

    tok, spec = CharTokenizer(), MODELS.get("convnova")
    architecture = spec.architecture(tok, {"hidden_dim": 16})
    save_checkpoint(tmp_path / "ckpt", "convnova", architecture, spec.masked_lm(architecture, tok, 0.0), tok, {})
    request = RunRequest.parse({"study": str(tiny_study), "checkpoint": str(tmp_path / "ckpt")})
    assert "dnabert2_pretrained" not in request.arms and "convnova_char" in request.arms
    takes = {name for name in request.arms if request.takes_checkpoint(ARMS.get(name))}
    assert takes == {"convnova_char"}  # its twin; no other arm holds a ConvNova on single nucleotides
    assert request.options(ARMS.get("convnova_char")).twin


def test_a_study_checkpoint_names_known_arms(tmp_path):
    raw = TINY_STUDY + "checkpoint: {source: /nowhere, arms: [dnabert2-scratch]}\n"
    (tmp_path / "s.yaml").write_text(raw)
    with pytest.raises(StudyError, match=r"checkpoint.arms names unknown arm\(s\) \['dnabert2-scratch'\]"):
        RunRequest.parse({"study": str(tmp_path / "s.yaml"), "arm": "unet_char"})


def test_init_and_a_twin_checkpoint_on_one_scratch_arm_are_refused(shared_study):
    path, checkpoint, _ = shared_study
    request = RunRequest.parse({"study": str(path), "arm": "dnabert2_scratch", "init": "/elsewhere",
                                "checkpoint": checkpoint})
    with pytest.raises(ParameterError, match="pass one of them"):
        request.options(ARMS.get("dnabert2_scratch"))


def test_declared_pretraining_cost_beside_the_weights_and_on_the_command_line(tmp_path, shared_study):
    import shutil

    folder = tmp_path / "published"
    shutil.copytree(shared_path("fixtures", "dnabert2_tiny", "mlm"), folder)
    (folder / "pretrain_cost.json").write_text(json.dumps({"gpu_hours": 2688, "source": "the paper"}))
    path, _, _ = shared_study
    arm = ARMS.get("dnabert2_pretrained")
    request = RunRequest.parse({"study": str(path), "arm": arm.name, "checkpoint": str(folder)})
    options = request.options(arm)
    assert arm.inherited_cost(options) == {"pretrain_gpu_hours": 2688.0}
    assert "declared in pretrain_cost.json: the paper" in arm.tags(options)["pretrain_cost_source"]
    request = RunRequest.parse({"study": str(path), "arm": arm.name, "checkpoint": str(folder),
                                "pretrain_cost": "gpu_hours=10,flops=2e20"})
    assert arm.inherited_cost(request.options(arm)) == {"pretrain_gpu_hours": 10.0, "pretrain_flops": 2e20}
    assert arm.inherited_cost(request.options(ARMS.get("dnabert2_scratch"))) == {}  # a twin inherits nothing
    with pytest.raises(ParameterError, match="pretrain_cost: expected KEY=NUMBER"):
        RunRequest.parse({"study": str(path), "arm": arm.name, "pretrain_cost": "hours=3"})


# ------------------------------------------------------- the judged scenario, end to end (small)
def read_csv(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_pretraining_contrast_needs_the_twin_and_question_1_pairs_with_the_cnn(workdir, tiny_gue, shared_study):
    """dnabert2_pretrained vs dnabert2_scratch without checkpoint=: excluded, naming the factors; vs its twin
    (same checkpoint=): evaluated; with unet_char present, question 1's contrast appears."""
    path, checkpoint, _ = shared_study
    plain = path.with_name("plain.yaml")  # the same study without the shared checkpoint: dnabert2_scratch plain
    text = path.read_text()
    plain.write_text(text.replace(text[text.index("checkpoint:"):text.index("search_spaces:")], ""))
    common = ["--data", str(tiny_gue), "--n-trials", "1", "--seeds", "2", "--experiment", "fair",
              "--tasks", "toy/motif_binary,toy/motif_multiclass"]
    assert harness(["run", "--arm", "dnabert2_pretrained", "--study", str(path), *common]) == 0
    assert harness(["run", "--arm", "dnabert2_scratch", "--study", str(path), *common]) == 0  # the twin
    assert harness(["run", "--arm", "dnabert2_scratch", "--study", str(plain), *common]) == 0  # not a twin
    assert harness(["run", "--arm", "unet_char", "--study", str(path), *common]) == 0

    client = MlflowClient()
    exp = client.get_experiment_by_name("fair").experiment_id
    parents = {(r.data.tags["variant"], r.data.tags["task"]): r
               for r in client.search_runs([exp], "tags.stage = 'study'")}
    twin = next(v for v, _ in parents if v.startswith("dnabert2_scratch~"))
    for p in parents.values():
        tags = p.data.tags
        assert set(FACTORS) <= set(tags) and tags["seeds"] == "2" and tags["n_trials"] == "1"
        assert "tuning_boundary" in tags and tags["best_epoch_at_cap"] in ("0", "1")
    pretrained = parents[("dnabert2_pretrained", "toy/motif_binary")].data.tags
    twin_tags = parents[(twin, "toy/motif_binary")].data.tags
    plain_tags = parents[("dnabert2_scratch", "toy/motif_binary")].data.tags
    assert {f for f in FACTORS if pretrained[f] != twin_tags[f]} == {"init"}
    assert pretrained["architecture_sha"] != plain_tags["architecture_sha"]
    assert twin_tags["search_space"] == "transformer_scratch" and pretrained["search_space"] == "transformer"
    assert twin_tags["shape_source"] == checkpoint and "init_source" not in twin_tags

    assert analyze(["--experiment", "fair", "--out", "report", "--no-log"]) == 0
    contrasts = {r["contrast"]: r for r in read_csv(workdir / "report" / "contrasts.csv")}
    assert contrasts[f"pretraining: dnabert2_pretrained − {twin}"]["n_tasks"] == "2"
    assert "pretraining: dnabert2_pretrained − dnabert2_scratch" not in contrasts
    assert contrasts["pretrained_vs_cnn: dnabert2_pretrained − unet_char"]["n_tasks"] == "2"
    exclusions = {r["what"]: r["reason"] for r in read_csv(workdir / "report" / "exclusions.csv")}
    reason = exclusions["contrast pretraining: dnabert2_pretrained − dnabert2_scratch | toy/motif_binary"]
    assert "architecture_sha differs" in reason and "may vary only init" in reason
    report = (workdir / "report" / "report.md").read_text()
    assert "## Tuning adequacy" in report
    assert (workdir / "report" / "tuning_adequacy.csv").is_file() or "Not written: tuning_adequacy.csv" in report


@pytest.mark.slow
def test_a_resume_with_other_seeds_is_refused(workdir, tiny_gue, tiny_study, capsys):
    args = ["run", "--arm", "kmer_logreg", "--study", str(tiny_study), "--data", str(tiny_gue), "--n-trials", "1"]
    assert harness([*args, "--seeds", "1"]) == 0
    assert harness([*args, "--seeds", "2"]) == 2
    assert "seeds" in capsys.readouterr().err
