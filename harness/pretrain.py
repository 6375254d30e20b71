"""Masked-LM pretraining of any torch arm, and BPE tokenizer training, on a DNA corpus.

A corpus is a FASTA file (.fa/.fasta/.fna, optionally gzipped), a GUE-layout folder (only its
train.csv files are read), or one CSV with a `sequence` column. Evaluation sequences are kept out: from a GUE
folder, every train sequence that equals, contains or lies inside a dev or test sequence of any of its tasks
(either strand) is dropped, and so is every window that does; `exclude_eval=ROOT` checks any corpus against
the dev and test sequences of another GUE folder the same way (windows only: a FASTA record is a chromosome).
The number of windows lost is logged (`excluded_eval_overlap`). Sequences are cut into windows of `window`
nucleotides (a last piece shorter than half a window is dropped, as are windows that are mostly N); 2% of the
windows (at least one) are held out to report the masked-token loss and accuracy.

`pretrain` logs the loss curves, the checkpoint (artifact `checkpoint/`, in the layout of
`checkpoints.py`) and its cost (seconds, FLOPs), which the checkpoint also carries: a fine-tuning run
started with `init=runs:/<run_id>/checkpoint` records where its weights came from and what they cost.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from . import tracking
from .arms import ARMS, Arm
from .checkpoints import save_checkpoint
from .data import COMPRESSED, IUPAC_TO_N, Split, check_not_special, read_split
from .errors import DataError, ParameterError
from .parameters import experiment_name
from .leakage import eval_sequences, overlapping, straddled
from .models import DEFAULT_DROPOUT, MODELS, count_parameters
from .progress import format_seconds
from .runtime import Runtime
from .schema import Artifact, Metric, Stage, Tag
from .studies import load_study
from .tokenizers import BPETokenizer, DNATokenizer, TokenizerRequest, build_tokenizer, tokenize
from .train import TrainConfig, fit_masked_lm, seed_everything

log = logging.getLogger("harness")
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")
HELD_OUT_FRACTION = 0.02


def read_fasta(path: Path) -> list[str]:
    """Records of a (gzipped) FASTA file, upper-cased, IUPAC codes read as N. Every record starts with a
    '>' header line; sequence lines before the first header, characters that are not DNA, bytes that are not
    UTF-8 and a `.gz` file that is not gzip are DataErrors naming the file (and the line)."""
    records, current, seen_header = [], [], False
    try:
        with fasta_lines(path) as handle:
            for number, raw in enumerate(handle, start=1):
                line = fasta_text(raw, path, number).strip()
                if line.startswith(">"):
                    if current:
                        records.append("".join(current))
                    current, seen_header = [], True
                elif line:
                    if not seen_header:
                        raise DataError(f"{path}, line {number}: sequence before any '>' header; a FASTA record "
                                        "starts with a header line such as '>chr1'. Add one above the sequence.")
                    current.append(fasta_sequence(line, path, number))
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip file ({err}); a {path.suffix} corpus must be gzip-compressed "
                        f"FASTA: rename a plain-text file without {path.suffix}, or gzip it again.") from None
    if current:
        records.append("".join(current))
    if not records:
        raise DataError(f"{path}: no FASTA records (lines starting with '>' followed by sequence lines)")
    return records


def fasta_lines(path: Path):
    """The file's lines as bytes (decoded per line, so that a bad byte is reported at its line)."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    with open(path, "rb") as handle:
        magic = handle.read(6)
    for start, (kind, tool) in COMPRESSED.items():
        if magic.startswith(start):
            raise DataError(f"{path}: this is a {kind} file (it starts with bytes {start.hex(' ')}); {tool} it, or "
                            f"name a gzip file {path.name}.gz.")
    return open(path, "rb")


def fasta_text(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}, line {number}: byte 0x{raw[err.start]:02x} (byte {err.start + 1} of the line) is "
                        "not UTF-8 (the file is probably Latin-1 or Windows-1252); save it as UTF-8 or ASCII "
                        "text.") from None


def fasta_sequence(line: str, path: Path, number: int) -> str:
    seq = line.upper().translate(IUPAC_TO_N)
    bad = set(seq) - set("ACGTN")
    if bad:
        raise DataError(f"{path}, line {number}: character {sorted(bad)[0]!r} is not DNA. Allowed: A C G "
                        "T N in any case; IUPAC codes are read as N.")
    return seq


