"""The resident loader: a whole split held on the training device, batches by one gather.

An epoch's order and augmentation are functions of (seed, epoch) alone; with several
processes (DDP) each rank takes its slice of every global batch, so the data a run sees does
not depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from wideresnet.data.augment import TrainAugment
from wideresnet.seeds import Stream, generator


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of an epoch: a function of (seed, epoch) alone."""
    return torch.randperm(n, generator=generator(seed, epoch, Stream.ORDER))


def rank_slice(start: int, stop: int, rank: int, world: int) -> slice:
    """Rank `rank`'s part of positions [start, stop) of a global batch."""
    size = stop - start
    return slice(start + size * rank // world, start + size * (rank + 1) // world)


def reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, H, W, C) images reflection-padded by `pad` pixels, in their own dtype."""
    padded = torch.nn.functional.pad(
        images.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="reflect"
    ).permute(0, 2, 3, 1)
    return padded.to(images.dtype) if images.dtype == torch.uint8 else padded


class BatchLoader:
    """Batches from a split held whole on `device`.

    images: uint8 (N, H, W, C), or float32 when already preprocessed (ZCA). With `augment`
    (a TrainAugment) each training image is cropped and flipped, then gets its policy and
    Cutout; `mean`/`std` normalise on the 0-255 scale. With shuffle=True the order is a
    function of (seed, epoch) and the last partial batch is dropped; evaluation
    (shuffle=False) covers every image. `rank` of `world` processes takes its slice of each
    batch. Yields (x (B, C, H, W) float32 in channels_last memory format, y int64).
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        shuffle: bool = False,
        augment: TrainAugment | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        images = torch.as_tensor(images)
        self.device = torch.device(device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.n, self.height, self.width, channels = images.shape
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.augment = augment if shuffle else None
        if self.augment is not None and self.augment.pad:
            images = reflect_pad(images, self.augment.pad)  # a crop: a window of the store
        self.images = images.contiguous().to(self.device)
        self.mean = torch.tensor(mean if mean else [0.0] * channels, device=self.device)
        self.std = torch.tensor(std if std else [1.0] * channels, device=self.device)

    def __len__(self) -> int:
        """Batches per epoch (global batches: the same on every rank)."""
        if self.shuffle:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def batches(
        self, epoch: int = 0, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of an epoch, from batch index `start_batch` on (for mid-epoch resume)."""
        order = (
            epoch_order(self.n, self.seed, epoch) if self.shuffle else torch.arange(self.n)
        ).to(self.device)
        size = (self.height, self.width)
        if self.augment is not None:
            draws = self.augment.draw(self.n, self.seed, epoch, size, self.device)
        for b in range(start_batch, len(self)):
            stop = min((b + 1) * self.batch_size, self.n)
            positions = rank_slice(b * self.batch_size, stop, self.rank, self.world)
            index = order[positions]
            if self.augment is not None:
                x = self.augment.apply(self.images, index, positions, draws, size, self.mean)
            else:
                x = self.images[index].float()
            x = (x - self.mean) / self.std
            yield x.permute(0, 3, 1, 2), self.labels[index]

    __iter__ = batches
