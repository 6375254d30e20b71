"""Tokenizers (char, k-mer, BPE trained and published) and the tokenized-split cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_path
from harness import tokenizers as T
from harness.data import Split
from harness.errors import ParameterError


def test_char_tokenizer_ids():
    (ids,) = T.CharTokenizer().encode(["ACGTN"])
    assert ids.tolist() == [T.CLS, 5, 6, 7, 8, 9, T.SEP]
    assert T.CharTokenizer.vocab_size == 10


def test_bpe_trained_on_a_split(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 60)) + "TATAAAAG" * 3 for _ in range(200)]
    split = Split(seqs, np.zeros(200, dtype=np.int64))
    tok = T.trained_bpe(split, 128)
    assert tok.vocab_size == 128 and tok.pad_id == T.PAD
    ids = tok.encode([seqs[0]])[0]
    assert ids[0] == T.CLS and ids[-1] == T.SEP
    assert len(ids) < len(seqs[0]) + 2  # merges shorten the sequence
    # Cached by (content, vocab size): the second call loads the file instead of training again.
    assert len(list((tmp_path / "tokenizers").glob("bpe128-*.json"))) == 1
    monkeypatch.setattr(T.BPETokenizer, "train", lambda *a: pytest.fail("trained again despite the cache"))
    assert T.trained_bpe(split, 128).fingerprint == tok.fingerprint


def test_published_dnabert2_tokenizer_reproduces_fixture_ids():
    from safetensors.numpy import load_file

    tok = T.BPETokenizer.from_file(shared_path("dnabert2", "tokenizer.json"))
    assert tok.vocab_size == 4096 and tok.pad_id == 3
    seqs = json.loads(shared_path("fixtures", "dnabert2_tiny", "sequences.json").read_text())["sequences"]
    expected = load_file(shared_path("fixtures", "dnabert2_tiny", "expected.safetensors"))
    for ids, row, mask in zip(tok.encode(seqs), expected["input_ids"], expected["attention_mask"]):
        assert ids.tolist() == row[mask.astype(bool)].tolist()


def test_tokenize_caches_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(T, "_memory_cache", {})
    calls = []

    class Counting(T.CharTokenizer):
        def encode(self, sequences):
            calls.append(len(sequences))
            return super().encode(sequences)

    split = Split(["ACGT", "GGGTTTAA"], np.array([0, 1]))
    first = T.tokenize(Counting(), split)
    again = T.tokenize(Counting(), Split(list(split.sequences), split.labels.copy()))  # equal content
    assert calls == [2] and again is first
    T._memory_cache.clear()
    from_disk = T.tokenize(Counting(), split)
    assert calls == [2] and np.array_equal(from_disk.ids, first.ids)
    assert first.lengths.tolist() == [6, 10] and first.row(1).tolist()[1:3] == [7, 7]
    T.tokenize(Counting(), Split(["ACGA", "GGGTTTAA"], np.array([0, 1])))  # new content: new encode
    assert calls == [2, 2]


def test_truncation_to_max_length_is_counted(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    out = T.tokenize(T.CharTokenizer(), Split(["ACGTACGT", "AC"], np.array([0, 1])), max_length=5)
    assert out.lengths.tolist() == [5, 4] and out.truncated == 1
    assert "1 of 2 sequences exceed max_length=5" in caplog.text
    T._memory_cache.clear()
    assert T.tokenize(T.CharTokenizer(), Split(["ACGTACGT", "AC"], np.array([0, 1])), max_length=5).truncated == 1


def test_malformed_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ParameterError, match="not a `tokenizers` tokenizer.json"):
        T.BPETokenizer.from_file(bad)
    with pytest.raises(ParameterError, match="tokenizer file .*missing.json not found"):
        T.BPETokenizer.from_file(tmp_path / "missing.json")
