"""The one training loop every torch arm uses, and batched prediction.

Batches are length-bucketed and padded only to their own longest sequence. After every epoch the dev
split is scored as a whole; the best-dev-MCC weights are kept (checkpoint selection on dev only) and
training stops early after `patience` epochs without improvement. A non-finite training loss raises
`DivergedError` so the tuner can record the trial as diverged.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .metrics import classification_metrics
from .tokenizers import TokenizedSplit


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class DeviceError(RuntimeError):
    """The requested device is not available."""


@dataclass
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    max_epochs: int = 10
    patience: int | None = 3
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 256


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


EpochCallback = Callable[[EpochResult], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} was requested but CUDA is not available; use device=cpu or auto")
    return torch.device(device)


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


def collate(split: TokenizedSplit, idx: np.ndarray, pad_id: int, device: torch.device):
    lengths = split.lengths[idx]
    ids = np.full((len(idx), int(lengths.max())), pad_id, dtype=np.int64)
    for row, i in enumerate(idx):
        ids[row, :lengths[row]] = split.row(i)
    input_ids = torch.from_numpy(ids).to(device, non_blocking=True)
    mask = (torch.arange(ids.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]).long().to(device)
    labels = torch.from_numpy(split.labels[idx].astype(np.int64)).to(device)
    return input_ids, mask, labels


@torch.inference_mode()
def predict(model: nn.Module, split: TokenizedSplit, pad_id: int, device: torch.device,
            batch_size: int = 256) -> np.ndarray:
    """Class probabilities [N, C] for a whole split, in the split's order."""
    model.eval()
    order = np.argsort(split.lengths, kind="stable")
    chunks = []
    for start in range(0, len(order), batch_size):
        input_ids, mask, _ = collate(split, order[start:start + batch_size], pad_id, device)
        chunks.append(torch.softmax(model(input_ids, mask).float(), dim=-1).cpu())
    probs = torch.cat(chunks).numpy()
    out = np.empty_like(probs)
    out[order] = probs
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int):
    # Biases, norms and embeddings are not decayed (the usual BERT/AdamW convention).
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    warmup = max(1, int(cfg.warmup_ratio * total_steps))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def fit(model: nn.Module, train: TokenizedSplit, dev: TokenizedSplit, pad_id: int, cfg: TrainConfig,
        on_epoch: EpochCallback | None = None) -> FitResult:
    """Train `model` in place; on return it holds the weights of its best dev-MCC epoch."""
    device = resolve_device(cfg.device)
    model.to(device)
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    optimizer, scheduler = make_optimizer(model, cfg, steps_per_epoch * cfg.max_epochs)
    result = FitResult(best_dev={"mcc": -math.inf})
    best_state, stale, flops_per_token, tokens_seen = None, 0, 0.0, 0
    start = time.perf_counter()

    for epoch in range(1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)  # accumulated on device: no sync per step
        for step, idx in enumerate(length_bucketed_batches(train.lengths, cfg.batch_size, rng)):
            input_ids, mask, labels = collate(train, idx, pad_id, device)
            # FLOPs are counted on the first step only and scaled by the tokens trained on.
            with (nullcontext() if flops_per_token else FlopCounterMode(display=False)) as counter:
                loss = F.cross_entropy(model(input_ids, mask), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if counter is not None:
                flops_per_token = counter.get_total_flops() / input_ids.numel()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            tokens_seen += input_ids.numel()
        train_loss = float(loss_sum) / (step + 1)
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss is {train_loss} in epoch {epoch} (lr={cfg.lr:g})")

        dev_metrics = classification_metrics(dev.labels, predict(model, dev, pad_id, device, cfg.eval_batch_size))
        record = EpochResult(epoch, train_loss, dev_metrics, time.perf_counter() - t0)
        result.history.append(record)
        if dev_metrics["mcc"] > result.best_dev["mcc"]:
            result.best_epoch, result.best_dev, stale = epoch, dev_metrics, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(record)  # may raise optuna.TrialPruned
        if cfg.patience and stale >= cfg.patience:
            break

    model.load_state_dict(best_state)
    result.train_seconds = time.perf_counter() - start
    result.flops = flops_per_token * tokens_seen
    return result

