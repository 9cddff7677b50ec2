"""The batch loader: a whole split held on the training device, batches by one gather.

An epoch's order and augmentation are functions of (seed, epoch) alone; with several
processes (DDP) each rank takes its slice of every global batch, so the data a run sees does
not depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from wideresnet.data.augment import CropFlip, epoch_generator
from wideresnet.data.policies import Policy, cutout_boxes
from wideresnet.data.policies import cutout as apply_cutout


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of an epoch: a function of (seed, epoch) alone."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch))


class BatchLoader:
    """Batches from a split held whole on `device`.

    images: uint8 (N, H, W, C), or float32 when already preprocessed (ZCA). With augment=True
    each image gets a random HxW crop of its `pad`-pixel reflection-padded self and a random
    horizontal flip, applied to the batch with one gather; then, when training, the `policy`
    (data/policies.py; with `compile_policy` each of its slots one torch.compile graph) and a
    `cutout` square. `mean`/`std` normalise on the 0-255 scale. With shuffle=True the order
    is a function of (seed, epoch) and the last partial batch is dropped; evaluation
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
        augment: bool = False,
        pad: int = 4,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        policy: str | None = None,
        cutout: int = 0,
        compile_policy: bool = False,
    ) -> None:
        images = torch.as_tensor(images)
        self.device = torch.device(device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.n, self.height, self.width, channels = images.shape
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.rank, self.world = rank, world
        self.policy = Policy(policy, compile_policy) if policy and shuffle else None
        self.cutout = cutout if shuffle else 0
        self.pad = pad if augment else 0
        if self.pad:
            # reflection-pad once; a crop is then a window of this stored tensor
            padded = torch.nn.functional.pad(
                images.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="reflect"
            ).permute(0, 2, 3, 1)
            images = padded.to(images.dtype) if images.dtype == torch.uint8 else padded
        self.images = images.contiguous().to(self.device)
        self.mean = torch.tensor(mean if mean else [0.0] * channels, device=self.device)
        self.std = torch.tensor(std if std else [1.0] * channels, device=self.device)

    def __len__(self) -> int:
        """Batches per epoch (global batches: the same on every rank)."""
        if self.shuffle:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def _local(self, start: int, stop: int) -> slice:
        """This rank's part of positions [start, stop) of a global batch."""
        size = stop - start
        return slice(
            start + size * self.rank // self.world, start + size * (self.rank + 1) // self.world
        )

    def batches(
        self, epoch: int = 0, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of an epoch, from batch index `start_batch` on (for mid-epoch resume)."""
        order = (
            epoch_order(self.n, self.seed, epoch) if self.shuffle else torch.arange(self.n)
        ).to(self.device)
        if self.augment:
            crops = CropFlip.draw(
                self.n, self.pad, epoch_generator(self.seed, epoch, 1), self.device
            )
        if self.policy is not None:
            draws = self.policy.draw(self.n, epoch_generator(self.seed, epoch, 2)).to(self.device)
        if self.cutout:
            generator = epoch_generator(self.seed, epoch, 3)
            boxes = cutout_boxes(self.n, self.cutout, self.height, self.width, generator)
            boxes = boxes.to(self.device)  # once per epoch: a batch copies nothing
        for b in range(start_batch, len(self)):
            positions = self._local(b * self.batch_size, min((b + 1) * self.batch_size, self.n))
            index = order[positions]
            if self.augment:
                x = crops.apply(self.images, index, positions, (self.height, self.width))
            else:
                x = self.images[index]
            x = x.float()
            if self.policy is not None:
                x = self.policy.apply(x, draws, positions)
            x = (x - self.mean) / self.std
            if self.cutout:
                x = apply_cutout(x, boxes[positions])
            yield x.permute(0, 3, 1, 2), self.labels[index]

    __iter__ = batches
