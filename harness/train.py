"""The one training loop every torch arm uses, batched prediction, and masked-LM pretraining.

Batches are length-bucketed and padded only to their own longest sequence; AdamW is fused; the loss stays
on the device (no host sync per step); the runtime (`runtime.py`) decides the device, bf16 autocast and
torch.compile. After every epoch the dev split is scored as a whole; the best-dev-MCC weights are kept
(checkpoint selection on dev only) and training stops early after `patience` epochs without improvement.
A non-finite training loss raises `DivergedError` so the tuner can record the trial as diverged.
With `grad_accumulation` > 1 each batch goes through the model in micro-batches whose gradients add up to
the batch's: the same batches, optimiser steps and schedule in less memory (the tuner's fallback when a fit
runs out of memory).

The torch arms call `fit` and `predict` through this module, so `benchmarks/plain_loop.py` can put the plain
reference loop in their place to check this one against it.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import DivergedError
from .metrics import classification_metrics
from .models import logits_of
from .runtime import Runtime, autocast
from .schema import Metric
from .tokenizers import MASK, SPECIAL_TOKENS, TokenizedSplit

log = logging.getLogger("harness")
T = TypeVar("T")


@dataclass(frozen=True)
class TrainConfig:
    """The hyperparameters of one fit and its share of the study's budget."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    max_epochs: int = 10
    patience: int | None = 3
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    seed: int = 0
    # Micro-batches per optimiser step: each batch is trained in pieces of ceil(batch_size / grad_accumulation)
    # sequences whose gradients add up to the whole batch's, so the same training takes less memory.
    grad_accumulation: int = 1

    def __post_init__(self) -> None:
        if self.grad_accumulation < 1:
            raise ValueError(f"grad_accumulation must be >= 1, got {self.grad_accumulation}")

    @property
    def micro_batch_size(self) -> int:
        return math.ceil(self.batch_size / self.grad_accumulation)


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    dev: dict[str, float]
    seconds: float


@dataclass
class FitResult:
    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int = 0
    best_dev: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    flops: float = 0.0  # estimated training FLOPs (forward + backward)
    tags: dict[str, str] = field(default_factory=dict)  # what the fit reports on its run (a probe: its embeddings)


EpochCallback = Callable[[EpochResult], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length within windows of 50 batches, cut into batches, shuffle the batches:
    similar lengths share a batch (little padding) while the order stays random."""
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(split: TokenizedSplit, idx: np.ndarray, pad_id: int, device: torch.device, pad_to: int | None = None):
    """Token ids padded to the batch's longest sequence (or to `pad_to`), the attention mask and labels."""
    lengths = split.lengths[idx]
    ids = np.full((len(idx), pad_to or int(lengths.max())), pad_id, dtype=np.int64)
    for row, i in enumerate(idx):
        ids[row, :lengths[row]] = split.row(i)
    input_ids = torch.from_numpy(ids).to(device, non_blocking=True)
    mask = (torch.arange(ids.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]).long().to(device)
    labels = torch.from_numpy(split.labels[idx].astype(np.int64)).to(device)
    return input_ids, mask, labels


@dataclass(frozen=True)
class FeatureSplit:
    """A split as fixed feature vectors [N, H] instead of tokens: a probe's input (the frozen backbone's pooled
    embeddings, harness/probe.py). `fit` and `predict` take it where they take a TokenizedSplit; its batches are
    (features [B, H], a mask of ones [B, 1], labels), so the probe head answers the classifiers' call."""

    features: np.ndarray
    labels: np.ndarray
    truncated: int = 0  # sequences the backbone saw cut to its token cap

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:  # one "token" each: batches are a plain shuffle
        return np.ones(len(self), dtype=np.int64)


def batch(split: TokenizedSplit | FeatureSplit, idx: np.ndarray, pad_id: int, device: torch.device,
          pad_to: int | None = None):
    """The inputs, mask and labels of rows `idx` of a split of tokens (`collate`) or of features."""
    if isinstance(split, FeatureSplit):
        features = torch.from_numpy(split.features[idx]).to(device, non_blocking=True)
        labels = torch.from_numpy(split.labels[idx].astype(np.int64)).to(device)
        return features, torch.ones(len(idx), 1, dtype=torch.long, device=device), labels
    return collate(split, idx, pad_id, device, pad_to)


MEMORY_ERRORS = (torch.OutOfMemoryError, MemoryError)  # the device's memory, or the host's


def free_memory() -> None:
    """After a memory error, once its traceback (and the tensors its frames hold) is gone: collect what is
    left in reference cycles and give the allocator's cached blocks back to the GPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def in_length_order(lengths: np.ndarray, batch_size: int, step: Callable[[np.ndarray], T],
                    what: str) -> tuple[list[T], np.ndarray]:
    """`step` over a split's rows in batches of similar lengths, longest last (where memory runs out, it stays
    out); returns its results and the row order they follow. A batch that runs out of memory is done again in
    halves, and the rest of the split in batches of that size, down to one row: a row's result does not depend
    on its batch mates (up to float rounding), so a smaller batch costs time only."""
    order = np.argsort(lengths, kind="stable")
    results, start = [], 0
    while start < len(order):
        idx = order[start:start + batch_size]
        try:
            results.append(step(idx))
        except MEMORY_ERRORS as err:
            if len(idx) == 1:
                raise
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
        else:
            start += len(idx)
            continue
        free_memory()  # out of the except block: the failed batch's tensors are released
        batch_size = math.ceil(len(idx) / 2)
        log.warning("out of memory %s %d sequences (%s); %s in batches of %d", what, len(idx), message, what,
                    batch_size)
    return results, order


def in_split_order(chunks: list[torch.Tensor], order: np.ndarray) -> np.ndarray:
    """Rows computed in `order` (in_length_order), back in the split's order."""
    stacked = torch.cat(chunks).numpy()
    out = np.empty_like(stacked)
    out[order] = stacked
    return out


