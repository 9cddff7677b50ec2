"""An exponential moving average of the weights (`--ema-decay`), tested beside them."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """ema = decay * ema + (1 - decay) * w after every step; batch-norm statistics copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for average, weight in zip(self.model.parameters(), model.parameters()):
            average.lerp_(weight.detach(), 1.0 - self.decay)
        for average, buffer in zip(self.model.buffers(), model.buffers()):
            average.copy_(buffer)
