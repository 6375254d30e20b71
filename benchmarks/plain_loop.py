"""The plain reference loop that `fast_path_parity.py` checks the harness's training loop against.

It differs from `harness.train.fit` in exactly what the fast path changes, and shares everything else (the
batch collation, the train step, the AdamW schedule, dev scoring, checkpoint selection on dev, patience):
  - batches: the textbook order (a fresh permutation per epoch), every batch padded to the split's longest
    sequence, instead of length-bucketed batches padded to their own longest;
  - AdamW: the for-loop kernel (`foreach=False`) instead of the fused one;
  - a host sync per step (`loss.item()`) instead of a loss accumulated on the device;
  - fp32 and no torch.compile (the runtime must say so).
Dev and test are scored padded to their split's longest sequence too.

`plain_loop()` puts it in place of `harness.train.fit` and `harness.train.predict` (the torch arms call them
through that module) for the code inside the `with`. Run as a script, it is `python -m harness` with the
plain loop:

    python benchmarks/plain_loop.py run --arm unet_char --precision fp32 ...

The study's recorded configuration does not name the loop: run it in its own storage (the benchmark uses a
fresh folder per run), never in one a fast-path study shares.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator

import numpy as np
from torch import nn

from harness import train
from harness.metrics import classification_metrics
from harness.runtime import Runtime
from harness.tokenizers import TokenizedSplit

fast_predict = train.predict  # the harness's own, with padding to a fixed width


def shuffled_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The textbook order (no bucketing)."""
    order = rng.permutation(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def plain_predict(model: nn.Module, split: TokenizedSplit, pad_id: int, runtime: Runtime,
                  pad_to: int | None = None) -> np.ndarray:
    """Scored as the plain loop scores dev: every batch padded to the split's longest sequence."""
    return fast_predict(model, split, pad_id, runtime, pad_to=pad_to or int(split.lengths.max()))


def plain_fit(model: nn.Module, train_split: TokenizedSplit, dev: TokenizedSplit, pad_id: int,
              cfg: train.TrainConfig, runtime: Runtime, on_epoch: train.EpochCallback | None = None) -> train.FitResult:
    """`harness.train.fit` as a textbook loop (see the module); same arguments, same result."""
    if runtime.precision != "fp32" or runtime.compile:
        raise ValueError("the plain loop is fp32 without compile: pass precision=fp32 and compile=false")
    model.to(runtime.device)
    rng = np.random.default_rng(cfg.seed)
    pad_train = int(train_split.lengths.max())
    optimizer, scheduler = train.make_optimizer(model, cfg, math.ceil(len(train_split) / cfg.batch_size) * cfg.max_epochs,
                                                fused=False)
    result, best = train.FitResult(), train.BestEpoch()
    flops_per_token, tokens_seen = 0.0, 0
    start = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum = 0.0
        for step, idx in enumerate(shuffled_batches(train_split.lengths, cfg.batch_size, rng)):
            input_ids, mask, labels = train.collate(train_split, idx, pad_id, runtime.device, pad_train)
            loss, flops = train.train_step(model, input_ids, mask, labels, optimizer, scheduler, cfg.grad_clip,
                                           count_flops=not flops_per_token)
            flops_per_token = flops_per_token or flops / input_ids.numel()
            loss_sum += loss.item()  # a host sync per step
            tokens_seen += input_ids.numel()
        train_loss = loss_sum / (step + 1)
        if not math.isfinite(train_loss):
            raise train.DivergedError(f"training loss is {train_loss} in epoch {epoch} (lr={cfg.lr:g})")
        record = train.EpochResult(epoch, train_loss, classification_metrics(
            dev.labels, plain_predict(model, dev, pad_id, runtime)), time.perf_counter() - t0)
        result.history.append(record)
        best.update(model, record)
        if on_epoch is not None:
            on_epoch(record)
        if cfg.patience and best.stale >= cfg.patience:
            break
    model.load_state_dict(best.state)
    result.best_epoch, result.best_dev = best.epoch, best.dev
    result.train_seconds, result.flops = time.perf_counter() - start, flops_per_token * tokens_seen
    return result


@contextlib.contextmanager
def plain_loop() -> Iterator[None]:
    """Within the block, every torch arm trains and scores with the plain loop."""
    fit, predict = train.fit, train.predict
    train.fit, train.predict = plain_fit, plain_predict
    try:
        yield
    finally:
        train.fit, train.predict = fit, predict


def main(argv: list[str]) -> int:
    from harness.cli import main as harness

    with plain_loop():
        return harness(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