@torch.inference_mode()
def predict(model: nn.Module, split: TokenizedSplit | FeatureSplit, pad_id: int, runtime: Runtime,
            pad_to: int | None = None) -> np.ndarray:
    """Class probabilities [N, C] for a whole split, in the split's order (batches of similar lengths; one that
    runs out of memory is scored in halves: `in_length_order`), where rerunning the fit would not help."""
    model.eval()

    def score(idx: np.ndarray) -> torch.Tensor:
        input_ids, mask, _ = batch(split, idx, pad_id, runtime.device, pad_to)
        with runtime.autocast():
            logits = logits_of(model(input_ids, mask))
        return torch.softmax(logits.float(), dim=-1).cpu()

    chunks, order = in_length_order(split.lengths, runtime.eval_batch_size, score, "scoring")
    return in_split_order(chunks, order)


def make_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int, fused: bool = True):
    """AdamW with linear warm-up and decay. Fused (CPU and CUDA): one kernel per tensor, no temporaries; on
    CPU the for-loop version (fused=False) took 0.47 s per step for DNABERT-2-117M against 0.05 s fused."""
    # Biases, norms and embeddings are not decayed (the usual BERT/AdamW convention).
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, **({"fused": True} if fused else {"foreach": False}),
    )
    warmup = max(1, int(cfg.warmup_ratio * total_steps))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def backward(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
             weight: float = 1.0, count_flops: bool = False, precision: str = "fp32") -> tuple[torch.Tensor, float]:
    """Forward and backward of one (micro-)batch, adding to the parameters' gradients; labels are [B]
    (classification) or [B, L] with -100 where no loss is taken (masked LM). The mean loss is scaled by
    `weight`, the micro-batch's share of its optimiser step's batch, so that the gradients of a batch's
    micro-batches add up to the gradient of the batch's mean loss. Returns the detached scaled loss (no host
    sync) and, if asked, its FLOPs (forward and backward)."""
    with FlopCounterMode(display=False) if count_flops else nullcontext() as counter:
        with autocast(precision, input_ids.device):
            logits = logits_of(model(input_ids, mask))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        if weight != 1.0:  # a whole batch's loss stays exactly as it was (no extra kernel either)
            loss = loss * weight
        loss.backward()
    return loss.detach(), counter.get_total_flops() if counter is not None else 0.0


def optimizer_step(model: nn.Module, optimizer, scheduler, grad_clip: float) -> None:
    """Clip the accumulated gradients of a whole batch, step, and advance the learning-rate schedule."""
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def train_step(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, optimizer,
               scheduler, grad_clip: float, count_flops: bool = False,
               precision: str = "fp32") -> tuple[torch.Tensor, float]:
    """One optimisation step on a whole batch (masked-LM pretraining and the plain reference loop); `fit`
    splits its batches into micro-batches instead. Returns the detached loss and, if asked, its FLOPs."""
    optimizer.zero_grad(set_to_none=True)
    loss, flops = backward(model, input_ids, mask, labels, count_flops=count_flops, precision=precision)
    optimizer_step(model, optimizer, scheduler, grad_clip)
    return loss, flops


