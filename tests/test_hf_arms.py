"""The hf arms (harness/arms/hf.py): any native transformers masked LM fine-tuned with its own tokenizer
(`hf_pretrained`) and its random-weight twin (`hf_scratch`).

Tiny checkpoints are built here with transformers' own classes and `save_pretrained` (no hub): a BERT with a
DNA BPE vocabulary (a `PreTrainedTokenizerFast`, GROVER-like) and an ESM with a 6-mer vocabulary laid out as
Nucleotide Transformer's (`EsmTokenizer`: <unk> <pad> <mask> <cls> <eos>, the 4096 6-mers, then A C G T N).
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.arms import ARMS, Budget, RunOptions
from harness.cli import main
from harness.runtime import CPU
from harness.tasks import load_task

NT_SPECIALS = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>"]
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BertForMaskedLM on a 64-token DNA BPE ([CLS] ... [SEP]), saved with its tokenizer."""
    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    corpus = ["".join(rng.choice(list("ACGT"), 200)) for _ in range(50)]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=64, special_tokens=["[UNK]", "[CLS]", "[SEP]",
                                                                                          "[PAD]", "[MASK]"],
                                                        initial_alphabet=list("ACGTN"), show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]", cls_token="[CLS]",
                                        sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=3, max_position_embeddings=128, **TINY)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_esm(folder: Path) -> Path:
    """A 2-layer EsmForMaskedLM on Nucleotide Transformer's 6-mer vocabulary, saved with its EsmTokenizer."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = NT_SPECIALS + ["".join(k) for k in itertools.product("ACGT", repeat=6)] + list("ACGTN")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = EsmTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = EsmConfig(vocab_size=len(vocab), pad_token_id=1, mask_token_id=2, max_position_embeddings=64,
                       position_embedding_type="absolute", token_dropout=False, **TINY)
    EsmForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_checkpoints")
    return {"bert": tiny_bert(root / "bert"), "esm": tiny_esm(root / "esm")}


def options(folder: Path, twin: bool = False) -> RunOptions:
    return RunOptions(CPU, init=str(folder), twin=twin, checkpoint_reader="hf")


# ------------------------------------------------------------------------------------------ tokenizers
def test_esm_tokenizer_reads_dna_as_nucleotide_transformers_6mers(checkpoints):
    from harness.tokenizers import hf_tokenizer

    tok = hf_tokenizer(str(checkpoints["esm"]))
    vocab = (checkpoints["esm"] / "vocab.txt").read_text().split()
    ids = tok.encode(["ACGTACGTACGTAC"])[0]
    # The tokenizer's own special tokens around two 6-mers and the 2 nucleotides left over, one by one.
    assert [vocab[i] for i in ids] == ["<cls>", "ACGTAC", "GTACGT", "A", "C", "<eos>"]
    assert (tok.name, tok.pad_id, tok.vocab_size) == ("hf", 1, 5 + 4096 + 5)


def test_tokenizer_fingerprint_is_its_files_content(checkpoints, tmp_path):
    from harness.tokenizers import HFTokenizer

    tok = HFTokenizer(checkpoints["bert"])
    tok.save(tmp_path / "copy")
    assert HFTokenizer(tmp_path / "copy").fingerprint == tok.fingerprint  # the same files elsewhere
    assert tok.encode(["ACGTNNACGT"])[0][[0, -1]].tolist() == [1, 2]  # its own [CLS] ... [SEP]
    # Negative control: another vocabulary is another tokenizer.
    other = tmp_path / "other"
    shutil.copytree(checkpoints["esm"], other)
    (other / "vocab.txt").write_text((other / "vocab.txt").read_text().replace("ACGTAC\n", "ACGTAX\n"))
    assert HFTokenizer(other).fingerprint != HFTokenizer(checkpoints["esm"]).fingerprint


def test_a_lower_casing_tokenizer_is_refused(checkpoints, tmp_path):
    """BERT's default lower-cases: upper-case DNA would become unknown tokens only, silently."""
    from transformers import BertTokenizerFast

    from harness.errors import CheckpointError
    from harness.tokenizers import HFTokenizer

    nucleotides = [*"ACGTN", *(f"##{b}" for b in "ACGTN")]  # WordPiece: a word's first piece, then its continuations
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *nucleotides]) + "\n")
    BertTokenizerFast(str(tmp_path / "vocab.txt"), do_lower_case=True).save_pretrained(tmp_path / "lower")
    with pytest.raises(CheckpointError, match="unknown tokens only"):
        HFTokenizer(tmp_path / "lower")
    BertTokenizerFast(str(tmp_path / "vocab.txt"), do_lower_case=False).save_pretrained(tmp_path / "upper")
    assert HFTokenizer(tmp_path / "upper").encode(["ACGT"])[0].tolist() == [2, 5, 11, 12, 13, 3]


