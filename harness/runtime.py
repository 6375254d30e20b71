"""Where and how the torch arms compute: device, precision, compilation and determinism, decided once per run.

`Runtime.resolve(device, precision, compile, deterministic)` turns a run's request into fixed choices, checking
them against this machine at once (cuda asked for and absent is an error before anything runs, not in trial 0):
  - device `auto` is the GPU when there is one, else the CPU;
  - precision `auto` is bf16 autocast on a GPU that supports it (bf16 matmuls and convolutions; weights,
    optimiser state and losses stay fp32), fp32 elsewhere: bf16 autocast on a CPU is rarely faster;
  - compile wraps the model in `torch.compile` (minutes of compilation, repaid on a GPU over long runs);
  - deterministic asks for bit-reproducible GPU runs where PyTorch can give them (see `Runtime.reproducible`).
The training loop, scoring and the recorded study configuration all read the same value.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import DeviceError, ParameterError

log = logging.getLogger("harness")

PRECISIONS = ("auto", "fp32", "bf16")
# cuBLAS picks its reduction split by workspace; with more than one workspace per stream its GEMMs are not
# reproducible. PyTorch's reproducibility notes ask for one of these two settings before cuBLAS starts.
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")


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


def deterministic_cublas() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG while it still counts: PyTorch reads it when cuBLAS first runs, so it is set
    when the runtime is resolved, before any fit. A value the user set that is already deterministic is kept."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") in DETERMINISTIC_CUBLAS:
        return
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = DETERMINISTIC_CUBLAS[0]
    if torch.cuda.is_initialized():  # e.g. a caller that used the GPU before asking for determinism
        log.warning("deterministic: CUDA was initialised before CUBLAS_WORKSPACE_CONFIG=%s was set; cuBLAS may "
                    "already have chosen its workspaces. Set it in the environment to be sure.",
                    DETERMINISTIC_CUBLAS[0])


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16, resolved
    compile: bool = False
    eval_batch_size: int = 256  # evaluation runs without gradients: larger batches than training fit
    deterministic: bool = False  # deterministic kernels only (`reproducible`)

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto", compile: bool = False,
                deterministic: bool = False) -> Runtime:
        where = resolve_device(device)
        if deterministic:
            deterministic_cublas()
        return cls(where, resolve_precision(precision, where), compile, deterministic=deterministic)

    @contextmanager
    def reproducible(self) -> Iterator[None]:
        """Deterministic kernels for everything run inside, when `deterministic`; else nothing changes.

        PyTorch's switches are process-wide, so they are set for the whole of a run (`tuning.tune`, every fit and
        every scoring of it) and the previous values are restored when it ends:
          - `torch.use_deterministic_algorithms(True)`, strict (warn_only=False): an op with no deterministic
            kernel raises at its first call, naming itself, rather than a run tagged deterministic being silently
            not; a model's ops run in its first training step, so such a model fails at once, not hours in;
          - cuDNN: deterministic convolution algorithms, and no benchmarking (which may pick different ones);
          - attention: the math backend of `scaled_dot_product_attention` only. The flash and memory-efficient
            backward passes accumulate with atomics; the math one is plain matmuls and softmax.
        On a CPU this is nearly a no-op: PyTorch's CPU kernels are already deterministic for a given thread
        count; only attention changes kernel (math instead of the fused CPU one)."""
        if not self.deterministic:
            yield
            return
        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                  torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            with sdpa_kernel(SDPBackend.MATH):
                yield
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]

    def autocast(self):
        return autocast(self.precision, self.device)

    def describe(self) -> str:
        """The device as recorded on runs: `cpu`, or `cuda (<GPU name>)`."""
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)


CPU = Runtime(torch.device("cpu"))
