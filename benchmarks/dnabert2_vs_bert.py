"""Train-step time of the native DNABERT-2 against a FLOP-matched transformers BERT.

What is measured
----------------
Two models of the published DNABERT-2 size (117M parameters, randomly initialised):

* native: `harness.models.dnabert2.DNABERT2ForSequenceClassification` (hidden 768, 12 layers,
  12 heads, gated-GELU MLP with a 2 x 3072 up-projection, ALiBi attention bias through SDPA);
* bert: `transformers.BertForSequenceClassification` with the same FLOPs per token (hidden 768,
  12 layers, 12 heads, intermediate_size 4608 = the FLOPs of the gated 2 x 3072 MLP, SDPA attention).

One train step is: forward on a batch of token ids, cross-entropy on the two-class logits, backward,
AdamW step (fused, as the harness's training loop runs it), zero_grad. Both models are in train mode
(dropout on) and see the same batch: random ids from the BPE range 5..4095 between [CLS] and [SEP],
right padded (pad id 3) to the batch's longest row, as a GUE batch is (`--no-padding` for all-ones
masks). Lengths are in BPE tokens; the defaults 32 and 128 span the GUE tasks' typical lengths.

For each length: two warm-up steps per model, then `--repeats` timed steps per model, interleaved
(native, bert, native, bert, ...) so that load from other processes hits both alike. Reported: the
median seconds per step, tokens per second, the ratio native / bert (target <= 1.1), the FLOPs of one
forward + backward counted with `torch.utils.flop_counter.FlopCounterMode` (AdamW's element-wise work is
not counted), and the achieved FLOP rate as a fraction of a measured dense matmul rate of the same
dtype on the same device (on a GPU this is the model FLOP utilisation against a measured, not a data
sheet, peak). fp32 on CUDA runs with PyTorch's default matmul precision (no TF32), matmul rate alike.
The medians of forward + backward alone are reported too, to tell model cost from optimiser cost.

On a CPU shared with other jobs, interleaving evens out slow phases but not a systematic effect:
multi-threaded kernels wait on descheduled threads, which costs the model with more, smaller ops
more. `--threads 1` then gives steadier ratios (the script notes a busy CPU at start).

How to run
----------
    python benchmarks/dnabert2_vs_bert.py                       # CUDA if available, else CPU; fp32
    python benchmarks/dnabert2_vs_bert.py --device cuda --bf16  # bf16 autocast on a GPU
    python benchmarks/dnabert2_vs_bert.py --lengths 32,128,256 --batch-size 8 --repeats 5 --threads 2

A table goes to stdout; `<out>/dnabert2_vs_bert.csv` gains (or updates) one row per (machine, device,
dtype, length, batch size), and `<out>/dnabert2_vs_bert.png` shows this run's seconds per step. The
exit code is 0 whether or not the target is met: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmark this checkout's harness, installed or not

from harness.models.dnabert2 import DNABERT2Config, DNABERT2ForSequenceClassification

VOCAB_SIZE = 4096
FIRST_BPE_ID = 5  # DNABERT-2's specials: [UNK]=0, [CLS]=1, [SEP]=2, [PAD]=3, [MASK]=4
CLS_ID, SEP_ID, PAD_ID = 1, 2, 3
TARGET_RATIO = 1.1
CSV_NAME, PNG_NAME = "dnabert2_vs_bert.csv", "dnabert2_vs_bert.png"
CSV_KEY = ("machine", "device", "dtype", "length", "batch_size")


# ----------------------------------------------------------------------------------------- models

@dataclass
class Contender:
    """A model with its optimiser, built once and reused for every length."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_native() -> nn.Module:
    config = DNABERT2Config(vocab_size=VOCAB_SIZE, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072, num_labels=2)
    return DNABERT2ForSequenceClassification(config)


def build_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    # transformers 5.x takes the attention implementation through the config.
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=4608, max_position_embeddings=512,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, num_labels=2,
                        attn_implementation="sdpa")
    model = BertForSequenceClassification(config)
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"BERT baseline got attention {model.config._attn_implementation!r}, not sdpa")
    return model