# ------------------------------------------------------------------------------------------ the network
@pytest.mark.parametrize("kind", ["bert", "esm"])
def test_pretrained_backbone_holds_the_checkpoints_weights_and_the_twin_does_not(checkpoints, kind):
    from transformers import AutoModelForMaskedLM

    arm, folder = ARMS.get("hf_pretrained"), checkpoints[kind]
    tok = arm.build_tokenizer(None, options(folder))
    # The masked LM as transformers reads it back (it renames some keys on saving: LayerNorm gamma/beta).
    saved = AutoModelForMaskedLM.from_pretrained(str(folder)).base_model.state_dict()
    pretrained, _ = arm.build_model(tok, 2, {"pooling": "mean"}, options(folder))
    twin, _ = ARMS.get("hf_scratch").build_model(tok, 2, {"pooling": "mean"}, options(folder, twin=True))
    backbone, scratch = pretrained.backbone.state_dict(), twin.backbone.state_dict()
    assert set(backbone) == set(scratch) and not any(k.startswith("pooler.") for k in backbone)
    for key, value in backbone.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    differing = [k for k in backbone if k.endswith("weight") and not torch.equal(backbone[k], scratch[k])
                 and "LayerNorm" not in k and "layer_norm" not in k]
    assert len(differing) >= 10  # the twin: random weights (layer norms start at 1 either way)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_padding_never_changes_a_prediction(checkpoints, pooling):
    from harness.tokenizers import TokenizedSplit
    from harness.train import predict

    arm, folder = ARMS.get("hf_pretrained"), checkpoints["bert"]
    tok = arm.build_tokenizer(None, options(folder))
    model, _ = arm.build_model(tok, 3, {"pooling": pooling}, options(folder))
    torch.nn.init.normal_(model.classifier.weight)
    sequences = ["ACGTACGTTTGACCA", "GGCAT", "TTTTACGATCGATCGATCGGGAAACNNACGT"]
    encoded = tok.encode(sequences)

    def split(rows):
        offsets = np.concatenate(([0], np.cumsum([len(r) for r in rows])))
        return TokenizedSplit(np.concatenate(rows), offsets, np.zeros(len(rows), dtype=np.int64))

    batched = predict(model, split(encoded), tok.pad_id, CPU)
    alone = np.concatenate([predict(model, split([row]), tok.pad_id, CPU) for row in encoded])
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)
    # The sequences are told apart (so the check can fail): their log-probabilities differ (measured >= 5e-3).
    assert np.abs(np.log(batched[0]) - np.log(batched[1])).max() > 1e-3


def test_fit_export_and_serving_predict_the_same(checkpoints, tiny_gue, tmp_path):
    from harness.serving import load_exported

    task = load_task("toy/motif_binary", str(tiny_gue))
    fitted = ARMS.get("hf_pretrained").fit(task, {"lr": 2e-3, "batch_size": 32, "pooling": "first"}, 0, Budget(1),
                                           options(checkpoints["esm"]))
    fitted.export(tmp_path / "export")
    assert (tmp_path / "export" / "backbone" / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "export" / "tokenizer").iterdir()) == ["tokenizer_config.json",
                                                                                      "vocab.txt"]
    served = load_exported(tmp_path / "export", "cpu").predict(task.test.sequences)
    np.testing.assert_allclose(served, fitted.predict("test"), atol=1e-6, rtol=0)
    # ESM counts positions from <pad>'s id + 1 = 2, so 64 position embeddings embed 62 tokens: the cap. One more
    # token would index past the table (the control that the cap is the network's limit, not below it).
    assert fitted.options.max_length == 62
    ids = torch.full((1, 62), 5)
    fitted.model.backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
    with pytest.raises(IndexError):
        fitted.model.backbone(input_ids=torch.full((1, 63), 5), attention_mask=torch.ones(1, 63, dtype=torch.long))


# ---------------------------------------------------------------------------- refused before anything runs
def run(checkpoint: str, *extra: str, arm: str = "hf_pretrained") -> int:
    return main(["run", "--arm", arm, "--checkpoint", checkpoint, "--study", "smoke", "--tasks",
                 "synthetic/motif_binary", "--n-trials", "2", "--seeds", "1", "--device", "cpu", *extra])


def test_custom_code_config_is_refused_before_any_run(workdir, checkpoints, tmp_path, capsys):
    folder = tmp_path / "dnabert2_like"
    shutil.copytree(checkpoints["bert"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "bert_layers.BertModel", "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM"}
    (folder / "config.json").write_text(json.dumps(config))
    for arm in ("hf_pretrained", "hf_scratch"):
        assert run(str(folder), arm=arm) == 2
        err = capsys.readouterr().err
        assert "custom code" in err and "trust_remote_code" in err and "dnabert2_pretrained" in err
        assert "convert the checkpoint" in err
    assert not (workdir / "optuna.db").exists()
    assert MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()]) == []
    # Negative control: the same folder without auto_map is accepted (the refusal is about custom code).
    assert run(str(checkpoints["bert"]), "--n-trials", "1", "--study", str(one_epoch_study(tmp_path))) == 0


