"""DNA tokenizers and the content-addressed cache of tokenized splits.

All tokenizers share DNABERT-2's special ids ([UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4) and wrap
every sequence as ``[CLS] tokens [SEP]``, as DNABERT-2's published tokenizer does.

  char  single nucleotides: A C G T N = 5..9
  bpe   byte-pair encoding from the `tokenizers` library, trained on a task's training split at a
        given vocabulary size, or loaded from a tokenizer.json (e.g. DNABERT-2's published one)

except `HFTokenizer` (the hf_* arms): a transformers checkpoint's own tokenizer (`AutoTokenizer`), with its
own special tokens and ids (Nucleotide Transformer: 6-mers; GROVER: BPE).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tokenizers import Tokenizer, models, processors, trainers

from .data import Split
from .errors import ParameterError
from .registry import Registry

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
UNK, CLS, SEP, PAD, MASK = range(5)
NUCLEOTIDES = "ACGTN"


def cache_dir() -> Path:
    """Where tokenizers and tokenized splits are cached (HARNESS_CACHE_DIR overrides)."""
    path = Path(os.environ.get("HARNESS_CACHE_DIR", Path.home() / ".cache" / "dna-harness"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class DNATokenizer(Protocol):
    name: str
    vocab_size: int
    pad_id: int

    def encode(self, sequences: list[str]) -> list[np.ndarray]: ...

    @property
    def fingerprint(self) -> str: ...

    def save(self, path: Path) -> None: ...


def _wrap(ids: np.ndarray) -> np.ndarray:
    return np.concatenate(([CLS], ids, [SEP])).astype(np.int32)


class CharTokenizer:
    """One token per nucleotide."""

    name = "char"
    pad_id = PAD
    vocab_size = len(SPECIAL_TOKENS) + len(NUCLEOTIDES)

    def __init__(self) -> None:
        self._lut = np.full(256, UNK, dtype=np.int32)
        for i, base in enumerate(NUCLEOTIDES):
            self._lut[ord(base)] = len(SPECIAL_TOKENS) + i

    def encode(self, sequences: list[str]) -> list[np.ndarray]:
        return [_wrap(self._lut[np.frombuffer(s.encode(), dtype=np.uint8)]) for s in sequences]

    @property
    def fingerprint(self) -> str:
        return "char-v1"

    def save(self, path: Path) -> None:
        path.write_text(f"{self.fingerprint}\n")


class BPETokenizer:
    """A `tokenizers` BPE model; the file's own post-processor decides the special tokens."""

    def __init__(self, tokenizer: Tokenizer, source: str) -> None:
        missing = [t for t in SPECIAL_TOKENS[:4] if tokenizer.token_to_id(t) is None]
        if missing:
            raise ParameterError(f"tokenizer {source} lacks special token(s) {missing}; a DNA tokenizer.json "
                                 f"needs {', '.join(SPECIAL_TOKENS[:4])}")
        self._tok = tokenizer
        self.source = source
        self.name = "bpe"
        self.pad_id = tokenizer.token_to_id("[PAD]")
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ParameterError(f"tokenizer file {path} not found; pass a tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust library raises a bare Exception on a malformed file
            raise ParameterError(f"{path}: not a `tokenizers` tokenizer.json ({err})") from None
        return cls(tokenizer, str(path))

    @classmethod
    def train(cls, sequences: list[str], vocab_size: int) -> BPETokenizer:
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=list(NUCLEOTIDES),
            show_progress=False,
        )
        tok.train_from_iterator(sequences, trainer=trainer, length=len(sequences))
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)]
        )
        return cls(tok, f"trained (vocab {vocab_size})")

    def encode(self, sequences: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in self._tok.encode_batch(sequences)]

    @property
    def fingerprint(self) -> str:
        return "bpe-" + hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        self._tok.save(str(path))


