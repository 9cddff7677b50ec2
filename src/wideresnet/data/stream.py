"""The streaming loader: for sets too large to hold on the device (ImageNet, millions of small
images), each batch decoded when it is needed, by torch DataLoader worker processes.

A batch is a function of (seed, epoch, batch index) alone: its positions in the epoch's order
(loader.epoch_order), this process's slice of them, and each image's draws (the epoch's crop
draws of the resident loader for the paper's crop, else the image's own generator). So the
batches do not depend on the number of workers or of training processes, and a resumed epoch
starts at its next batch without decoding the ones done. Workers send uint8 batches (pinned on
a GPU); flips, colour jitter, lighting, policies, Cutout and normalisation run on the device.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from wideresnet.data.augment import CropFlip, TrainAugment
from wideresnet.data.folders import MAX_IMAGE_BYTES, decode_image, read_image_file
from wideresnet.data.loader import epoch_order, rank_slice
from wideresnet.data.transforms import (
    ColourDraws,
    Crop,
    color_jitter,
    colour_draws,
    decode_crop,
    flip,
    lighting,
    pad_crop,
)
from wideresnet.errors import DataError
from wideresnet.seeds import Stream, numpy_generator

MAX_WORKERS = 16
MAX_PREFETCH = 4  # batches each worker prepares ahead


class FileImages:
    """Image files: DIR/<relative path> in a folder, or members of a .zip (each worker opens
    its own handle). An entry of `substitutes` (wrn-exclude.txt) is read from another path."""

    def __init__(self, root: Path, files: list[str], labels: np.ndarray, prefix: str = "") -> None:
        self.root, self.files, self.labels, self.prefix = root, files, labels, prefix
        self.substitutes: dict[int, str] = {}  # position -> the relative path read instead
        self._zip: tuple[int, zipfile.ZipFile] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def take(self, start: int, stop: int) -> FileImages:
        """Positions [start, stop) as a source of their own."""
        part = FileImages(self.root, self.files[start:stop], self.labels[start:stop], self.prefix)
        part.substitutes = {i - start: p for i, p in self.substitutes.items() if start <= i < stop}
        return part

    def name(self, i: int) -> str:
        return f"{self.root}/{self.substitutes.get(i, self.files[i])}"

    def read(self, i: int) -> bytes:
        relative = self.substitutes.get(i, self.files[i])
        if not self.root.is_file():
            return read_image_file(self.root / relative)
        if self._zip is None or self._zip[0] != os.getpid():  # a handle per process
            self._zip = (os.getpid(), zipfile.ZipFile(self.root))
        try:
            member = self._zip[1].getinfo(self.prefix + relative)
            if member.file_size > MAX_IMAGE_BYTES:
                raise DataError(f"{self.name(i)}: over the {MAX_IMAGE_BYTES:,}-byte limit")
            return self._zip[1].read(member)
        except (OSError, zipfile.BadZipFile, KeyError) as error:
            raise DataError(f"{self.name(i)}: unreadable ({error})") from None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}  # a worker opens its own


class ArrayImages:
    """Decoded images held in an array (or a memory map of shards): positions [start, stop)."""

    def __init__(self, images, labels: np.ndarray, where: str, start: int = 0, stop=None) -> None:
        self.all, self.all_labels, self.where, self.start = images, np.asarray(labels), where, start
        self.stop = len(images) if stop is None else stop
        self.labels = self.all_labels[start : self.stop]

    def __len__(self) -> int:
        return self.stop - self.start

    def take(self, start: int, stop: int) -> ArrayImages:
        """Positions [start, stop) as a source of their own."""
        begin = self.start + start
        return ArrayImages(self.all, self.all_labels, self.where, begin, self.start + stop)

    def image(self, i: int) -> np.ndarray:
        return np.asarray(self.all[self.start + i])

    def name(self, i: int) -> str:
        return f"{self.where}[{self.start + i}]"


@dataclass
class EpochPlan:
    """What every batch of one epoch is made from: the order and the epoch-wide crop draws."""

    epoch: int
    order: torch.Tensor
    crops: CropFlip | None  # the paper's crop: the resident loader's draws, by position


class BatchMaker(torch.utils.data.Dataset):
    """Batch b of an epoch, decoded (what a DataLoader worker runs): uint8 images, labels
    and the per-image draws the device applies; a file that fails is reported, not raised,
    so that it reaches the training process as one line."""

    def __init__(self, loader: StreamLoader, plan: EpochPlan) -> None:
        self.loader, self.plan = loader, plan

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, b: int) -> dict:
        positions = self.loader.positions(b)
        index = self.plan.order[positions].tolist()
        draws, images = [], []
        try:
            for position, i in zip(range(positions.start, positions.stop), index):
                image, drawn = self._image(position, i)
                images.append(image)
                draws.append(drawn)
        except DataError as error:
            return {"error": str(error)}
        batch = {
            "images": torch.from_numpy(np.stack(images)),
            "labels": torch.from_numpy(self.loader.source.labels[index].astype(np.int64)),
        }
        if draws and draws[0] is not None:
            batch["flips"] = torch.tensor([d.flip for d in draws])
            batch["jitter"] = torch.from_numpy(np.stack([d.jitter for d in draws])).float()
            batch["order"] = torch.from_numpy(np.stack([d.order for d in draws]))
            batch["alphas"] = torch.from_numpy(np.stack([d.alphas for d in draws])).float()
        return batch

    def _image(self, position: int, i: int) -> tuple[np.ndarray, ColourDraws | None]:
        """One image as the run crops it, and its own draws (None: the epoch's crops say)."""
        loader, plan, source = self.loader, self.plan, self.loader.source
        drawn = None
        if loader.training and (loader.colour or loader.crop.mode != "pad"):
            # colour first: the draws of a flip and its colour do not depend on the image size
            draw = numpy_generator(loader.seed, plan.epoch, Stream.CROP_FLIP, position)
            drawn = colour_draws(draw, loader.jitter, loader.lighting)
        if loader.crop.mode != "pad":
            if isinstance(source, ArrayImages):
                raise DataError(f"{source.where}: random-sized crops need the image files")
            data = source.read(i)
            return decode_crop(data, source.name(i), loader.crop, draw if drawn else None), drawn
        if isinstance(source, ArrayImages):
            image = source.image(i)
        else:
            image = decode_image(source.read(i), source.name(i), loader.image_size)
        if plan.crops is not None:
            dy, dx = plan.crops.offsets[position].tolist()
            image = pad_crop(image, loader.pad, dy, dx)
            if drawn is not None:
                drawn.flip = bool(plan.crops.flips[position])
        return image, drawn


def default_workers(processes: int) -> int:
    """The cores each training process may use for decoding, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, (os.cpu_count() or 1) // max(1, processes)))


class StreamLoader:
    """Batches decoded as they are needed, with the resident loader's interface (n,
    batch_size, len(), batches(epoch, start_batch); yields (x (B, C, H, W) float32, y)).

    `crop` says how images are cropped (pad: the paper's, drawn as the resident loader draws
    it when `augment` has crop_flip; random-sized / random-resized: ImageNet's); `jitter` and
    `lighting_std` are fb.resnet.torch's colour noise; `augment`'s policy and Cutout follow on
    the device. `workers` decoding processes (0: this one) each prepare up to `prefetch`
    batches ahead, as many as `memory` (bytes) holds."""

    def __init__(
        self,
        source: FileImages | ArrayImages,
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        shuffle: bool = False,
        crop: Crop = Crop(),
        augment: TrainAugment | None = None,
        image_size: int | None = None,
        jitter: float = 0.0,
        lighting_std: float = 0.0,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        memory: int | None = None,
    ) -> None:
        self.source, self.n, self.batch_size = source, len(source), batch_size
        self.device, self.shuffle, self.crop = torch.device(device), shuffle, crop
        self.training = shuffle
        self.augment = augment if shuffle else None
        self.pad = self.augment.pad if self.augment is not None else 0
        self.image_size = image_size
        self.jitter, self.lighting = (jitter, lighting_std) if shuffle else (0.0, 0.0)
        self.colour = bool(self.jitter or self.lighting)
        self.seed, self.rank, self.world, self.workers = seed, rank, world, workers
        self.mean = torch.tensor(mean or (0.0, 0.0, 0.0), device=self.device)
        self.std = torch.tensor(std or (1.0, 1.0, 1.0), device=self.device)
        self.prefetch = self._prefetch(memory)

    @property
    def side(self) -> int:
        """The side of the images a batch holds."""
        if self.crop.mode == "pad":
            return self.image_size or 32
        return self.crop.size if self.training else self.crop.eval_size

    def _prefetch(self, memory: int | None) -> int:
        """Batches each worker may queue: as many as `memory` holds, 1 to MAX_PREFETCH."""
        if memory is None or not self.workers:
            return 2
        batch_bytes = self.batch_size * 3 * self.side**2
        return max(1, min(MAX_PREFETCH, memory // max(1, batch_bytes * self.workers)))

    def __len__(self) -> int:
        """Batches per epoch (global batches: the same on every rank)."""
        if self.shuffle:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def positions(self, b: int) -> slice:
        """This process's positions of global batch b in the epoch's order."""
        stop = min((b + 1) * self.batch_size, self.n)
        return rank_slice(b * self.batch_size, stop, self.rank, self.world)

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's order and, for the paper's crop, its crops and flips (as the resident
        loader draws them, offsets kept as int16: a few bytes an image)."""
        order = epoch_order(self.n, self.seed, epoch) if self.shuffle else torch.arange(self.n)
        crops = None
        augment = self.augment
        if augment is not None and augment.crop_flip and self.crop.mode == "pad":
            drawn = augment.draw_crops(self.n, self.seed, epoch, torch.device("cpu"))
            crops = CropFlip(drawn.offsets.to(torch.int16), drawn.flips)
        return EpochPlan(epoch, order, crops)

    def _decoded(self, maker: BatchMaker, indices: range) -> Iterator[dict]:
        if not self.workers:
            return (maker[b] for b in indices)
        return iter(
            DataLoader(
                maker,
                batch_size=None,
                sampler=indices,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=self.prefetch,
            )
        )

    def batches(
        self, epoch: int = 0, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of an epoch, from batch index `start_batch` on (the ones before are
        never decoded)."""
        plan = self.plan(epoch)
        indices = range(start_batch, len(self))
        after_crop = None
        for b, batch in zip(indices, self._decoded(BatchMaker(self, plan), indices)):
            if "error" in batch:
                raise DataError(batch["error"])
            x, y, positions = self._on_device(batch, plan, b)
            if self.augment is not None:
                if after_crop is None:  # the policy's and Cutout's draws, once an epoch
                    size = tuple(x.shape[1:3])
                    after_crop = self.augment.draw(
                        self.n, self.seed, epoch, size, self.device, crops=False
                    )
                x = self.augment.finish(x, after_crop, positions, self.mean)
            x = (x - self.mean) / self.std
            yield x.permute(0, 3, 1, 2), y

    def _on_device(self, batch: dict, plan: EpochPlan, b: int):
        """The batch on the device as float (B, H, W, 3), flipped and coloured."""
        cuda = self.device.type == "cuda"
        positions = self.positions(b)
        x = batch["images"].to(self.device, non_blocking=cuda).float()
        y = batch["labels"].to(self.device, non_blocking=cuda)
        if "flips" in batch:
            x = flip(x, batch["flips"].to(self.device))
        elif plan.crops is not None:
            x = flip(x, plan.crops.flips[positions].to(self.device))
        if self.jitter:
            x = color_jitter(x, batch["jitter"].to(self.device), batch["order"].to(self.device))
        if self.lighting:
            x = lighting(x, batch["alphas"].to(self.device))
        return x, y, positions