def read_corpus(path: str | Path) -> list[str]:
    path = Path(path)
    check_not_special(path)  # a named pipe would otherwise read as "no such file", or hang
    if path.is_dir():
        files = sorted(path.rglob("train.csv"))
        if not files:
            raise DataError(f"{path}: no train.csv under this folder; a corpus folder is in the GUE layout "
                            "(<family>/<task>/train.csv). Pass a FASTA file otherwise.")
        return [s for f in files for s in read_split(f).sequences]
    if not path.is_file():
        raise DataError(f"corpus {path}: no such file or folder")
    if path.name.lower().endswith(FASTA_SUFFIXES):
        return read_fasta(path)
    if path.suffix.lower() == ".csv":
        return read_split(path).sequences
    raise DataError(f"corpus {path}: unknown format; use FASTA ({', '.join(FASTA_SUFFIXES)}), a CSV with "
                    "sequence,label columns, or a GUE-layout folder")


def cut_windows(sequences: list[str], window: int) -> list[str]:
    """Non-overlapping windows of `window` nt; a tail shorter than half a window and windows that are
    more than half N are dropped."""
    return [piece for piece, _, _, _ in windows_in_context(sequences, window, 0)]


def windows_in_context(sequences: list[str], window: int, flank: int) -> list[tuple[str, str, int, int]]:
    """`cut_windows`' windows, each as (window, context, start, end): the context is the window with `flank` nt
    of its sequence on either side, [start, end) the window's place in it. A sequence of at most flank + 1 nt
    that overlaps the window by a base lies inside the context."""
    out = []
    for seq in sequences:
        for start in range(0, len(seq), window):
            piece = seq[start:start + window]
            if len(piece) * 2 >= window and piece.count("N") * 2 <= len(piece):
                left = max(0, start - flank)
                out.append((piece, seq[left:start + window + flank], start - left, start - left + len(piece)))
    return out


def exclude_eval_overlap(sequences: list[str], window: int, source: str, exclude_eval: str | None = None
                         ) -> tuple[list[str], int]:
    """The corpus's windows without any that equals, contains or lies inside a dev or test sequence of the GUE
    folder `source` (when it is one) or `exclude_eval`, either strand; and how many windows that removed.
    From a GUE folder, a train sequence that overlaps one goes whole: cut into windows, its overlap could
    straddle two windows and escape the window check."""
    everything = cut_windows(sequences, window)
    is_folder = Path(source).is_dir()
    held = (eval_sequences(source, required=False) if is_folder else []) + \
        (eval_sequences(exclude_eval) if exclude_eval else [])
    if not held:
        return everything, 0
    if is_folder:
        sequences = [s for s, bad in zip(sequences, overlapping(sequences, held)) if not bad]
    # A dev/test sequence that straddles two windows is in neither: each window is also checked in its context
    # (the longest held-out length - 1 nt on each side), and dropped where an occurrence shares a base with it.
    # (A GUE folder's remaining sequences contain no held-out sequence: nothing can straddle there.)
    placed = windows_in_context(sequences, window, flank=0 if is_folder else max(len(h) for h in held) - 1)
    windows = [piece for piece, _, _, _ in placed]
    bad = overlapping(windows, held) | (False if is_folder else straddled(placed, held))
    windows = [w for w, b in zip(windows, bad) if not b]
    excluded = len(everything) - len(windows)
    log.info("corpus %s: %d of %d windows excluded: they, or the training sequence they come from, equal, contain "
             "or lie inside one of %d dev/test sequences (either strand)", source, excluded, len(everything), len(held))
    return windows, excluded


