"""ConvNova against the original's outputs, checkpoints and init=, masked-LM pretraining, and the
pretrain -> fine-tune round trip through the command line."""

from __future__ import annotations

import csv
import gzip
import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from analysis.cli import main as analyze
from conftest import shared_path
from harness.arms import ARMS, Budget, RunOptions
from harness.checkpoints import open_checkpoint, save_checkpoint
from harness.cli import main
from harness.errors import CheckpointError, DataError, ParameterError
from harness.models import MODELS, count_parameters, logits_of
from harness.models.convnova import ConvNova, ConvNovaConfig, dilation_schedule, load_original_state_dict
from harness.models.weights import read_state_dict
from harness.pretrain import cut_windows, read_corpus
from harness.runtime import CPU
from harness.studies import load_study
from harness.tasks import load_task
from harness.tokenizers import MASK, PAD, BPETokenizer, CharTokenizer
from harness.train import N_SPECIAL, mask_tokens


# ------------------------------------------------------------------------------------------- ConvNova
def fixture_convnova() -> tuple[ConvNova, dict]:
    from safetensors.torch import load_file

    folder = shared_path("fixtures", "convnova_small")
    raw = json.loads((folder / "config.json").read_text())
    config = ConvNovaConfig(**{k: raw[k] for k in ("hidden_dim", "kernel_size", "num_conv1d", "num_cnn_stacks",
                                                   "dilation_base", "dilation_max", "d_inner", "ffn", "dropout")})
    model = ConvNova(config).eval()
    load_original_state_dict(model, load_file(str(folder / "model.safetensors")))
    return model, load_file(str(folder / "expected.safetensors"))


@torch.no_grad()
def test_convnova_matches_the_original():
    model, expected = fixture_convnova()
    features = model(expected["input_ids"].long())
    torch.testing.assert_close(features, expected["features"], atol=1e-5, rtol=0)
    torch.testing.assert_close(features.mean(1), expected["pooled"], atol=1e-5, rtol=0)
    assert dilation_schedule(model.config) == [1, 1, 1, 4, 16]


@torch.no_grad()
def test_convnova_reads_harness_nucleotide_tokens_like_the_original():
    """Harness char ids (A..N = 5..9, specials) map onto the original's alphabet: same features."""
    model, expected = fixture_convnova()
    alphabet_ids = expected["input_ids"].long()
    harness_ids = alphabet_ids + N_SPECIAL  # A=0 -> 5 ... N=4 -> 9
    mapped = ConvNova(model.config, input_map=MODELS.get("convnova").classifier(
        {"hidden_dim": 32}, CharTokenizer(), 2, 0.0).encoder.input_map).eval()
    mapped.load_state_dict(model.state_dict())
    torch.testing.assert_close(mapped(harness_ids), model(alphabet_ids), atol=0, rtol=0)
    padded = torch.where(alphabet_ids == 4, PAD, harness_ids)  # [PAD] is read as N, as the original pads
    torch.testing.assert_close(mapped(padded), model(alphabet_ids), atol=0, rtol=0)


def test_convnova_strict_loading_names_the_problem():
    model, _ = fixture_convnova()
    state = model.state_dict()
    with pytest.raises(CheckpointError, match="lacks 1 weight.*convs.4.weight"):
        load_original_state_dict(ConvNova(model.config), {k: v for k, v in state.items() if k != "convs.4.weight"})
    with pytest.raises(CheckpointError, match="does not know.*final_conv"):
        load_original_state_dict(ConvNova(model.config), {**state, "final_conv.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not fit this model's architecture.*size mismatch"):
        load_original_state_dict(ConvNova(ConvNovaConfig(hidden_dim=64)), state)
    load_original_state_dict(ConvNova(model.config), {**state, "out_linear.weight": torch.zeros(1)})  # a head: unused


def test_convnova_sizes_are_near_the_published_ones():
    assert 400_000 <= count_parameters(ConvNova(ConvNovaConfig(hidden_dim=64))) <= 500_000
    assert 1_600_000 <= count_parameters(ConvNova(ConvNovaConfig(hidden_dim=128))) <= 1_900_000


# ------------------------------------------------------------------------------------ masked-LM objective
def test_masking_follows_bert():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(N_SPECIAL, 100, (64, 200))
    ids[:, 0], ids[:, -40:] = 1, PAD  # [CLS] and padding are never picked
    mask = (ids != PAD).long()
    inputs, labels = mask_tokens(ids, mask, 100, 0.15, generator)
    picked = labels != -100
    assert not picked[:, 0].any() and not picked[:, -40:].any()
    assert picked.float().sum() / (ids >= N_SPECIAL).sum() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[picked], ids[picked])
    assert torch.equal(inputs[~picked], ids[~picked])  # nothing else changes
    became_mask = (inputs[picked] == MASK).float().mean()
    kept = (inputs[picked] == ids[picked]).float().mean()
    assert became_mask == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1 + 0.1 / 95, abs=0.02)  # 10% kept, plus random draws of the same id
    assert (inputs >= N_SPECIAL).logical_or(inputs == MASK).logical_or(ids < N_SPECIAL).all()