def compiled(model: nn.Module) -> nn.Module:
    """torch.compile'd `model`, sharing its parameters (state dicts are taken from `model`: no prefix).
    Dynamo's caches are cleared first: each trial's model differs (its dropout is a traced constant), and
    with the compiled graphs of earlier fits in a process it would soon reach its recompile limit and
    silently fall back to eager mode. Shapes are dynamic: batch lengths vary with bucketing."""
    torch.compiler.reset()
    return torch.compile(model, dynamic=True)


class BestEpoch:
    """Checkpoint selection on dev: the weights of the best dev-MCC epoch so far, and the epochs since it."""

    def __init__(self) -> None:
        self.epoch, self.dev, self.state, self.stale = 0, {"mcc": -math.inf}, None, 0

    def update(self, model: nn.Module, record: EpochResult) -> None:
        if record.dev["mcc"] > self.dev["mcc"]:
            self.epoch, self.dev, self.stale = record.epoch, record.dev, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale += 1


def fit(model: nn.Module, train: TokenizedSplit | FeatureSplit, dev: TokenizedSplit | FeatureSplit, pad_id: int,
        cfg: TrainConfig, runtime: Runtime, on_epoch: EpochCallback | None = None) -> FitResult:
    """Train `model` in place; on return it holds the weights of its best dev-MCC epoch."""
    model.to(runtime.device)
    forward = compiled(model) if runtime.compile else model
    rng = np.random.default_rng(cfg.seed)
    optimizer, scheduler = make_optimizer(model, cfg, math.ceil(len(train) / cfg.batch_size) * cfg.max_epochs)
    result, best = FitResult(), BestEpoch()
    flops_per_token, tokens_seen, counted = 0.0, 0, False
    micro = cfg.micro_batch_size
    start = time.perf_counter()

    for epoch in range(1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=runtime.device)  # accumulated on device: no sync per step
        for step, idx in enumerate(length_bucketed_batches(train.lengths, cfg.batch_size, rng)):
            # The batches, their order and the optimiser steps do not depend on grad_accumulation: only how
            # many sequences go through the model at once does. A batch's indices are sorted by length, so
            # each micro-batch, padded to its own longest sequence, pads little.
            optimizer.zero_grad(set_to_none=True)
            for first in range(0, len(idx), micro):
                rows = idx[first:first + micro]
                input_ids, mask, labels = batch(train, rows, pad_id, runtime.device)
                # One label per sequence: a micro-batch's share of the batch's rows is its share of the
                # batch's mean loss. FLOPs are counted on the first micro-batch only (in eager mode: a FLOP
                # counter stops torch.compile for good) and scaled by the tokens trained on.
                loss, flops = backward(forward if counted else model, input_ids, mask, labels,
                                       weight=len(rows) / len(idx), count_flops=not counted,
                                       precision=runtime.precision)
                if not counted:
                    flops_per_token, counted = flops / input_ids.numel(), True
                loss_sum += loss  # the weighted micro-batch losses of a batch add up to its mean loss
                tokens_seen += input_ids.numel()
            optimizer_step(model, optimizer, scheduler, cfg.grad_clip)
        train_loss = float(loss_sum) / (step + 1)
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss is {train_loss} in epoch {epoch} (lr={cfg.lr:g})")

        dev_metrics = classification_metrics(dev.labels, predict(forward, dev, pad_id, runtime))
        record = EpochResult(epoch, train_loss, dev_metrics, time.perf_counter() - t0)
        result.history.append(record)
        best.update(model, record)
        if on_epoch is not None:
            on_epoch(record)  # may raise optuna.TrialPruned
        if cfg.patience and best.stale >= cfg.patience:
            break

    model.load_state_dict(best.state)
    result.best_epoch, result.best_dev = best.epoch, best.dev
    result.train_seconds = time.perf_counter() - start
    result.flops = flops_per_token * tokens_seen
    return result


