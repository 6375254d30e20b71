"""Model registry: name -> builder(vocab_size, num_classes, pad_id, hyperparameters) -> nn.Module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..registry import Registry
from .unet import UNet1D, UNetConfig

ModelBuilder = Callable[[int, int, int, dict[str, Any]], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")


@MODELS.register("unet")
def build_unet(vocab_size: int, num_classes: int, pad_id: int, hp: dict[str, Any]) -> nn.Module:
    return UNet1D(UNetConfig(vocab_size, num_classes, pad_id, dropout=hp.get("dropout", 0.1)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
