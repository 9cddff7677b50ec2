"""One training step: forward, loss, backward, update, and the epoch's running sums.

The sums stay on the device, so a CUDA epoch needs no host sync. A non-finite loss stops the
run before its update: checked at once on the eager path, or (with fused SGD) handed to the
optimizer as `found_inf`, which skips that update on the device, and reported when the sums
are next read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.train.runtime import Speed


class NonFiniteLoss(Exception):
    """The loss of step `step` (None: some step since the last check) was NaN or infinite."""

    def __init__(self, step: int | None) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


@dataclass
class EpochSums:
    """Running sums of an epoch, on the device."""

    loss: torch.Tensor  # float64: sum of per-image losses
    wrong: torch.Tensor  # int64: misclassified training images
    nonfinite: torch.Tensor  # bool: a skipped non-finite step (fused SGD)

    @classmethod
    def start(cls, device: torch.device, loss: float = 0.0, wrong: int = 0) -> EpochSums:
        return cls(
            torch.tensor(loss, dtype=torch.float64, device=device),
            torch.tensor(wrong, dtype=torch.int64, device=device),
            torch.zeros((), dtype=torch.bool, device=device),
        )

    def check(self) -> None:
        """Raise NonFiniteLoss if a deferred step was non-finite (a host sync)."""
        if bool(self.nonfinite.item()):
            raise NonFiniteLoss(None)


def train_step(
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    speed: Speed,
    sums: EpochSums,
    step: int = 0,
) -> None:
    """One SGD step on (x, y); `step` (1-based, within the epoch) names a non-finite loss."""
    if speed.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with speed.autocast():
        logits = forward(speed.input(x))
    loss = loss_fn(logits, y)
    bad = ~torch.isfinite(loss)
    deferred = speed.fused_sgd
    if not deferred and bool(bad.item()):
        raise NonFiniteLoss(step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if deferred:
        optimizer.found_inf = bad.float()
        sums.nonfinite |= bad
    optimizer.step()
    sums.loss += loss.detach().double() * len(y)
    sums.wrong += (logits.detach().argmax(1) != y).sum()