def test_masking_picks_at_least_one_token():
    ids = torch.tensor([[1, 7, 2]])
    _, labels = mask_tokens(ids, torch.ones_like(ids), 10, 1e-9, torch.Generator().manual_seed(0))
    assert labels.tolist() == [[-100, 7, -100]]


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("model_name,tokenizer", [("unet", "char"), ("convnova", "char"), ("convnova", "bpe"),
                                                  ("dnabert2", "bpe"), ("dnabert2", "char")])
def test_masked_lm_checkpoint_loads_into_a_classifier(model_name, tokenizer, tmp_path):
    tok = CharTokenizer() if tokenizer == "char" else BPETokenizer.train(["ACGTACGGTTAC" * 20, "GGCATTACA" * 30], 40)
    spec = MODELS.get(model_name)
    architecture = spec.architecture(tok, {"hidden_dim": 16, "hidden_size": 24, "num_hidden_layers": 1,
                                           "num_attention_heads": 3, "intermediate_size": 32})
    mlm = spec.masked_lm(architecture, tok, 0.1)
    folder = save_checkpoint(tmp_path / "ckpt", model_name, architecture, mlm, tok, {"seconds": 1.0, "flops": 2.0})
    ckpt = open_checkpoint(str(folder))
    assert (ckpt.model, ckpt.tokenizer, ckpt.architecture) == (model_name, tokenizer, architecture)
    torch.manual_seed(1)
    clf = spec.classifier(ckpt.architecture, tok, 3, 0.1)
    clf.load_published_state_dict(ckpt.state_dict())
    mlm_state, clf_state = mlm.state_dict(), clf.state_dict()
    shared = [k for k in clf_state if k in mlm_state]
    assert len(shared) >= len(clf_state) - 4  # everything but the new head (and DNABERT-2's pooler)
    for k in shared:
        torch.testing.assert_close(clf_state[k], mlm_state[k], atol=0, rtol=0)
    ids = torch.tensor([tok.encode(["ACGTACGTAC"])[0].tolist()])
    assert logits_of(clf.eval()(ids, torch.ones_like(ids))).shape == (1, 3)


def test_classifier_refuses_a_checkpoint_that_does_not_fit():
    tok, spec = CharTokenizer(), MODELS.get("convnova")
    mlm = spec.masked_lm({"hidden_dim": 16, "kernel_size": 9, "num_conv1d": 5, "dilation_base": 4}, tok, 0.0)
    clf = spec.classifier({"hidden_dim": 16, "kernel_size": 9, "num_conv1d": 5, "dilation_base": 4}, tok, 2, 0.0)
    state = mlm.state_dict()
    with pytest.raises(CheckpointError, match="lacks 1 weight.*encoder.linear.bias"):
        clf.load_published_state_dict({k: v for k, v in state.items() if k != "encoder.linear.bias"})
    with pytest.raises(CheckpointError, match="does not know.*encoder.extra"):
        clf.load_published_state_dict({**state, "encoder.extra": torch.zeros(1)})
    # Another classifier's head (3 classes) is never taken: this one's is new.
    other = spec.classifier({"hidden_dim": 16, "kernel_size": 9, "num_conv1d": 5, "dilation_base": 4}, tok, 3, 0.0)
    before = clf.classifier.weight.detach().clone()
    clf.load_published_state_dict(other.state_dict())
    torch.testing.assert_close(clf.classifier.weight, before, atol=0, rtol=0)