# ------------------------------------------------------------------------------ masked-LM pretraining
N_SPECIAL = len(SPECIAL_TOKENS)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int, mask_prob: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (Devlin et al. 2019): pick `mask_prob` of the valid, non-special positions (at
    least one per batch); of those 80% become [MASK], 10% a random non-special token, 10% stay. Labels
    hold the original id at picked positions and -100 (no loss) everywhere else."""
    maskable = attention_mask.bool() & (input_ids >= N_SPECIAL)
    picked = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & maskable
    if not picked.any():  # a batch with nothing to predict would give a NaN loss
        picked.view(-1)[maskable.view(-1).nonzero()[0]] = True
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(N_SPECIAL, vocab_size, input_ids.shape, generator=generator)
    inputs = torch.where(picked & (action < 0.8), MASK, input_ids)
    inputs = torch.where(picked & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, torch.where(picked, input_ids, -100)


@dataclass
class PretrainResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per log interval
    seconds: float = 0.0
    flops: float = 0.0
    tokens: int = 0
    steps: int = 0


@torch.inference_mode()
def masked_lm_eval(model: nn.Module, split: TokenizedSplit, pad_id: int, vocab_size: int, mask_prob: float,
                   runtime: Runtime) -> dict[str, float]:
    """Loss and accuracy on masked positions of held-out windows, with a fixed masking pattern."""
    model.eval()
    generator, batch_size, device = torch.Generator().manual_seed(0), runtime.eval_batch_size, runtime.device
    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(split), batch_size):
        input_ids, mask, _ = collate(split, np.arange(start, min(start + batch_size, len(split))), pad_id, torch.device("cpu"))
        inputs, labels = mask_tokens(input_ids, mask, vocab_size, mask_prob, generator)
        logits = logits_of(model(inputs.to(device), mask.to(device))).float()
        labels = labels.to(device)
        loss_sum += float(F.cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1), reduction="sum"))
        picked = labels != -100
        correct += int((logits.argmax(-1)[picked] == labels[picked]).sum())
        count += int(picked.sum())
    model.train()
    return {Metric.EVAL_MLM_LOSS: loss_sum / max(count, 1), Metric.EVAL_MLM_ACCURACY: correct / max(count, 1)}


def fit_masked_lm(model: nn.Module, windows: TokenizedSplit, held_out: TokenizedSplit, pad_id: int,
                  vocab_size: int, cfg: TrainConfig, runtime: Runtime, steps: int, mask_prob: float = 0.15,
                  log_every: int = 50, on_log: Callable[[int, dict[str, float]], None] | None = None) -> PretrainResult:
    """Masked-LM pretraining for a fixed number of optimiser steps (epochs over the windows as needed), fp32."""
    device = runtime.device
    model.to(device).train()
    rng, generator = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    result, flops_per_token = PretrainResult(), 0.0
    loss_sum, since_log = torch.zeros((), device=device), 0
    start = time.perf_counter()
    while result.steps < steps:
        for idx in length_bucketed_batches(windows.lengths, cfg.batch_size, rng):
            input_ids, mask, _ = collate(windows, idx, pad_id, torch.device("cpu"))
            inputs, labels = mask_tokens(input_ids, mask, vocab_size, mask_prob, generator)
            loss, flops = train_step(model, inputs.to(device), mask.to(device), labels.to(device), optimizer,
                                     scheduler, cfg.grad_clip, count_flops=not flops_per_token)
            flops_per_token = flops_per_token or flops / inputs.numel()
            loss_sum, since_log = loss_sum + loss, since_log + 1
            result.steps, result.tokens = result.steps + 1, result.tokens + inputs.numel()
            if result.steps % log_every == 0 or result.steps == steps:
                row = {Metric.MLM_LOSS: float(loss_sum) / since_log, Metric.TOKENS: result.tokens,
                       "seconds": time.perf_counter() - start}
                if not math.isfinite(row[Metric.MLM_LOSS]):
                    raise DivergedError(f"masked-LM loss is {row[Metric.MLM_LOSS]} at step {result.steps} (lr={cfg.lr:g})")
                row.update(masked_lm_eval(model, held_out, pad_id, vocab_size, mask_prob, runtime))
                result.history.append({"step": result.steps, **row})
                loss_sum, since_log = torch.zeros((), device=device), 0
                if on_log is not None:
                    on_log(result.steps, row)
            if result.steps == steps:
                break
    result.seconds = time.perf_counter() - start
    result.flops = flops_per_token * result.tokens
    return result
