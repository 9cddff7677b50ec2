"""Parameters and multiply-accumulates, counted on the built module."""

from __future__ import annotations

import torch
from torch import nn

FORWARDS_PER_TRAINING_IMAGE = 3  # a training image costs about three forward passes
NORMS = nn.BatchNorm1d | nn.BatchNorm2d | nn.GroupNorm  # what the models normalise with


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


def count_params(model: nn.Module) -> int:
    """Learnable parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_summary(model: nn.Module, input_size: int | None = None, in_channels: int = 3) -> dict:
    """Parameters, multiply-accumulates per image and a per-stage table, measured by running
    one image through the built module with hooks on every conv and linear layer."""
    input_size = input_size or getattr(model, "input_size", 32)
    macs = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            macs += output[0].numel() * k // module.groups
        else:
            macs += module.in_features * module.out_features

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    stage_rows: list[dict] = []
    for name, stage in model.stages():

        def record(module, inputs, output, name=name, stage=stage):
            blocks = len(stage) if isinstance(stage, nn.Sequential) else 1
            stage_rows.append(
                {
                    "stage": name,
                    "output": list(output.shape[1:]),
                    "channels": output.shape[1],
                    "blocks": blocks,
                    "params": count_params(stage),
                }
            )

        target = stage[-1] if isinstance(stage, nn.ModuleList) else stage
        hooks.append(target.register_forward_hook(record))
    # normalisation keeps shapes and counts no MACs: skipped, it is most of a meta forward's time
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    for norm in norms:
        norm.forward = _unchanged
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # "meta": counted from shapes alone, no weights
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for norm in norms:
            del norm.forward
        for hook in hooks:
            hook.remove()
    return {
        "params": count_params(model),
        "macs": macs,
        "input": [in_channels, input_size, input_size],
        "stages": stage_rows,
    }