def test_init_must_fit_the_arm(tmp_path):
    tok, spec = CharTokenizer(), MODELS.get("convnova")
    arch = spec.architecture(tok, {"hidden_dim": 16})
    folder = save_checkpoint(tmp_path / "c", "convnova", arch, spec.masked_lm(arch, tok, 0.0), tok, {})
    study = load_study("smoke")
    ARMS.get("convnova_char").validate(study, RunOptions(CPU, init=str(folder)))
    with pytest.raises(CheckpointError, match="holds a convnova model on char tokens; arm unet_char is unet"):
        ARMS.get("unet_char").validate(study, RunOptions(CPU, init=str(folder)))
    with pytest.raises(ParameterError, match="kmer_logreg is not a neural network"):
        ARMS.get("kmer_logreg").validate(study, RunOptions(CPU, init=str(folder)))
    with pytest.raises(CheckpointError, match="no such folder"):
        ARMS.get("convnova_char").validate(study, RunOptions(CPU, init=str(tmp_path / "nowhere")))
    for name, text, problem in (("broken", "{not json", "is not valid JSON"), ("foreign", '{"model": "x"}', "lacks")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "harness.json").write_text(text)
        with pytest.raises(CheckpointError, match=f"harness.json {problem}"):
            ARMS.get("convnova_char").validate(study, RunOptions(CPU, init=str(tmp_path / name)))


# ------------------------------------------------------------------------------ dnabert2_pretrained arm
def test_dnabert2_pretrained_fine_tunes_the_published_layout(tiny_gue, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint = str(shared_path("fixtures", "dnabert2_tiny", "mlm"))
    tokenizer = str(shared_path("dnabert2", "tokenizer.json"))
    arm, study = ARMS.get("dnabert2_pretrained"), load_study("smoke")
    with pytest.raises(ParameterError, match="needs? checkpoint=|pass checkpoint="):
        arm.validate(study, RunOptions(CPU))
    options = RunOptions(CPU, init=checkpoint)
    with pytest.raises(CheckpointError, match="has no tokenizer.json; pass its tokenizer with tokenizer="):
        arm.validate(study, options)
    options = RunOptions(CPU, init=checkpoint, tokenizer_path=tokenizer)
    arm.validate(study, options)
    task = load_task("toy/motif_binary", str(tiny_gue))
    fitted = arm.fit(task, {"lr": 1e-3, "batch_size": 16}, 0, Budget(1, None), options)
    assert fitted.architecture["hidden_size"] == 96 and fitted.n_params > 400_000  # the checkpoint's size
    assert options.init_factor == options.checkpoint.fingerprint and arm.inherited_cost(options) == {}
    assert arm.tags(options)["pretrain_cost_source"] == "not recorded: pass pretrain_cost="
    # The encoder started from the checkpoint: its word embeddings are the checkpoint's, before training.
    model, _ = arm.build_model(fitted.tokenizer, 2, {}, options)
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight,
                               read_state_dict(open_checkpoint(checkpoint).folder)["bert.embeddings.word_embeddings.weight"])


def test_dnabert2_pretrained_without_checkpoint_is_a_clear_cli_error(workdir, tiny_study, capsys):
    assert main(["run", "--arm", "dnabert2_pretrained", "--study", str(tiny_study)]) == 2
    assert "pass checkpoint=" in capsys.readouterr().err
    assert not list(MlflowClient().search_experiments(filter_string="name = 'tiny'"))


# ------------------------------------------------------------------------------------------------ corpus
def test_corpus_formats_and_windows(tmp_path, tiny_gue):
    fasta = tmp_path / "c.fa.gz"
    with gzip.open(fasta, "wt") as f:
        f.write(">a\nACGTacgtRY\nA\n>b desc\n\nNNNNNNNNNNNNACGT\n")
    assert read_corpus(fasta) == ["ACGTACGTNNA", "NNNNNNNNNNNNACGT"]
    # Dropped: a tail shorter than half a window (NNA) and a window more than half N (NNNNNNNN).
    assert cut_windows(read_corpus(fasta), 8) == ["ACGTACGT", "NNNNACGT"]
    (tmp_path / "bad.fa").write_text(">a\nACGT\nAC-T\n")
    with pytest.raises(DataError, match=r"bad.fa, line 3: character '-'"):
        read_corpus(tmp_path / "bad.fa")
    folder = read_corpus(tiny_gue)  # a GUE folder: train.csv files only
    assert len(folder) == 160 + 150
    with pytest.raises(DataError, match="unknown format"):
        (tmp_path / "x.txt").write_text("ACGT")
        read_corpus(tmp_path / "x.txt")


# ------------------------------------------------------------------------- pretrain -> fine-tune round trip
def write_corpus(path, n=12, length=400, seed=0):
    rng = np.random.default_rng(seed)
    with gzip.open(path, "wt") as f:
        for i in range(n):
            f.write(f">seq{i}\n" + "".join(rng.choice(list("ACGT"), length)) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["convnova_char", "dnabert2_char_scratch"])
