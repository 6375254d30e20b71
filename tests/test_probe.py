"""Probing (`mode=probe`, harness/probe.py): a frozen backbone's embeddings, cached once per (weights, tokenizer,
split, token cap, precision, layer, pooling), under a tuned head.

Checkpoints are the tiny ones of test_hf_arms.py (a BERT with a DNA BPE vocabulary, an ESM with Nucleotide
Transformer's 6-mer layout, built with transformers' `save_pretrained`), a harness masked-LM checkpoint as
`pretrain` writes it, and the tiny DNABERT-2 of ../shared.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import shared_path
from harness import probe
from harness.arms import ARMS, Budget, RunOptions
from harness.cli import main
from harness.data import Split, TaskData
from harness.errors import ParameterError
from harness.runtime import Runtime
from harness.schema import Metric, Tag
from harness.tasks import load_task
from test_batch_independence import tiny_checkpoint, variable_length_split
from test_hf_arms import finals, parent, tiny_bert, tiny_esm

ALONE = Runtime(torch.device("cpu"), "fp32", eval_batch_size=1)
BATCHED = Runtime(torch.device("cpu"), "fp32", eval_batch_size=64)
HEAD = {"lr": 1e-2, "batch_size": 16, "head": "linear", "layer": -1, "pooling": "mean"}
VIEWS = ((-2, "first"), (-2, "mean"), (-1, "first"), (-1, "mean"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe_checkpoints")
    return {"bert": tiny_bert(root / "bert"), "esm": tiny_esm(root / "esm")}


@pytest.fixture(scope="module")
def task() -> TaskData:
    rng = np.random.default_rng(0)
    train, dev, test = (variable_length_split(n, rng) for n in (96, 48, 64))
    return TaskData("synthetic/variable_length", train, dev, test, 2, "test_probe")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    probe._memory.clear()  # this process's copies of other tests' entries
    return tmp_path / "cache"


def hf_options(folder: Path, twin: bool = False, runtime: Runtime = BATCHED) -> RunOptions:
    return RunOptions(runtime, init=str(folder), twin=twin, checkpoint_reader="hf", mode="probe", probe_views=VIEWS)


def fit(arm: str, task: TaskData, options: RunOptions, params: dict | None = None, seed: int = 0):
    return ARMS.get(arm).fit(task, {**HEAD, **(params or {})}, seed, Budget(2, None), options)


# ------------------------------------------------------------------------------------- the embeddings
def direct_embedding(fitted, split: Split, layer: int, pooling: str) -> np.ndarray:
    """Each sequence through the backbone alone (no padding, no cache): what the cache must hold."""
    model = fitted.backbone.build()  # a fresh copy: the checkpoint's weights
    tok, rows = fitted.backbone.tokenizer, []
    with torch.inference_mode():
        for ids in tok.encode(split.sequences):
            ids = torch.tensor([list(ids)[:fitted.backbone.max_length]])
            states = model.hidden_states(ids, torch.ones_like(ids))[layer]
            rows.append(probe.pool(states, torch.ones_like(ids), pooling)[0].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("kind", ["bert", "esm"])
def test_cached_embeddings_are_each_sequence_alone_through_the_frozen_backbone(kind, checkpoints, task, cache):
    fitted = fit("hf_pretrained", task, hf_options(checkpoints[kind]))
    for layer, pooling in VIEWS:
        fitted.view = (layer, pooling)
        cached = fitted.features("test").features
        np.testing.assert_allclose(cached, direct_embedding(fitted, task.test, layer, pooling), atol=1e-5, rtol=0)
    # A different layer is a different representation (the view is not ignored).
    last, below = (probe.embeddings(fitted.backbone, task, "test", (layer, "mean"), VIEWS, BATCHED)[0].features
                   for layer in (-1, -2))
    assert np.abs(last - below).max() > 1e-3


def test_one_pass_stores_every_view_and_the_second_trial_reads_the_cache(checkpoints, task, cache):
    options = hf_options(checkpoints["bert"])
    first = fit("hf_pretrained", task, options)
    assert first.result.tags[Tag.EMBEDDINGS] == "train computed, dev computed"
    entries = sorted(p.name for p in cache.glob("embeddings/*") if p.is_dir())
    assert len(entries) == 2  # one pass per split (train, dev), whatever the views
    for entry in entries:
        assert sorted(p.name for p in (cache / "embeddings" / entry).iterdir()) == sorted(
            ["pass.json"] + [f"layer{layer}_{pooling}.npy" for layer, pooling in VIEWS])
    probe._memory.clear()  # a new process (another worker, a resumed study) reads the disk
    second = fit("hf_pretrained", task, options, {"layer": -2, "pooling": "first", "head": "mlp", "head_hidden": 8})
    assert second.result.tags[Tag.EMBEDDINGS] == "train cached, dev cached"
    # A missing record (a pass cut short) is an incomplete entry: computed again, not read.
    (cache / "embeddings" / entries[0] / "pass.json").unlink()
    probe._memory.clear()
    assert "computed" in fit("hf_pretrained", task, options).result.tags[Tag.EMBEDDINGS]


def test_workers_missing_together_compute_one_pass_and_a_cell_pays_for_its_own(checkpoints, task, cache,
                                                                                 monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    backbone = fit("hf_pretrained", task, hf_options(checkpoints["bert"])).backbone
    passes = []
    real_embed = probe.embed
    monkeypatch.setattr(probe, "embed", lambda *a: passes.append(a[-1]) or real_embed(*a))
    probe._memory.clear()
    with ThreadPoolExecutor(2) as pool:  # two workers, each with its own lock handle
        sources = sorted(pool.map(lambda _: probe.embeddings(backbone, task, "test", (-1, "mean"), VIEWS[2:], BATCHED)[1],
                                  range(2)))
    assert sources == ["cached", "computed"] and len(passes) == 1
    # Another study asks this entry for a view it lacks: a second pass, which this cell's cost does not include.
    mine = probe.pass_cost(backbone, task, BATCHED, VIEWS[2:])
    probe._memory.clear()
    probe.embeddings(backbone, task, "test", (-2, "mean"), ((-2, "mean"),), BATCHED)
    assert passes[-1] == [(-2, "mean")]
    assert probe.pass_cost(backbone, task, BATCHED, VIEWS[2:]) == mine
    both = probe.pass_cost(backbone, task, BATCHED, VIEWS)
    assert both[Metric.EMBED_SECONDS] > mine[Metric.EMBED_SECONDS] and both[Metric.EMBED_FLOPS] > mine[Metric.EMBED_FLOPS]


def test_the_cache_key_follows_the_code_and_the_config(checkpoints, task, cache, monkeypatch, tmp_path):
    import shutil

    arm, options = ARMS.get("hf_pretrained"), hf_options(checkpoints["bert"])
    key = arm.backbone(task, options).weights
    assert arm.backbone(task, options).weights == key  # stable
    monkeypatch.setattr(probe, "model_code_digest", lambda: "another version of the models")
    assert arm.backbone(task, options).weights != key
    monkeypatch.undo()
    changed = tmp_path / "bert_eps"  # the same weights file under another config: other outputs
    shutil.copytree(checkpoints["bert"], changed)
    config = (changed / "config.json").read_text().replace('"layer_norm_eps": 1e-12', '"layer_norm_eps": 1e-05')
    assert config != (changed / "config.json").read_text()
    (changed / "config.json").write_text(config)
    assert arm.backbone(task, hf_options(changed)).weights != key


def test_embeddings_do_not_depend_on_the_batch(checkpoints, task, cache):
    fitted = fit("hf_pretrained", task, hf_options(checkpoints["esm"]))
    tokens, pad = probe.tokenize(fitted.backbone.tokenizer, task.test, 62), fitted.backbone.tokenizer.pad_id
    assert len(set(tokens.lengths)) > 5  # a batch of mixed lengths: padding where a sequence is not alone
    model = fitted.backbone.build()
    alone, batched = (probe.embed(model, tokens, pad, runtime, list(VIEWS))[0] for runtime in (ALONE, BATCHED))
    for view in VIEWS:
        np.testing.assert_allclose(alone[view], batched[view], atol=1e-5, rtol=0, err_msg=str(view))


def test_twin_backbone_is_one_fixed_random_draw_and_differs_from_the_pretrained(checkpoints, task, cache):
    pretrained = fit("hf_pretrained", task, hf_options(checkpoints["bert"]))
    twin = fit("hf_scratch", task, hf_options(checkpoints["bert"], twin=True))
    again = fit("hf_scratch", task, hf_options(checkpoints["bert"], twin=True), seed=5)
    assert twin.backbone.weights == again.backbone.weights != pretrained.backbone.weights
    probe._memory.clear()
    first, second = (probe.embed(t.backbone.build(), probe.tokenize(t.backbone.tokenizer, task.dev),
                                 t.backbone.tokenizer.pad_id, BATCHED, [(-1, "mean")])[0][(-1, "mean")]
                     for t in (twin, again))
    np.testing.assert_array_equal(first, second)  # the same random network whichever seed trains the head
    assert np.abs(first - pretrained.features("dev").features).max() > 1e-3  # and not the checkpoint's


def test_the_backbone_stays_frozen_and_the_exported_probe_scores_raw_dna(checkpoints, task, cache, tmp_path):
    from harness.serving import load_exported

    fitted = fit("hf_pretrained", task, hf_options(checkpoints["bert"]), {"layer": -2, "pooling": "first"})
    assert fitted.n_params == sum(p.numel() for p in fitted.head.parameters()) < 1000  # the head's only
    fitted.export(tmp_path / "export")
    predictor = load_exported(tmp_path / "export", "cpu")
    np.testing.assert_allclose(predictor.predict(task.test.sequences), fitted.predict("test"), atol=1e-5, rtol=0)
    # The exported backbone is the checkpoint's, untouched by training.
    from transformers import AutoModel

    original = AutoModel.from_pretrained(str(checkpoints["bert"]))
    exported = predictor.model.backbone.backbone
    for name, weight in original.state_dict().items():
        if not name.startswith("pooler."):
            torch.testing.assert_close(exported.state_dict()[name], weight, msg=name)


def test_a_harness_checkpoint_probes_through_init(task, cache, tmp_path):
    """Any torch arm given init= (here a ConvNova masked LM as `pretrain` writes it): its one layer."""
    arm = ARMS.get("convnova_char")
    folder = tiny_checkpoint(arm, task, tmp_path / "convnova")
    options = RunOptions(BATCHED, init=folder, mode="probe", probe_views=((-1, "max"), (-1, "mean")))
    assert arm.variant(options).endswith("+probe") and "@" in arm.variant(options)
    fitted = arm.fit(task, {**HEAD, "pooling": "max"}, 0, Budget(2, None), options)
    assert fitted.predict("test").shape == (len(task.test), 2)
    assert fitted.view == (-1, "max")


def test_dnabert2_fixture_probes_each_of_its_layers(cache, tmp_path):
    """The tiny DNABERT-2 of ../shared with the published tokenizer: the embeddings and each layer's output are
    views a probe reads, each its own representation, the embeddings layer as readable as the last."""
    mlm, tokenizer = shared_path("fixtures", "dnabert2_tiny", "mlm"), shared_path("dnabert2", "tokenizer.json")
    arm = ARMS.get("dnabert2_pretrained")
    options = RunOptions(BATCHED, tokenizer_path=str(tokenizer), init=str(mlm), mode="probe")
    count = arm.hidden_state_count(options)
    assert count == 3  # the embeddings, then 2 layers
    views = tuple((layer, "mean") for layer in range(-count, 0))
    rng = np.random.default_rng(1)
    task = TaskData("synthetic/variable_length", *(variable_length_split(n, rng) for n in (64, 32, 32)), 2, "test")
    fitted = arm.fit(task, {**HEAD, "layer": -count}, 0, Budget(2, None), replace(options, probe_views=views))
    assert fitted.predict("dev").shape == (32, 2)
    layers = [probe.embeddings(fitted.backbone, task, "dev", view, views, BATCHED)[0].features for view in views]
    for first, second in ((0, 1), (1, 2), (0, 2)):
        assert np.abs(layers[first] - layers[second]).max() > 1e-3, (views[first], views[second])


# ------------------------------------------------------------------------------------ refused up front
def smoke(*extra: str, arm: str) -> int:
    return main(["run", "--arm", arm, "--study", "smoke", "--tasks", "synthetic/motif_binary", "--n-trials", "2",
                 "--seeds", "1", "--device", "cpu", "--mode", "probe", *extra])


@pytest.mark.parametrize("arm, extra, message", [
    ("kmer_logreg", (), "is not a neural network"),
    ("unet_char", (), "has no checkpoint here"),
])
def test_probe_mode_without_a_network_to_freeze_is_refused(arm, extra, message, workdir, capsys):
    assert smoke(*extra, arm=arm) == 2
    err = capsys.readouterr().err
    assert message in err and "mode=probe" in err and "Traceback" not in err
    assert not (workdir / "mlflow.db").exists() or not MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()], "attributes.status = 'RUNNING'")


def study_with(tmp_path: Path, **probe_space) -> str:
    import yaml

    from harness.studies import load_study

    raw = yaml.safe_load(Path(load_study("smoke").path).read_text())
    raw["search_spaces"]["probe"].update(probe_space)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("space, message", [
    ({"layer": {"type": "categorical", "choices": [-1, -4]}}, "layer must be in -3..-1"),
    ({"pooling": {"type": "categorical", "choices": ["mean", "attention"]}}, "one of first, max, mean"),
    ({"head": {"type": "categorical", "choices": ["linear", "transformer"]}}, "one of linear, mlp"),
    ({"layer": {"type": "categorical", "choices": [0, -1]}}, "an integer <= -1"),
])
def test_a_probe_space_the_network_cannot_serve_is_refused(space, message, workdir, checkpoints, tmp_path, capsys):
    code = main(["run", "--arm", "hf_pretrained", "--checkpoint", str(checkpoints["bert"]), "--study",
                 study_with(tmp_path, **space), "--tasks", "synthetic/motif_binary", "--device", "cpu",
                 "--mode", "probe"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "search_spaces.probe" in err, err


def test_the_control_space_is_accepted(workdir, checkpoints, tmp_path):
    """The negative control of the refusals above: the same check passes the smoke study's own probe space."""
    from harness.request import RunRequest

    request = RunRequest.parse({"arm": "hf_pretrained", "checkpoint": str(checkpoints["bert"]), "study": "smoke",
                                "tasks": "synthetic/motif_binary", "mode": "probe", "device": "cpu"})
    request.validate()
    assert request.parameters()["mode"] == "probe"
    assert request.options(ARMS.get("hf_pretrained"), "synthetic/motif_binary").probe_views == VIEWS
    # A sweep's default arms, probed: those the checkpoint concerns; without one, none, which is an error.
    sweep = RunRequest.parse({"study": "smoke", "mode": "probe", "checkpoint": str(checkpoints["bert"])})
    assert sweep.arms == ("hf_pretrained", "hf_scratch")
    with pytest.raises(ParameterError, match="no arm of .* has one here"):
        RunRequest.parse({"study": "smoke", "mode": "probe"})