@dataclass(frozen=True)
class Corpus:
    source: str
    train: Split
    held_out: Split
    fingerprint: str
    excluded: int = 0  # windows dropped for overlapping a dev or test sequence (exclude_eval_overlap)

    @classmethod
    def load(cls, source: str, window: int, seed: int = 0, exclude_eval: str | None = None) -> Corpus:
        windows, excluded = exclude_eval_overlap(read_corpus(source), window, source, exclude_eval)
        if len(windows) < 2:
            raise DataError(f"corpus {source}: {len(windows)} window(s) of {window} nt; it needs at least 2. "
                            "Use a smaller window= or a larger corpus.")
        order = np.random.default_rng(seed).permutation(len(windows))
        n_held = max(1, int(HELD_OUT_FRACTION * len(windows)))
        pick = lambda idx: Split([windows[i] for i in idx], np.zeros(len(idx), dtype=np.int64))  # noqa: E731
        digest = hashlib.sha256("\n".join(windows).encode()).hexdigest()[:16]
        return cls(source, pick(order[n_held:]), pick(order[:n_held]), digest, excluded)


def pretraining_tokenizer(arm: Arm, corpus: Corpus, tokenizer_path: str | None, vocab_size: int) -> DNATokenizer:
    """The arm's tokenizer; a BPE arm without tokenizer= trains one on the corpus's training windows."""
    return build_tokenizer(arm.tokenizer, TokenizerRequest(corpus.train, tokenizer_path, vocab_size))


@dataclass(frozen=True)
class PretrainRequest:
    arm: str
    corpus: str
    study: str = "smoke"  # the architecture the study fixes for the arm's family
    window: int = 128
    steps: int = 500
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    mask_prob: float = 0.15
    seed: int = 0
    device: str = "auto"
    tokenizer: str | None = None
    vocab_size: int = 4096
    experiment: str = "pretrain"
    output: str | None = None  # also keep the checkpoint in this local folder
    exclude_eval: str | None = None  # a GUE folder whose dev/test sequences the corpus must not contain


