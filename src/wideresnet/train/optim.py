"""The paper's optimiser and schedule: SGD with Nesterov momentum, weight decay on every
parameter, the learning rate stepped down at milestone epochs, momentum restarted at a drop."""

from __future__ import annotations

import torch
from torch import nn

from wideresnet.config import OptimConfig


def build_optimizer(model: nn.Module, optim: OptimConfig, fused: bool = False) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(),
        lr=optim.lr,
        momentum=optim.momentum,
        dampening=0,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
        **({"fused": True} if fused else {}),
    )


def lr_at(optim: OptimConfig, epoch: int) -> float:
    """Learning rate of epoch `epoch` (counted from 1): epoch m of the milestones is the first
    at the lower rate."""
    drops = sum(1 for m in optim.milestones if epoch >= m)
    return optim.lr * optim.lr_decay**drops


def begin_epoch(optimizer: torch.optim.Optimizer, optim: OptimConfig, epoch: int, fresh: bool):
    """Set the epoch's learning rate; at a drop, restart momentum as the authors' code does
    (it builds a new optimizer). `fresh`: the epoch starts at its first step (not a resume)."""
    lr = lr_at(optim, epoch)
    previous = lr_at(optim, epoch - 1) if epoch > 1 else lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    if optim.reset_momentum and lr != previous and fresh:
        optimizer.state.clear()
