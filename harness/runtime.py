"""Where and how the torch arms compute: device, precision and compilation, decided once per run.

`Runtime.resolve(device, precision, compile)` turns a run's request into fixed choices, checking them
against this machine at once (cuda asked for and absent is an error before anything runs, not in trial 0):
  - device `auto` is the GPU when there is one, else the CPU;
  - precision `auto` is bf16 autocast on a GPU that supports it (bf16 matmuls and convolutions; weights,
    optimiser state and losses stay fp32), fp32 elsewhere: bf16 autocast on a CPU is rarely faster;
  - compile wraps the model in `torch.compile` (minutes of compilation, repaid on a GPU over long runs).
The training loop, scoring and the recorded study configuration all read the same value.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .errors import DeviceError, ParameterError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ParameterError(f"device must be auto, cpu, cuda or cuda:<index>, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} was requested but CUDA is not available; use device=cpu or auto")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """Matmuls and convolutions in bf16 with fp32 weights and optimiser state; losses stay fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16, resolved
    compile: bool = False
    eval_batch_size: int = 256  # evaluation runs without gradients: larger batches than training fit

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto", compile: bool = False) -> Runtime:
        where = resolve_device(device)
        return cls(where, resolve_precision(precision, where), compile)

    def autocast(self):
        return autocast(self.precision, self.device)

    def describe(self) -> str:
        """The device as recorded on runs: `cpu`, or `cuda (<GPU name>)`."""
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)


CPU = Runtime(torch.device("cpu"))
