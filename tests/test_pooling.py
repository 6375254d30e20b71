"""Pooling choices of the CNN heads, the positional synthetic task and the one-hot baseline arm."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
import torch
from torch import nn

from harness.arms import ARMS, Budget, RunOptions
from harness.checkpoints import save_checkpoint
from harness.errors import ParameterError
from harness.metrics import classification_metrics
from harness.models import MODELS
from harness.models.heads import (AttentionPooling, MaxPooling, MeanPooling, PositionalPooling, POOLINGS,
                                  SequenceClassifier)
from harness.runtime import CPU
from harness.studies import load_study
from harness.synthetic import SPECS, make_synthetic_task
from harness.tasks import load_task
from harness.tokenizers import CharTokenizer

SPLICE_MOTIF = "CAGGTAAGT"


class ConvEncoder(nn.Module):
    """A translation-equivariant toy encoder (embedding, one convolution): shifting a motif inside a constant
    background only shifts its features, so any position-blind pooling gives the same vector."""

    def __init__(self, vocab_size: int, hidden: int = 8) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.embed = nn.Embedding(vocab_size, hidden)
        self.conv = nn.Conv1d(hidden, hidden, 5, padding=2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids).transpose(1, 2) * attention_mask[:, None, :]
        return torch.tanh(self.conv(x)).transpose(1, 2) * attention_mask[:, :, None]


def randomise_head(model: SequenceClassifier, seed: int = 0) -> SequenceClassifier:
    """Learnt-looking pooling weights (they start at zero, i.e. as mean pooling): spread, not all on one position."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.pool.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def ids_and_mask(tok, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [torch.tensor(r.tolist()) for r in tok.encode(sequences)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