class HFTokenizer:
    """A transformers checkpoint's tokenizer (`AutoTokenizer.from_pretrained(folder)`, never its custom code) as
    a DNATokenizer: each sequence wrapped in the tokenizer's own special tokens (e.g. <cls> ... for ESM,
    [CLS] ... [SEP] for BERT). Its fingerprint is the sha256 of the tokenizer files it was read from, so that
    the same files give the same tokens, and cache entries, wherever they lie."""

    name = "hf"

    def __init__(self, folder: str | Path) -> None:
        from transformers import AutoTokenizer

        from .checkpoints import HF_TOKENIZER_FILES
        from .errors import CheckpointError

        self.folder = Path(folder)
        self.files = [self.folder / f for f in HF_TOKENIZER_FILES if (self.folder / f).is_file()]
        if not self.files:
            raise CheckpointError(f"checkpoint {self.folder} has no tokenizer files (one of "
                                  f"{', '.join(HF_TOKENIZER_FILES)}); save its tokenizer with save_pretrained beside it")
        try:
            self._tok = AutoTokenizer.from_pretrained(str(self.folder))
        except (ValueError, OSError) as err:  # a tokenizer that needs custom code, or a broken file
            raise CheckpointError(f"checkpoint {self.folder}: AutoTokenizer cannot load its tokenizer without custom "
                                  f"code ({str(err).splitlines()[0][:300]})") from None
        if self._tok.pad_token_id is None:
            raise CheckpointError(f"checkpoint {self.folder}: its tokenizer has no padding token, which batches need")
        self.pad_id = int(self._tok.pad_token_id)
        self.vocab_size = len(self._tok)  # added tokens included
        self.check_reads_dna()

    def check_reads_dna(self) -> None:
        """A tokenizer that lower-cases (BERT's default) or lacks nucleotides would read DNA as unknown tokens."""
        from .errors import CheckpointError

        ids = self.encode(["ACGTTGCAACGGTTAACCGTATGC"])[0]
        content = [i for i in ids if i not in self._tok.all_special_ids]
        if not content or all(i == self._tok.unk_token_id for i in content):
            raise CheckpointError(f"checkpoint {self.folder}: its tokenizer reads upper-case DNA (ACGTN) as unknown "
                                  "tokens only (does it lower-case? is its vocabulary DNA?)")

    def encode(self, sequences: list[str]) -> list[np.ndarray]:
        encoded = self._tok(list(sequences), add_special_tokens=True, return_attention_mask=False,
                            verbose=False)["input_ids"]
        return [np.asarray(ids, dtype=np.int32) for ids in encoded]

    @property
    def model_max_length(self) -> int | None:
        """The tokenizer's own cap, where it declares one (transformers' default is a huge placeholder)."""
        cap = self._tok.model_max_length
        return int(cap) if cap and cap < 1_000_000 else None

    @functools.cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(self.files):  # each file's name and length delimit its content
            content = path.read_bytes()
            digest.update(f"{path.name}\0{len(content)}\0".encode())
            digest.update(content)
        return "hf-" + digest.hexdigest()[:16]

    def save(self, path: Path) -> None:
        """Copy the tokenizer files into the folder `path`: the same files, the same fingerprint."""
        path.mkdir(parents=True, exist_ok=True)
        for file in self.files:
            shutil.copyfile(file, path / file.name)


@functools.cache
def hf_tokenizer(folder: str) -> HFTokenizer:
    """One HFTokenizer per checkpoint folder and process (reading one takes a moment; every trial uses it)."""
    return HFTokenizer(folder)


def trained_bpe(train: Split, vocab_size: int) -> BPETokenizer:
    """A BPE tokenizer trained on a training split, cached on disk by (content, vocabulary size)."""
    path = cache_dir() / "tokenizers" / f"bpe{vocab_size}-{train.fingerprint}.json"
    if path.is_file():
        return BPETokenizer.from_file(path)
    log.info("training a BPE tokenizer (vocab %d) on %d training sequences", vocab_size, len(train))
    tok = BPETokenizer.train(train.sequences, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(tmp)
    tmp.replace(path)  # atomic: a concurrent worker never reads half a file
    return BPETokenizer.from_file(path)


def nucleotide_alphabet_map(tokenizer: CharTokenizer) -> torch.Tensor:
    """Single-nucleotide token ids -> A=0 C=1 G=2 T=3 N=4 (ConvNova's alphabet); special tokens -> N."""
    table = torch.full((tokenizer.vocab_size,), NUCLEOTIDES.index("N"), dtype=torch.long)
    table[len(SPECIAL_TOKENS):] = torch.arange(len(NUCLEOTIDES))
    return table


@dataclass(frozen=True)
class TokenizerRequest:
    """What an arm asks for: its tokenizer kind plus the run's options."""

    train: Split
    path: str | None = None  # an existing tokenizer.json (BPE)
    vocab_size: int = 4096  # BPE vocabulary when training


TOKENIZERS: Registry = Registry("tokenizer")
TOKENIZERS.add("char", lambda req: CharTokenizer())
TOKENIZERS.add("bpe", lambda req: BPETokenizer.from_file(req.path) if req.path
               else trained_bpe(req.train, req.vocab_size))


def build_tokenizer(kind: str, request: TokenizerRequest) -> DNATokenizer:
    return TOKENIZERS.get(kind)(request)


@dataclass(frozen=True)
class TokenizedSplit:
    """Token ids of a split, stored flat: sequence i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    truncated: int = 0  # sequences cut to max_length

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


_memory_cache: dict[str, TokenizedSplit] = {}
CACHE_FORMAT = "tokenized-v2"  # bump when TokenizedSplit's stored fields change


def tokenize(tokenizer: DNATokenizer, split: Split, max_length: int | None = None) -> TokenizedSplit:
    """Tokenize a split once per (tokenizer, content, max_length): memory first, then disk."""
    key = hashlib.sha256(f"{CACHE_FORMAT}|{tokenizer.fingerprint}|{split.fingerprint}|{max_length}".encode()).hexdigest()[:24]
    if key in _memory_cache:
        return _memory_cache[key]
    path = cache_dir() / "tokenized" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            result = TokenizedSplit(z["ids"], z["offsets"], z["labels"], int(z["truncated"]))
    else:
        encoded = tokenizer.encode(split.sequences)
        truncated = 0
        if max_length is not None:
            truncated = sum(len(e) > max_length for e in encoded)
            encoded = [e[:max_length] for e in encoded]
        offsets = np.concatenate(([0], np.cumsum([len(e) for e in encoded]))).astype(np.int64)
        result = TokenizedSplit(np.concatenate(encoded).astype(np.int32), offsets, split.labels, truncated)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{key}.tmp{os.getpid()}.npz")
        np.savez(tmp, ids=result.ids, offsets=result.offsets, labels=result.labels, truncated=truncated)
        tmp.replace(path)
    if result.truncated:
        log.warning("%d of %d sequences exceed max_length=%d tokens and are truncated", result.truncated,
                    len(result), max_length)
    _memory_cache[key] = result
    return result
