"""What deterministic=true costs: seconds per train step of a torch arm's model with the runtime's deterministic
switches (`Runtime.reproducible`) against without, and whether the two give the same loss.

Steps are interleaved (default, deterministic, default, ...) so load from other processes hits both; medians
are reported. On a CPU the switches change little: PyTorch's CPU kernels are already deterministic, and only
attention changes kernel (math instead of the fused CPU one), so expect a ratio near 1 for the U-Net and the
cost of the math attention for DNABERT-2. On a GPU run it with `--device cuda`: there cuDNN's deterministic
convolutions, no cuDNN benchmarking and math attention are the cost.

    python benchmarks/deterministic_cost.py                       # CPU, lengths 128 and 512, batch 32
    python benchmarks/deterministic_cost.py --device cuda --lengths 128,512,2048
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout's harness, installed or not

from harness.models import MODELS
from harness.runtime import Runtime
from harness.tokenizers import CharTokenizer
from harness.train import TrainConfig, make_optimizer, train_step

MODELS_TIMED = {  # model: architecture hyperparameters (the U-Net's defaults; a small DNABERT-2)
    "unet": {},
    "dnabert2": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
}


def step_seconds(model_name: str, hp: dict, length: int, batch: int, runtime: Runtime, repeats: int,
                 warmup: int) -> tuple[list[float], list[float], bool]:
    """Seconds of `repeats` train steps each way, interleaved, and whether the first step's loss (the same
    weights and batch each way) is bit-identical."""
    tok, spec = CharTokenizer(), MODELS.get(model_name)
    ids = torch.randint(5, tok.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    mask, labels = torch.ones_like(ids), torch.arange(batch) % 2
    ids, mask, labels = ids.to(runtime.device), mask.to(runtime.device), labels.to(runtime.device)
    torch.manual_seed(0)
    model = spec.classifier(spec.architecture(tok, hp), tok, 2, 0.0).to(runtime.device)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer, scheduler = make_optimizer(model, TrainConfig(lr=1e-4), 10_000)
    modes = {False: runtime, True: Runtime(runtime.device, runtime.precision, deterministic=True)}
    times, losses = {False: [], True: []}, {}
    for i in range(warmup + repeats):
        for deterministic, mode in modes.items():
            if i == 0:  # the same weights and batch each way: are the losses equal?
                model.load_state_dict(start)
            with mode.reproducible():
                if runtime.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                loss, _ = train_step(model, ids, mask, labels, optimizer, scheduler, 1.0)
                loss = float(loss)  # a host sync: the step is done
                if i >= warmup:
                    times[deterministic].append(time.perf_counter() - t0)
            losses.setdefault(deterministic, loss)
    return times[False], times[True], losses[False] == losses[True]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    runtime = Runtime.resolve(args.device, "fp32", deterministic=True)  # sets CUBLAS_WORKSPACE_CONFIG first
    runtime = Runtime(runtime.device, runtime.precision)
    print(f"device {runtime.describe()}, fp32, batch {args.batch_size}, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}; medians of {args.repeats} interleaved steps")
    print(f"{'model':<10}{'length':>8}{'default s':>12}{'determ. s':>12}{'ratio':>8}  first-step loss equal")
    for name, hp in MODELS_TIMED.items():
        for length in map(int, args.lengths.split(",")):
            fast, det, same = step_seconds(name, hp, length, args.batch_size, runtime, args.repeats, args.warmup)
            a, b = statistics.median(fast), statistics.median(det)
            print(f"{name:<10}{length:>8}{a:>12.4f}{b:>12.4f}{b / a:>8.2f}  {same}")


if __name__ == "__main__":
    main()