def pretrain(req: PretrainRequest) -> tuple[str, Path | None]:
    """Run masked-LM pretraining; returns the MLflow run id and the local checkpoint folder (if asked)."""
    arm = ARMS.get(req.arm, parameter="arm")
    experiment_name(req.experiment)  # MLflow would refuse it only after the corpus is read and the model built
    if not arm.neural:
        raise ParameterError(f"arm {req.arm} is not a neural network; pretraining applies to torch arms")
    spec = load_study(req.study)
    space = spec.space_name(arm.family, "scratch")  # pretraining starts from scratch
    if space in spec.search_spaces:
        arm.check_values(spec, space)  # its fixed architecture is valid, before the corpus is read
    params = {**spec.fixed.get(space, {})}
    runtime = Runtime.resolve(req.device, precision="fp32")
    corpus = Corpus.load(req.corpus, req.window, req.seed, req.exclude_eval)
    tok = pretraining_tokenizer(arm, corpus, req.tokenizer, req.vocab_size)
    windows, held_out = tokenize(tok, corpus.train), tokenize(tok, corpus.held_out)
    seed_everything(req.seed)
    model_spec = MODELS.get(arm.model)
    architecture = model_spec.architecture(tok, params)
    model = model_spec.masked_lm(architecture, tok, float(params.get("dropout", DEFAULT_DROPOUT)))
    cfg = TrainConfig(lr=req.lr, weight_decay=req.weight_decay, batch_size=req.batch_size, seed=req.seed)
    experiment_id = tracking.setup(req.experiment)
    tags = {Tag.STAGE: Stage.PRETRAIN, Tag.ARM: arm.name, Tag.MODEL: arm.model, Tag.TOKENIZER: tok.name,
            Tag.CORPUS: req.corpus, Tag.CORPUS_FINGERPRINT: corpus.fingerprint, Tag.GIT_COMMIT: tracking.git_commit(),
            Tag.DEVICE: str(runtime.device)}
    with tracking.run(f"pretrain {arm.name}", tags, log_system_metrics=True) as run:
        n_params = count_parameters(model)
        tracking.log_params({**{k: v for k, v in vars(req).items() if k not in ("arm", "corpus")},
                             "architecture": architecture, "params": n_params, "vocab_size": tok.vocab_size,
                             "train_windows": len(windows), "held_out_windows": len(held_out)})
        log.info("pretraining %s (%d parameters, %s tokens) on %d windows of %d nt from %s: %d steps of %d",
                 arm.name, n_params, tok.name, len(windows), req.window, req.corpus, req.steps, req.batch_size)

        def on_log(step: int, row: dict[str, float]) -> None:
            tracking.log_metrics({k: v for k, v in row.items() if k != "seconds"}, step=step)
            eta = row["seconds"] / step * (req.steps - step)
            log.info("pretrain %s | step %d/%d | mlm_loss %.4f | held-out loss %.4f acc %.3f | %s elapsed, ETA %s",
                     arm.name, step, req.steps, row[Metric.MLM_LOSS], row[Metric.EVAL_MLM_LOSS],
                     row[Metric.EVAL_MLM_ACCURACY],
                     format_seconds(row["seconds"]), format_seconds(eta))

        result = fit_masked_lm(model, windows, held_out, tok.pad_id, tok.vocab_size, cfg, runtime, req.steps,
                               req.mask_prob, log_every=max(1, min(50, req.steps // 10)), on_log=on_log)
        cost = {"run_id": run.info.run_id, "experiment_id": experiment_id, "seconds": result.seconds,
                "flops": result.flops, "steps": result.steps, "tokens": result.tokens, "corpus": req.corpus,
                "corpus_fingerprint": corpus.fingerprint, "window": req.window, "device": str(runtime.device),
                "final_eval_mlm_loss": result.history[-1][Metric.EVAL_MLM_LOSS]}
        tracking.log_metrics({Metric.PRETRAIN_SECONDS: result.seconds, Metric.PRETRAIN_FLOPS: result.flops,
                              Metric.PRETRAIN_TOKENS: result.tokens, Metric.EXCLUDED_EVAL_OVERLAP: corpus.excluded})
        model.cpu()
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_checkpoint(Path(tmp) / Artifact.CHECKPOINT, arm.model, architecture, model, tok, cost)
            mlflow.log_artifacts(str(folder), Artifact.CHECKPOINT)
            local = None
            if req.output:
                local = save_checkpoint(Path(req.output), arm.model, architecture, model, tok, cost)
        log.info("pretrained in %s (%.3g FLOPs). Fine-tune with: init=runs:/%s/checkpoint",
                 format_seconds(result.seconds), result.flops, run.info.run_id)
        return run.info.run_id, local


def train_tokenizer(corpus: str, vocab_size: int, window: int = 512, experiment: str = "tokenizers",
                    exclude_eval: str | None = None) -> str:
    """Train a BPE tokenizer on a corpus's windows (without dev/test overlaps, see `Corpus.load`); log it
    (artifact tokenizer.json) with its statistics."""
    experiment_name(experiment)  # before the corpus is read, not when MLflow refuses it
    data = Corpus.load(corpus, window, exclude_eval=exclude_eval)
    tracking.setup(experiment)
    tags = {Tag.STAGE: Stage.TOKENIZER, Tag.CORPUS: corpus, Tag.CORPUS_FINGERPRINT: data.fingerprint,
            Tag.GIT_COMMIT: tracking.git_commit()}
    with tracking.run(f"bpe{vocab_size}", tags) as run:
        tok = BPETokenizer.train(data.train.sequences, vocab_size)
        tracking.log_params({"vocab_size": vocab_size, "window": window, "windows": len(data.train),
                             "exclude_eval": exclude_eval})
        held_out = tokenize(tok, data.held_out)
        nucleotides = sum(len(s) for s in data.held_out.sequences)
        tokens = int(held_out.lengths.sum()) - 2 * len(held_out)  # without [CLS] and [SEP]
        tracking.log_metrics({Metric.VOCAB_SIZE_TRAINED: tok.vocab_size, Metric.NT_PER_TOKEN: nucleotides / max(tokens, 1),
                              Metric.TOKENS_PER_WINDOW: tokens / len(held_out),
                              Metric.EXCLUDED_EVAL_OVERLAP: data.excluded})
        with tempfile.TemporaryDirectory() as tmp:
            tok.save(Path(tmp) / Artifact.TOKENIZER)
            mlflow.log_artifact(str(Path(tmp) / Artifact.TOKENIZER))
        log.info("BPE tokenizer (vocab %d, %.2f nt per token on held-out windows). Use it with: "
                 "tokenizer=runs:/%s/tokenizer.json", tok.vocab_size, nucleotides / max(tokens, 1), run.info.run_id)
        return run.info.run_id