def build_contenders(device: torch.device) -> list[Contender]:
    contenders = []
    for name, build in (("native", build_native), ("bert", build_bert)):
        torch.manual_seed(0)
        model = build().to(device).train()
        contenders.append(Contender(name, model, torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)))
    return contenders


# ------------------------------------------------------------------------------------------ batch

@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, L]
    attention_mask: torch.Tensor  # [B, L], 1 = token, 0 = padding
    labels: torch.Tensor          # [B]

    @property
    def n_tokens(self) -> int:
        return self.input_ids.numel()


def make_batch(batch_size: int, length: int, device: torch.device, padding: bool, seed: int = 0) -> Batch:
    """[CLS] random BPE ids [SEP] [PAD]...; with padding, rows have 50-100 % of `length` real tokens
    and the first row is full, so the batch is exactly `length` wide, as a padded GUE batch is."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_BPE_ID, VOCAB_SIZE, (batch_size, length), generator=g)
    lengths = torch.full((batch_size,), length)
    if padding:
        lengths = torch.randint(max(2, length // 2), length + 1, (batch_size,), generator=g)
        lengths[0] = length
    positions = torch.arange(length)[None, :]
    mask = (positions < lengths[:, None]).long()
    ids[:, 0] = CLS_ID
    ids[torch.arange(batch_size), lengths - 1] = SEP_ID
    ids[mask == 0] = PAD_ID
    labels = torch.randint(0, 2, (batch_size,), generator=g)
    return Batch(ids.to(device), mask.to(device), labels.to(device))


# ------------------------------------------------------------------------------------- train step

def forward_backward(model: nn.Module, batch: Batch, bf16: bool) -> None:
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    F.cross_entropy(logits.float(), batch.labels).backward()


def train_step(c: Contender, batch: Batch, bf16: bool) -> tuple[float, float]:
    """One step; returns the seconds of (forward + backward, the whole step incl. AdamW and zero_grad)."""
    device = batch.input_ids.device
    synchronize(device)
    start = time.perf_counter()
    forward_backward(c.model, batch, bf16)
    synchronize(device)
    middle = time.perf_counter()
    c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return middle - start, time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of fn(), with the GPU's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class StepTimes:
    forward_backward: list[float]
    step: list[float]


def interleaved_step_times(contenders: list[Contender], batch: Batch, bf16: bool, warmup: int,
                           repeats: int) -> dict[str, StepTimes]:
    for _ in range(warmup):
        for c in contenders:
            train_step(c, batch, bf16)
    times = {c.name: StepTimes([], []) for c in contenders}
    for _ in range(repeats):
        for c in contenders:
            fb, step = train_step(c, batch, bf16)
            times[c.name].forward_backward.append(fb)
            times[c.name].step.append(step)
    return times


# ------------------------------------------------------------------------------------------ FLOPs

def _attention_flops(query: tuple[int, ...], key: tuple[int, ...], value: tuple[int, ...]) -> int:
    """Q K^T and P V of attention: 2 * B * A * L * S * (D + Dv)."""
    *batch_heads, length, head_dim = query
    keys, value_dim = key[-2], value[-1]
    return 2 * batch_heads[0] * batch_heads[1] * length * keys * (head_dim + value_dim)


def _cpu_flash_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * _attention_flops(query, key, value)  # dV, dP, dQ, dK: twice the forward's matmuls


# FlopCounterMode knows the CUDA SDPA kernels but not the CPU flash kernel both models use on CPU.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
}


def count_flops(c: Contender, batch: Batch, bf16: bool) -> int:
    """FLOPs of one forward + backward (matmuls and attention; the optimiser step is element-wise)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        forward_backward(c.model, batch, bf16)
    c.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best of `repeats` dense n x n x n matmuls: the reference rate for the utilisation figures."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up: library init, kernel selection
    best = min(timed(lambda: torch.matmul(a, b), device) for _ in range(repeats))
    return 2 * n**3 / best


# ---------------------------------------------------------------------------------------- results

