"""The optimiser and its schedules: the paper's SGD with Nesterov momentum, weight decay on
every parameter, and the learning rate stepped down at milestone epochs (momentum restarted at
each drop, as the authors' code rebuilds its optimizer); or a cosine schedule, per step or per
epoch; either with a linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

from wideresnet.config import OptimConfig


def build_optimizer(model: nn.Module, optim: OptimConfig, fused: bool = False) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(),
        lr=optim.base_lr,
        momentum=optim.momentum,
        dampening=0,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
        **({"fused": True} if fused else {}),
    )


def lr_at(optim: OptimConfig, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """Learning rate of step `step` (from 0) of epoch `epoch` (from 1).

    step: epoch m of the milestones is the first at the lower rate. cosine: from lr to 0 over
    the epochs after warm-up, per step; cosine-epoch: the same, once per epoch. A warm-up rises
    linearly, step by step, from lr / warm-up steps to lr over `warmup_epochs`."""
    done = (epoch - 1) * steps_per_epoch + step  # steps before this one
    warmup = optim.warmup_epochs * steps_per_epoch
    if done < warmup:
        return optim.base_lr * (done + 1) / warmup
    if optim.lr_schedule == "step":
        return _stepped(optim, epoch)
    if optim.lr_schedule == "cosine-epoch":
        done = (epoch - 1) * steps_per_epoch
    total = optim.epochs * steps_per_epoch - warmup
    progress = (done - warmup) / max(total, 1)
    return optim.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _stepped(optim: OptimConfig, epoch: int) -> float:
    return optim.base_lr * optim.lr_decay ** sum(1 for m in optim.milestones if epoch >= m)


def per_step(optim: OptimConfig) -> bool:
    """Whether the rate changes within an epoch (cosine per step, or a warm-up)."""
    return optim.lr_schedule == "cosine" or optim.warmup_epochs > 0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def begin_epoch(optimizer: torch.optim.Optimizer, optim: OptimConfig, epoch: int, fresh: bool):
    """Set the epoch's learning rate; at a milestone drop, restart momentum as the authors'
    code does (it builds a new optimizer). `fresh`: the epoch starts at its first step."""
    set_lr(optimizer, lr_at(optim, epoch))
    step_schedule = optim.lr_schedule == "step" and optim.reset_momentum
    if (
        step_schedule
        and fresh
        and epoch > 1
        and _stepped(optim, epoch) != _stepped(optim, epoch - 1)
    ):
        optimizer.state.clear()
