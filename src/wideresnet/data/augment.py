"""Augmentation done for a whole batch on the training device, with no per-image Python.

The random choices of an epoch are drawn at once from a generator seeded by (seed, epoch) and
indexed by an image's position in the epoch, so they do not depend on the batch size, the
number of processes, or where a resumed epoch restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one epoch's draws; `stream` separates independent draws."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7919 + stream)


@dataclass
class CropFlip:
    """The paper's CIFAR augmentation: a random HxW window of the image reflection-padded by
    `pad` pixels on each side, and a horizontal flip with probability 1/2."""

    offsets: torch.Tensor  # (N, 2) window corner (dy, dx) in [0, 2 pad]
    flips: torch.Tensor  # (N,) bool

    @classmethod
    def draw(cls, n: int, pad: int, generator: torch.Generator, device: torch.device) -> CropFlip:
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        return cls(offsets.to(device), flips.to(device))

    def apply(
        self, padded: torch.Tensor, index: torch.Tensor, positions: slice, size: tuple[int, int]
    ):
        """One gather: the crops of images `index` (N, H, W, C) from the padded store."""
        height, width = size
        dy, dx = self.offsets[positions].unbind(1)
        flip = self.flips[positions]
        rows = torch.arange(height, device=padded.device)
        cols = torch.arange(width, device=padded.device)
        r = (dy[:, None] + rows)[:, :, None]  # (B, H, 1)
        c = torch.where(flip[:, None], dx[:, None] + width - 1 - cols, dx[:, None] + cols)
        return padded[index[:, None, None], r, c[:, None, :]]  # (B, H, W, C)
