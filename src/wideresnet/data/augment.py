"""Training augmentation, done for a whole batch on the training device with no per-image
Python: the paper's crop and flip, then optionally a policy (data/policies.py) and Cutout.

The random choices of an epoch are drawn at once from the epoch's generators (seeds.py) and
indexed by an image's position in the epoch, so they do not depend on the batch size, the
number of processes, or where a resumed epoch restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wideresnet.config import DataConfig
from wideresnet.data.policies import Policy, PolicyDraws
from wideresnet.seeds import Stream, generator


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


def cutout_boxes(n: int, size: int, height: int, width: int, generator: torch.Generator):
    """(top, bottom, left, right) per image: a size x size square, centre anywhere, clipped
    (Cutout, DeVries & Taylor 2017)."""
    centre_y = torch.randint(0, height, (n,), generator=generator)
    centre_x = torch.randint(0, width, (n,), generator=generator)
    top, left = (centre_y - size // 2).clamp(min=0), (centre_x - size // 2).clamp(min=0)
    bottom = (centre_y + size - size // 2).clamp(max=height)
    right = (centre_x + size - size // 2).clamp(max=width)
    return torch.stack([top, bottom, left, right], 1)


def cutout(x: torch.Tensor, boxes: torch.Tensor, fill: torch.Tensor | float = 0.0):
    """x (B, H, W, C): the boxes (B, 4) set to `fill` (per channel). Filled with the
    normalisation's mean before normalising, a box is exactly 0 after it, as Cutout's code
    sets it."""
    rows = torch.arange(x.shape[1], device=x.device)[None, :, None]
    cols = torch.arange(x.shape[2], device=x.device)[None, None, :]
    top, bottom, left, right = (b.reshape(-1, 1, 1) for b in boxes.to(x.device).unbind(1))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return torch.where(inside[..., None], torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


@dataclass
class EpochDraws:
    """Every random choice of one epoch's augmentation, on the device, by position."""

    crops: CropFlip | None
    policy: PolicyDraws | None
    boxes: torch.Tensor | None


class TrainAugment:
    """What a training image goes through: crop + flip of the `pad`-pixel reflection-padded
    image (the paper's), then a `policy` (autoaugment | randaugment:N:M | trivialaugment;
    `compile_policy`: each slot one torch.compile graph) and a `cutout` square."""

    def __init__(
        self,
        *,
        crop_flip: bool = True,
        pad: int = 4,
        policy: str | None = None,
        cutout: int = 0,
        compile_policy: bool = False,
    ) -> None:
        self.pad = pad if crop_flip else 0
        self.crop_flip = crop_flip
        self.policy = Policy(policy, compile_policy) if policy else None
        self.cutout = cutout

    @classmethod
    def of(cls, data: DataConfig, compile_policy: bool = False) -> TrainAugment | None:
        """A run's training augmentation (None: none); the paper's crop where --crop is pad
        (the other crops are the streaming loader's, in its workers)."""
        if not (data.augment or data.policy or data.cutout):
            return None
        crop_flip = data.augment and data.crop == "pad"
        return cls(
            crop_flip=crop_flip,
            policy=data.policy,
            cutout=data.cutout,
            compile_policy=compile_policy,
        )

    def draw_crops(self, n: int, seed: int, epoch: int, device: torch.device) -> CropFlip:
        """The epoch's crop offsets and flips, by position."""
        return CropFlip.draw(n, self.pad, generator(seed, epoch, Stream.CROP_FLIP), device)

    def draw(
        self,
        n: int,
        seed: int,
        epoch: int,
        size: tuple[int, int],
        device: torch.device,
        crops: bool = True,
    ) -> EpochDraws:
        """Every draw of an epoch (`crops`: with the crops and flips, else those done before)."""
        policy = boxes = None
        crop_flip = self.draw_crops(n, seed, epoch, device) if crops and self.crop_flip else None
        if self.policy is not None:
            policy = self.policy.draw(n, generator(seed, epoch, Stream.POLICY)).to(device)
        if self.cutout:
            drawn = generator(seed, epoch, Stream.CUTOUT)
            boxes = cutout_boxes(n, self.cutout, *size, drawn).to(device)  # one copy an epoch
        return EpochDraws(crop_flip, policy, boxes)

    def finish(
        self, x: torch.Tensor, draws: EpochDraws, positions: slice, fill: torch.Tensor
    ) -> torch.Tensor:
        """After the crop and flip: the policy, then Cutout boxes at `fill` (the mean)."""
        if self.policy is not None and draws.policy is not None:
            x = self.policy.apply(x, draws.policy, positions)
        if draws.boxes is not None:
            x = cutout(x, draws.boxes[positions], fill)
        return x

    def apply(
        self,
        store: torch.Tensor,
        index: torch.Tensor,
        positions: slice,
        draws: EpochDraws,
        size: tuple[int, int],
        fill: torch.Tensor,
    ) -> torch.Tensor:
        """The augmented images `index` of the (padded) store, float (B, H, W, C) on the
        0-255 scale, Cutout boxes at `fill` (the normalisation's mean)."""
        if draws.crops is not None:
            x = draws.crops.apply(store, index, positions, size).float()
        else:
            x = store[index].float()
        return self.finish(x, draws, positions, fill)