# ---------------------------------------------------------------------------------- the command line
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "esm"])
def test_probe_of_a_checkpoint_and_its_twin_through_the_cli(kind, workdir, checkpoints, monkeypatch):
    """hf_pretrained and hf_scratch, probed: finals with test_mcc, the embedding pass counted once per cell, the
    second trial on cached embeddings, and the registered probe scoring raw DNA."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(workdir / "cache"))
    probe._memory.clear()
    folder = str(checkpoints[kind])
    for arm in ("hf_pretrained", "hf_scratch"):
        assert main(["run", "--arm", arm, "--checkpoint", folder, "--study", "smoke", "--tasks",
                     "synthetic/motif_binary", "--n-trials", "2", "--seeds", "2", "--device", "cpu",
                     "--mode", "probe"]) == 0, arm
    from harness.checkpoints import open_hf_checkpoint

    sha = open_hf_checkpoint(folder).fingerprint[:8]
    pretrained, twin = parent(f"hf_pretrained@{sha}+probe"), parent(f"hf_scratch~{sha}+probe")
    client = MlflowClient()
    for p in (pretrained, twin):
        assert p.data.tags[Tag.MODE] == "probe" and "test_mcc_mean" in p.data.metrics
        assert "embedding the splits once" in p.data.tags[Tag.NOTE]
        trials = sorted(client.search_runs([p.info.experiment_id], f"tags.`mlflow.parentRunId` = '{p.info.run_id}' "
                                                                    "and tags.stage = 'trial'"),
                        key=lambda r: int(r.data.tags[Tag.TRIAL_NUMBER]))
        assert [t.data.tags[Tag.EMBEDDINGS] for t in trials] == ["train computed, dev computed",
                                                                   "train cached, dev cached"]
    # In MLflow's charts a probe has its arm's colour, lighter: the pair reads together, and apart.
    from harness.tuning import arm_color

    assert pretrained.data.tags[Tag.RUN_COLOR] == arm_color("hf_pretrained", "probe") != arm_color("hf_pretrained")
    # The twins differ in their initial weights only.
    assert pretrained.data.tags[Tag.ARCHITECTURE_SHA] == twin.data.tags[Tag.ARCHITECTURE_SHA]
    assert pretrained.data.tags[Tag.SEARCH_SPACE] == twin.data.tags[Tag.SEARCH_SPACE] == "probe"
    for arm, runs in finals().items():
        assert len(runs) == 2 and all(-1 <= r.data.metrics["test_mcc"] <= 1 for r in runs), arm
        assert {r.data.tags[Tag.EMBEDDINGS] for r in runs} <= {"train cached, dev cached, test computed",
                                                                 "train cached, dev cached, test cached"}
        embed = {r.data.metrics[Metric.EMBED_SECONDS] for r in runs}
        assert len(embed) == 1 and embed.pop() > 0  # the cell's one pass, the same on every seed
    name = pretrained.data.tags[Tag.REGISTERED_MODEL]
    task = load_task("synthetic/motif_binary")
    probs = mlflow.pyfunc.load_model(f"models:/{name}").predict(task.test.sequences[:10])
    assert probs.shape == (10, 2)