def test_dnabert2_published_config_is_refused_pointing_to_the_native_arm(tmp_path):
    """DNABERT-2's published config.json (../shared/dnabert2) names its custom code: refused when opened."""
    from conftest import shared_path

    from harness.checkpoints import open_hf_checkpoint
    from harness.errors import CheckpointError

    folder = tmp_path / "DNABERT-2-117M"
    folder.mkdir()
    shutil.copy(shared_path("dnabert2", "config.json"), folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"")  # opening reads the config, not the weights
    with pytest.raises(CheckpointError, match="custom code .* use arm dnabert2_pretrained"):
        open_hf_checkpoint(str(folder))


def test_a_harness_checkpoint_is_not_an_hf_one(tmp_path, checkpoints):
    from harness.checkpoints import MANIFEST, open_checkpoint, open_hf_checkpoint
    from harness.errors import CheckpointError
    from harness.request import checkpoint_fits

    folder = tmp_path / "harness_ckpt"
    shutil.copytree(checkpoints["bert"], folder)
    (folder / MANIFEST).write_text("{}")
    with pytest.raises(CheckpointError, match="a harness checkpoint"):
        open_hf_checkpoint(str(folder))
    # Another arm's checkpoint never concerns the hf arms (a sweep of several arms skips them), and an hf one does.
    assert not checkpoint_fits(str(folder), ARMS.get("hf_scratch"))
    assert checkpoint_fits(str(checkpoints["bert"]), ARMS.get("hf_scratch"))
    # ...and a native transformers checkpoint is not DNABERT-2's, whose arm points to hf_pretrained instead.
    for kind in ("bert", "esm"):
        assert not checkpoint_fits(str(checkpoints[kind]), ARMS.get("dnabert2_pretrained"))
        with pytest.raises(CheckpointError, match="not DNABERT-2; fine-tune it with arm hf_pretrained"):
            open_checkpoint(str(checkpoints[kind]))


def test_hub_id_offline_fails_fast_asking_for_a_local_folder(workdir, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert run("InstaDeepAI/nucleotide-transformer-500m-human-ref") == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    assert "InstaDeepAI/nucleotide-transformer-500m-human-ref: not a local checkpoint folder" in err
    assert "checkpoint=<that local folder>" in err


def test_hf_scratch_needs_a_checkpoint(workdir, capsys):
    assert main(["run", "--arm", "hf_scratch", "--study", "smoke", "--tasks", "synthetic/motif_binary"]) == 2
    assert "needs checkpoint=" in capsys.readouterr().err


def one_epoch_study(folder: Path) -> Path:
    """The smoke study's hf space, 1 epoch: fast, for checks that need a run to start."""
    import yaml

    from harness.studies import load_study

    raw = yaml.safe_load(Path(load_study("smoke").path).read_text())
    raw["budget"] = {"n_trials": 1, "max_epochs": 1, "patience": 1, "seeds": 1}
    path = folder / "one_epoch.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ---------------------------------------------------------------------------------- the command line
def finals(experiment: str = "smoke") -> dict[str, list]:
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], "tags.stage = 'final'")
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags["arm"], []).append(r)
    return out


def parent(variant: str, experiment: str = "smoke"):
    client = MlflowClient()
    (run_,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                 f"tags.stage = 'study' and tags.variant = '{variant}'")
    return run_


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "esm"])
def test_pretrained_and_twin_through_the_cli(kind, workdir, checkpoints, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(workdir / "cache"))
    folder = str(checkpoints[kind])
    for arm in ("hf_pretrained", "hf_scratch"):
        assert run(folder, arm=arm) == 0, arm
    from harness.checkpoints import open_hf_checkpoint
    from harness.tokenizers import hf_tokenizer

    sha = open_hf_checkpoint(folder).fingerprint
    pretrained, twin = parent(f"hf_pretrained@{sha[:8]}"), parent(f"hf_scratch~{sha[:8]}")
    for p in (pretrained, twin):
        assert "test_mcc_mean" in p.data.metrics
        assert p.data.tags["tokenizer_sha"] == hf_tokenizer(folder).fingerprint
    # The twin differs in initialisation only.
    assert pretrained.data.tags["architecture_sha"] == twin.data.tags["architecture_sha"]
    assert pretrained.data.tags["tokenizer_sha"] == twin.data.tags["tokenizer_sha"]
    assert (pretrained.data.tags["init"], twin.data.tags["init"]) == (sha, "scratch")
    for arm, runs in finals().items():
        assert len(runs) == 1 and -1 <= runs[0].data.metrics["test_mcc"] <= 1, arm
    # The registered model of each scores raw DNA (lower case normalised, as task files are).
    task = load_task("synthetic/motif_binary")
    for p in (pretrained, twin):
        name = p.data.tags["registered_model"]
        probs = mlflow.pyfunc.load_model(f"models:/{name}").predict([s.lower() for s in task.test.sequences[:20]])
        assert probs.shape == (20, 2)
        np.testing.assert_allclose(probs.to_numpy().sum(axis=1), 1.0, atol=1e-5)