# --------------------------------------------------------------------------------------- pooling modules
def test_pooling_numbers_on_known_features():
    features = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [100.0, 100.0]],    # last position is padding
                             [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])        # no valid position at all
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(MeanPooling()(features, mask), torch.tensor([[2.0, -1.0], [0.0, 0.0]]))
    torch.testing.assert_close(MaxPooling()(features, mask), torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    # Zero query: uniform weights over valid positions, i.e. the mean; padding gets weight 0.
    torch.testing.assert_close(AttentionPooling(2)(features, mask), torch.tensor([[2.0, -1.0], [0.0, 0.0]]))
    positional = PositionalPooling(2, max_positions=2)
    with torch.no_grad():
        positional.position_bias.copy_(torch.tensor([-1.0, 1.0]))  # x16 (BIAS_SCALE): all weight on position 1
    torch.testing.assert_close(positional(features, mask), torch.tensor([[3.0, 0.0], [0.0, 0.0]]), atol=1e-4, rtol=0)
    # Positions past the table share its last bias: a third valid position weighs as much as position 1.
    out = positional(features[:1], torch.ones(1, 3))
    torch.testing.assert_close(out, torch.tensor([[51.5, 50.0]]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("model_name", ["unet", "convnova"])
def test_padding_never_changes_a_prediction(pooling, model_name):
    """Eval mode: each sequence scores the same alone and in a right-padded batch, for every pooling."""
    tok, spec = CharTokenizer(), MODELS.get(model_name)
    torch.manual_seed(0)
    config = spec.architecture(tok, {"pooling": pooling, "widths": [8, 16, 24], "hidden_dim": 16})
    model = randomise_head(spec.classifier(config, tok, 3, 0.0)).eval()
    assert model.pooling == pooling and type(model.pool) is POOLINGS.get(pooling)
    sequences = ["ACGTACGTTTGACCA", "GGCAT", "TTTTACGATCGATCGATCGGGAAAC"]
    ids, mask = ids_and_mask(tok, sequences)
    with torch.no_grad():
        batch = model(ids, mask)
        assert batch.shape == (3, 3)
        assert model.pool(model.encoder(ids, mask), mask.float()).shape == (3, model.encoder.hidden_size)
        for i, seq in enumerate(sequences):
            alone = model(*ids_and_mask(tok, [seq]))
            torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-5, rtol=0)


def test_positional_pooling_sees_where_a_motif_is_and_position_blind_poolings_do_not():
    tok = CharTokenizer()
    background = "A" * 100
    at_20 = background[:20] + SPLICE_MOTIF + background[29:]
    at_60 = background[:60] + SPLICE_MOTIF + background[69:]
    ids, mask = ids_and_mask(tok, [at_20, at_60])
    gaps = {}
    for pooling in POOLINGS:
        torch.manual_seed(0)
        model = randomise_head(SequenceClassifier(ConvEncoder(tok.vocab_size), 2, 0.0, pooling)).eval()
        with torch.no_grad():
            if pooling == "positional":  # as if trained to look at bases 20-28 (tokens 21-29: [CLS] is 0)
                model.pool.position_bias.zero_()[21:30] = 0.2
            logits = model(ids, mask)
        gaps[pooling] = (logits[0] - logits[1]).abs().max().item()
    # Negative control: a translation-equivariant encoder + a position-blind pooling cannot tell them apart.
    assert gaps["mean"] < 1e-5 and gaps["max"] < 1e-5 and gaps["attention"] < 1e-5
    assert gaps["positional"] > 0.1  # measured 0.30


def test_unknown_pooling_is_a_parameter_error():
    with pytest.raises(ParameterError, match="pooling=avg: unknown pooling 'avg'; registered: attention, max, mean"):
        SequenceClassifier(ConvEncoder(10), 2, 0.0, "avg")


# ------------------------------------------------------------------------ pooling as a hyperparameter
@pytest.mark.parametrize("arm_name", ["unet_char", "convnova_char", "unet_bpe", "convnova_bpe"])
def test_a_sampled_pooling_reaches_the_model(arm_name):
    arm, tok = ARMS.get(arm_name), CharTokenizer()
    assert "pooling" in arm.hyperparameters[1]
    for name in ("smoke", "gue_quick", "gue"):  # the shipped studies search it in their cnn space
        study = load_study(name)
        arm.validate(study, RunOptions(CPU))
        assert set(study.space("cnn")["pooling"].choices) == {"mean", "positional"}
    params = {"lr": 1e-3, "batch_size": 16, "hidden_dim": 16, "widths": [8, 16]}
    model, architecture = arm.build_model(tok, 2, {**params, "pooling": "positional"}, RunOptions(CPU))
    assert architecture["pooling"] == "positional" and isinstance(model.pool, PositionalPooling)
    model, architecture = arm.build_model(tok, 2, params, RunOptions(CPU))
    assert architecture["pooling"] == "mean" and isinstance(model.pool, MeanPooling)  # today's head by default


def test_dnabert2_keeps_its_own_head():
    assert "pooling" not in MODELS.get("dnabert2").architecture_keys
    assert "pooling" not in ARMS.get("dnabert2_scratch").hyperparameters[1]


def test_fit_records_the_pooling_it_trained_with(tiny_gue):
    task = load_task("toy/motif_binary", str(tiny_gue))
    fitted = ARMS.get("unet_char").fit(task, {"lr": 2e-3, "batch_size": 32, "pooling": "attention", "widths": [8, 16]},
                                       0, Budget(1, None), RunOptions(CPU))
    assert fitted.architecture["pooling"] == "attention" and isinstance(fitted.model.pool, AttentionPooling)
    assert fitted.model.pool.query.abs().sum() > 0  # trained (it starts at zero)


@pytest.mark.parametrize("model_name,arm_name", [("unet", "unet_char"), ("convnova", "convnova_char")])
def test_masked_lm_checkpoint_loads_under_a_positional_head(model_name, arm_name, tmp_path):
    """The pooling's weights are new (`pool.*`, like `classifier.*`); the encoder's are the checkpoint's; the
    trial's pooling wins over the (head-less) checkpoint's architecture."""
    tok, spec = CharTokenizer(), MODELS.get(model_name)
    architecture = spec.architecture(tok, {"hidden_dim": 16, "widths": [8, 16]})
    torch.manual_seed(0)
    mlm = spec.masked_lm(architecture, tok, 0.0)
    folder = save_checkpoint(tmp_path / "ckpt", model_name, architecture, mlm, tok, {})
    options = RunOptions(CPU, init=str(folder))
    model, used = ARMS.get(arm_name).build_model(tok, 2, {"pooling": "positional"}, options)
    assert architecture["pooling"] == "mean" and used == {**architecture, "pooling": "positional"}
    assert isinstance(model.pool, PositionalPooling) and model.pool.position_bias.abs().sum() == 0
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, mlm.encoder.state_dict()[k], atol=0, rtol=0)
    # Another classifier's head, pooling included, is never taken: this one's is new.
    other = randomise_head(spec.classifier({**architecture, "pooling": "positional"}, tok, 2, 0.0))
    model.load_published_state_dict(other.state_dict())
    assert model.pool.position_bias.abs().sum() == 0
    mean_head = spec.classifier(architecture, tok, 2, 0.0)
    mean_head.load_published_state_dict(other.state_dict())  # its pool.* weights are not an error
    torch.testing.assert_close(mean_head.encoder.state_dict(), other.encoder.state_dict())


# ------------------------------------------------------------------------------- the positional task
def kmer_profile(sequences: list[str], k: int = 4) -> np.ndarray:
    index = {"".join(p): i for i, p in enumerate(product("ACGT", repeat=k))}
    counts = np.zeros(len(index))
    for s in sequences:
        for i in range(len(s) - k + 1):
            counts[index[s[i:i + k]]] += 1
    return counts / counts.sum()


def class_profile_gap(task) -> float:
    """L1 distance between the two classes' 4-mer frequencies, relative to that of a random relabelling."""
    seqs, labels = task.train.sequences, task.train.labels
    shuffled = np.random.default_rng(0).permutation(labels)

    def gap(y: np.ndarray) -> float:
        return np.abs(kmer_profile([s for s, c in zip(seqs, y) if c == 0])
                      - kmer_profile([s for s, c in zip(seqs, y) if c == 1])).sum()

    return gap(labels) / gap(shuffled)


def mismatches(seq: str, start: int) -> int:
    return sum(a != b for a, b in zip(seq[start:start + len(SPLICE_MOTIF)], SPLICE_MOTIF))


def test_motif_position_task_is_deterministic_and_only_where_decides():
    spec = SPECS["synthetic/motif_position"]
    a, b = make_synthetic_task(spec.name), make_synthetic_task(spec.name)
    assert a.test.sequences == b.test.sequences and np.array_equal(a.train.labels, b.train.labels)
    assert {len(s) for s in a.train.sequences} <= set(range(100, 105))
    labels = a.train.labels
    at_site = np.array([mismatches(s, spec.site) for s in a.train.sequences])
    anywhere = np.array([min(mismatches(s, i) for i in range(len(s) - 8)) for s in a.train.sequences])
    # Class 1 carries the motif at the site, class 0 elsewhere (label noise aside); both carry it.
    assert (at_site[labels == 1] <= 2).mean() > 0.9 and (at_site[labels == 0] <= 2).mean() < 0.05
    assert (anywhere[labels == 0] <= 2).mean() > 0.9 and (anywhere[labels == 1] <= 2).mean() > 0.9
    # Same k-mer content: the classes' 4-mer profiles differ no more than under a random relabelling (0.95),
    # unlike a motif-presence task's (negative control: 1.65).
    assert class_profile_gap(a) < 1.2
    assert class_profile_gap(make_synthetic_task("synthetic/motif_binary")) > 1.4


def test_onehot_arm_reads_position_and_kmer_arm_cannot():
    task = load_task("synthetic/motif_position")
    onehot = ARMS.get("onehot_logreg").fit(task, {"C": 0.1}, 0, Budget(1, None), RunOptions(CPU))
    assert classification_metrics(task.test.labels, onehot.predict("test"))["mcc"] > 0.85  # measured 0.95
    assert onehot.n_params == 4 * 104 + 1 and onehot.truncated() == {"train": 0, "dev": 0, "test": 0}
    for k in (3, 5):
        kmer = ARMS.get("kmer_logreg").fit(task, {"k": k, "C": 1.0}, 0, Budget(1, None), RunOptions(CPU))
        assert abs(classification_metrics(task.test.labels, kmer.predict("test"))["mcc"]) < 0.15  # measured <= 0.07


def test_onehot_features_align_at_the_start_pad_and_truncate():
    from harness.arms.onehot import PositionalOneHot

    featurizer = PositionalOneHot().fit(["ACGT", "GA"])  # length 4, from the longest train sequence
    x = featurizer.transform(["ACGT", "GA", "TNc", "ACGTTT"]).toarray().reshape(4, 4, 4)  # [N, position, ACGT]
    assert x[0].argmax(1).tolist() == [0, 1, 2, 3] and x[0].sum() == 4
    assert x[1].sum(1).tolist() == [1, 1, 0, 0] and x[1, 0, 2] == 1 and x[1, 1, 0] == 1  # padded on the right
    assert x[2].sum(1).tolist() == [1, 0, 1, 0] and x[2, 2, 1] == 1  # N is all-zero; lower case reads
    assert x[3].sum() == 4 and featurizer.truncated(["ACGT", "ACGTTT"]) == 1  # cut to the train length
