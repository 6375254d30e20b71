"""Fine-tuning throughput of the harness's training loop against a bare PyTorch loop, same model, data
and batch size.

Harness: `harness.train.fit` for one epoch (length-bucketed batches padded to their own longest row,
fused AdamW with warm-up, gradient clipping, the loss kept on the device, the best-dev-MCC weights
copied, dev scored — here a two-sequence dev split, so scoring costs next to nothing).
Bare: the textbook loop — the same batches in the same order, forward, cross-entropy, backward,
`torch.optim.AdamW` with its defaults, `zero_grad`; nothing else.

Both start from the same initial weights; the two are timed alternately (harness, bare, harness, ...)
and the median of `--repeats` epochs is reported as sequences per second and as the ratio
harness / bare (targets: >= 0.9 for DNABERT-2, >= 0.8 for the small CNNs).

    python benchmarks/harness_vs_bare.py                                  # all three models, CPU
    python benchmarks/harness_vs_bare.py --models dnabert2 --sequences 64 --device cuda

Writes `<out>/harness_vs_bare.csv` (one row per model and machine) and `<out>/harness_vs_bare.png`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from harness.data import Split  # noqa: E402
from harness.models import MODELS, count_parameters, logits_of  # noqa: E402
from harness.synthetic import make_synthetic_task  # noqa: E402
from harness.tokenizers import CharTokenizer, tokenize  # noqa: E402
from harness.runtime import Runtime, resolve_device  # noqa: E402
from harness.train import TrainConfig, collate, fit, length_bucketed_batches  # noqa: E402

# The arms' real sizes: DNABERT-2-117M, ConvNova at its published width, the U-Net as registered.
SIZES = {"dnabert2": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
         "convnova": {"hidden_dim": 128}, "unet": {}}


def build(model: str, tok) -> torch.nn.Module:
    spec = MODELS.get(model)
    return spec.classifier(spec.architecture(tok, SIZES[model]), tok, 2, 0.1)


def harness_epoch(model, train, dev, pad_id: int, batch: int, device: str) -> float:
    cfg = TrainConfig(lr=1e-4, batch_size=batch, max_epochs=1, patience=None, seed=0)
    return fit(model, train, dev, pad_id, cfg, Runtime.resolve(device, "fp32")).history[0].seconds


def bare_epoch(model, train, pad_id: int, batch: int, device: str) -> float:
    dev = resolve_device(device)
    model.to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = length_bucketed_batches(train.lengths, batch, np.random.default_rng(0))  # fit's batches
    start = time.perf_counter()
    for idx in batches:
        input_ids, mask, labels = collate(train, idx, pad_id, dev)
        loss = F.cross_entropy(logits_of(model(input_ids, mask)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="dnabert2,convnova,unet")
    p.add_argument("--sequences", type=int, default=64, help="training sequences per epoch (synthetic, 60-140 bp)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()

    tok = CharTokenizer()
    task = make_synthetic_task("synthetic/motif_binary")
    train = tokenize(tok, Split(task.train.sequences[:args.sequences], task.train.labels[:args.sequences]))
    one_each = [int(np.flatnonzero(task.dev.labels == c)[0]) for c in (0, 1)]  # scoring costs next to nothing
    dev = tokenize(tok, Split([task.dev.sequences[i] for i in one_each], task.dev.labels[one_each]))
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        initial = build(name, tok)
        times = {"harness": [], "bare": []}
        for r in range(args.repeats + 1):  # the first round warms up both
            for side in ("harness", "bare"):
                model = copy.deepcopy(initial)
                seconds = (harness_epoch(model, train, dev, tok.pad_id, args.batch_size, args.device) if side == "harness"
                           else bare_epoch(model, train, tok.pad_id, args.batch_size, args.device))
                if r:
                    times[side].append(seconds)
        h, b = statistics.median(times["harness"]), statistics.median(times["bare"])
        target = 0.9 if name == "dnabert2" else 0.8
        row = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)",
               "device": args.device, "model": name, "params": count_parameters(initial),
               "sequences": len(train), "batch_size": args.batch_size,
               "harness_seq_per_s": len(train) / h, "bare_seq_per_s": len(train) / b, "ratio": b / h,
               "target": target, "target_met": b / h >= target,
               "harness_epochs_s": " ".join(f"{t:.3f}" for t in times["harness"]),
               "bare_epochs_s": " ".join(f"{t:.3f}" for t in times["bare"])}
        rows.append(row)
        print(f"{name:<9} {row['params'] / 1e6:7.2f}M  harness {row['harness_seq_per_s']:8.1f} seq/s  bare "
              f"{row['bare_seq_per_s']:8.1f} seq/s  ratio {row['ratio']:.3f} (target >= {target}: "
              f"{'PASS' if row['target_met'] else 'MISS'})", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "harness_vs_bare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["harness_seq_per_s"] for r in rows], 0.4, label="harness")
    ax.bar(x + 0.2, [r["bare_seq_per_s"] for r in rows], 0.4, label="bare PyTorch loop")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['ratio']:.2f}x", (i, max(r["harness_seq_per_s"], r["bare_seq_per_s"])), ha="center",
                    va="bottom")
    ax.set_xticks(x, [r["model"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("training sequences per second")
    ax.set_title(f"{rows[0]['machine']}, {args.device}, batch {args.batch_size}")
    ax.legend(frameon=False)
    fig.savefig(args.out / "harness_vs_bare.png", dpi=150, bbox_inches="tight")
    print(f"wrote {args.out / 'harness_vs_bare.csv'} and {args.out / 'harness_vs_bare.png'}")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