def test_pretrain_then_fine_tune_records_source_and_cost(arm, workdir, tiny_gue, tiny_study):
    corpus = write_corpus(workdir / "corpus.fa.gz")
    assert main(["pretrain", "--arm", arm, "--corpus", str(corpus), "--study", str(tiny_study), "--window", "64",
                 "--steps", "6", "--batch-size", "8", "--lr", "1e-3", "--output", "ckpt"]) == 0
    client = MlflowClient()
    (pre,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    assert pre.info.status == "FINISHED" and pre.data.tags["stage"] == "pretrain"
    assert pre.data.metrics["pretrain_seconds"] > 0 and pre.data.metrics["pretrain_flops"] > 0
    losses = [m.value for m in client.get_metric_history(pre.info.run_id, "mlm_loss")]
    assert len(losses) >= 3 and all(np.isfinite(losses))
    assert "eval_mlm_accuracy" in pre.data.metrics
    artifacts = {a.path for a in client.list_artifacts(pre.info.run_id, "checkpoint")}
    assert {"checkpoint/harness.json", "checkpoint/model.safetensors"} <= artifacts
    assert json.loads((workdir / "ckpt" / "harness.json").read_text())["pretraining"]["run_id"] == pre.info.run_id

    uri = f"runs:/{pre.info.run_id}/checkpoint"
    assert main(["run", "--arm", arm, "--study", str(tiny_study), "--data", str(tiny_gue), "--n-trials", "1",
                 "--seeds", "1", "--init", uri]) == 0
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {r.data.tags["stage"] for r in runs} == {"study", "trial", "final"}
    for r in runs:
        assert r.data.tags["variant"] == f"{arm}@{r.data.tags['init'][:8]}" and r.data.tags["init_source"] == uri
        assert r.data.tags["pretrain_run_id"] == pre.info.run_id
    for r in runs:
        if r.data.tags["stage"] in ("study", "final"):
            assert r.data.metrics["pretrain_seconds"] == pytest.approx(pre.data.metrics["pretrain_seconds"])
            assert r.data.metrics["pretrain_flops"] == pytest.approx(pre.data.metrics["pretrain_flops"])
    variant = {r.data.tags["variant"] for r in runs}
    assert len(variant) == 1 and variant.pop().startswith(f"{arm}@")
    # The scratch twin is another variant: its own Optuna study, beside the fine-tuned one in one experiment.
    assert main(["run", "--arm", arm, "--study", str(tiny_study), "--data", str(tiny_gue), "--n-trials", "1",
                 "--seeds", "1"]) == 0
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.stage = 'final'")
    assert sorted(r.data.tags["init"] == "scratch" for r in runs) == [False, True]
    assert {r.data.tags["variant"] for r in runs if r.data.tags["init"] == "scratch"} == {arm}
    # The analysis pairs the two as a pretraining contrast and charges the pretraining cost to the variant.
    assert analyze(["--experiment", "tiny", "--out", "report", "--no-log"]) == 0
    (pretraining,) = [r for r in csv.DictReader(open(workdir / "report" / "contrasts.csv")) if r["effect"] == "pretraining"]
    assert pretraining["a"].startswith(f"{arm}@") and pretraining["b"] == arm and pretraining["n_tasks"] == "1"
    assert float(pretraining["a_pretrain_seconds"]) == pytest.approx(pre.data.metrics["pretrain_seconds"])


def test_pretrain_refuses_an_output_that_is_a_file_before_training(workdir, capsys):
    (workdir / "taken").write_text("a file")
    assert main(["pretrain", "--arm", "convnova_char", "--corpus", "nowhere.fa", "--output", "taken"]) == 2
    assert "output=taken is a file" in capsys.readouterr().err
    assert main(["pretrain", "--arm", "kmer_logreg", "--corpus", "nowhere.fa"]) == 2
    assert "not a neural network" in capsys.readouterr().err


def test_tokenizer_entry_point_logs_a_usable_tokenizer(workdir, tiny_gue):
    assert main(["tokenizer", "--corpus", str(tiny_gue), "--vocab-size", "64", "--window", "100"]) == 0
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("tokenizers").experiment_id])
    assert run.data.tags["stage"] == "tokenizer" and run.data.metrics["nt_per_token"] > 1
    local = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/tokenizer.json")
    assert BPETokenizer.from_file(local).vocab_size == 64