def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def load_average() -> float | None:
    """The 1-minute load average (Unix), to judge whether other processes shared the CPU."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def warn_if_shared(device: torch.device, load: float | None) -> None:
    if device.type == "cpu" and load is not None and load > 0.5 and torch.get_num_threads() > 1:
        print(f"note: load average {load} on {os.cpu_count()} cores at start: other processes use the CPU. "
              "Multi-threaded kernels then wait on descheduled threads, which penalises the model with "
              "more, smaller ops more than the other; `--threads 1` gives steadier ratios.")


def result_row(length: int, batch: Batch, times: dict[str, StepTimes], flops: dict[str, int],
               matmul_rate: float, context: dict[str, object]) -> dict[str, object]:
    native_s, bert_s = statistics.median(times["native"].step), statistics.median(times["bert"].step)
    native_fb = statistics.median(times["native"].forward_backward)
    bert_fb = statistics.median(times["bert"].forward_backward)
    ratio = native_s / bert_s
    return {
        **context,
        "length": length,
        "tokens_per_step": batch.n_tokens,
        "model_native_s": round(native_s, 5),
        "bert_s": round(bert_s, 5),
        "ratio": round(ratio, 4),
        "target_met": ratio <= TARGET_RATIO,
        "native_tokens_per_s": round(batch.n_tokens / native_s, 1),
        "bert_tokens_per_s": round(batch.n_tokens / bert_s, 1),
        "native_flops": flops["native"],
        "bert_flops": flops["bert"],
        "flop_ratio": round(flops["native"] / flops["bert"], 4),
        "matmul_flops_per_s": round(matmul_rate),
        "achieved_fraction_of_matmul": round(flops["native"] / native_s / matmul_rate, 4),
        "bert_fraction_of_matmul": round(flops["bert"] / bert_s / matmul_rate, 4),
        # Diagnostics: forward + backward alone (the step minus AdamW and zero_grad), every step's time.
        "native_fwd_bwd_s": round(native_fb, 5),
        "bert_fwd_bwd_s": round(bert_fb, 5),
        "fwd_bwd_ratio": round(native_fb / bert_fb, 4),
        "native_step_times_s": " ".join(f"{t:.4f}" for t in times["native"].step),
        "bert_step_times_s": " ".join(f"{t:.4f}" for t in times["bert"].step),
    }


def print_table(rows: list[dict[str, object]]) -> None:
    columns = [  # (header, key, format); seconds are medians over the timed steps
        ("length", "length", "{:d}"),
        ("native s/step", "model_native_s", "{:.4f}"),
        ("bert s/step", "bert_s", "{:.4f}"),
        ("ratio", "ratio", "{:.3f}"),
        ("native tok/s", "native_tokens_per_s", "{:.1f}"),
        ("bert tok/s", "bert_tokens_per_s", "{:.1f}"),
        ("native GFLOP", "native_flops", lambda v: f"{v / 1e9:.2f}"),
        ("bert GFLOP", "bert_flops", lambda v: f"{v / 1e9:.2f}"),
        ("FLOP ratio", "flop_ratio", "{:.4f}"),
        ("native %mm", "achieved_fraction_of_matmul", lambda v: f"{100 * v:.1f}%"),
        ("bert %mm", "bert_fraction_of_matmul", lambda v: f"{100 * v:.1f}%"),
        ("native fwd+bwd s", "native_fwd_bwd_s", "{:.4f}"),
        ("bert fwd+bwd s", "bert_fwd_bwd_s", "{:.4f}"),
        ("fwd+bwd ratio", "fwd_bwd_ratio", "{:.3f}"),
    ]
    cells = [[fmt(r[key]) if callable(fmt) else fmt.format(r[key]) for _, key, fmt in columns] for r in rows]
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, (header, _, _) in enumerate(columns)]
    line = "  ".join(header.rjust(w) for (header, _, _), w in zip(columns, widths))
    print(line)
    print("-" * len(line))
    for row in cells:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    print("%mm: counted FLOPs of forward + backward / median step time / measured dense matmul rate")
    print()
    for r in rows:
        verdict = "PASS" if r["target_met"] else "MISS"
        print(f"length {r['length']}: target ratio <= {TARGET_RATIO}: {verdict} (ratio {r['ratio']:.3f})")


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    """Add this run's rows, replacing earlier rows with the same machine/device/dtype/length/batch."""
    def key(r: dict[str, object]) -> tuple[str, ...]:
        return tuple(str(r.get(k, "")) for k in CSV_KEY)

    new_keys = {key(r) for r in rows}
    kept: list[dict[str, object]] = []
    if path.is_file():
        with path.open(newline="") as f:
            kept = [r for r in csv.DictReader(f) if key(r) not in new_keys]
    columns = list(rows[0])
    columns += [k for r in kept for k in r if k not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(kept + rows)


def plot(path: Path, rows: list[dict[str, object]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [str(r["length"]) for r in rows]
    x = range(len(rows))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 + 1.8 * len(rows)), 4.6))
    native = ax.bar([i - width / 2 for i in x], [r["model_native_s"] for r in rows], width,
                    label="native DNABERT-2", color="tab:blue")
    bert = ax.bar([i + width / 2 for i in x], [r["bert_s"] for r in rows], width,
                  label="transformers BERT (sdpa, FLOP-matched)", color="tab:gray")
    ax.bar_label(native, fmt="%.3f", fontsize=8)
    ax.bar_label(bert, fmt="%.3f", fontsize=8)
    top = max(max(r["model_native_s"], r["bert_s"]) for r in rows)
    for i, r in zip(x, rows):
        colour = "tab:green" if r["target_met"] else "tab:red"
        ax.annotate(f"ratio {r['ratio']:.2f}", (i, max(r["model_native_s"], r["bert_s"]) + 0.09 * top),
                    ha="center", fontsize=9, color=colour, weight="bold")
    ax.set_xticks(list(x), lengths)
    ax.set_xlabel(f"sequence length (BPE tokens), batch {rows[0]['batch_size']}")
    ax.set_ylabel("seconds per train step (median)")
    ax.set_ylim(0, top * 1.25)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="torch.autocast to bfloat16 (meant for CUDA)")
    p.add_argument("--lengths", default="32,128", help="comma-separated lengths in BPE tokens")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model and length")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per model and length")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    p.add_argument("--no-padding", action="store_true", help="all-ones attention masks")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available to this torch build")
    args.lengths = [int(v) for v in args.lengths.split(",") if v.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = "bf16-autocast" if args.bf16 else "fp32"
    if args.bf16 and device.type != "cuda":
        print("note: --bf16 on CPU runs, but the benchmark's bf16 figures are meant for CUDA")

    load_at_start = load_average()
    machine = machine_name(device)
    print(f"{machine} | torch {torch.__version__} | {device.type} {dtype_name} | batch {args.batch_size} "
          f"| lengths {args.lengths} | warm-up {args.warmup}, timed {args.repeats} steps per model")
    warn_if_shared(device, load_at_start)
    matmul_n = 8192 if device.type == "cuda" else 2048
    matmul_dtype = torch.bfloat16 if args.bf16 else torch.float32
    matmul_rate = matmul_flops_per_s(device, matmul_dtype, matmul_n)
    print(f"dense {matmul_n}^3 matmul ({str(matmul_dtype).removeprefix('torch.')}): "
          f"{matmul_rate / 1e12:.3f} TFLOP/s (best of 5)")

    contenders = build_contenders(device)
    for c in contenders:
        print(f"{c.name}: {type(c.model).__name__}, {c.n_params / 1e6:.2f}M parameters")

    import transformers

    context = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "device": device.type,
        "dtype": dtype_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "batch_size": args.batch_size,
        "padded": not args.no_padding,
        "load_average_at_start": load_at_start,
    }
    rows = []
    for length in args.lengths:
        batch = make_batch(args.batch_size, length, device, padding=not args.no_padding)
        flops = {c.name: count_flops(c, batch, args.bf16) for c in contenders}
        times = interleaved_step_times(contenders, batch, args.bf16, args.warmup, args.repeats)
        row = result_row(length, batch, times, flops, matmul_rate, context)
        rows.append(row)
        print(f"length {length}: step times native {row['native_step_times_s']} s, "
              f"bert {row['bert_step_times_s']} s", flush=True)

    print()
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / CSV_NAME, rows)
    plot(args.out / PNG_NAME, rows, f"native DNABERT-2 vs transformers BERT, {device.type} {dtype_name}\n"
         f"{machine}, torch {torch.__version__}")
    print(f"\nwrote {args.out / CSV_NAME} and {args.out / PNG_NAME}")
    return 0  # a benchmark: the target is reported, not enforced


if __name__ == "__main__":
    sys.exit(main())
