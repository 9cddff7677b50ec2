"""The data of a run that streams (data/stream.py): what its loaders read, limited as the
config says, and the identity of that data for resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wideresnet.config import Config
from wideresnet.data.augment import TrainAugment
from wideresnet.data.cache import fingerprint
from wideresnet.data.folders import FolderSource
from wideresnet.data.imagenet import EXCLUDE, excluded, listing
from wideresnet.data.preprocess import normalisation
from wideresnet.data.shards import ShardImages
from wideresnet.data.sources import load_dataset
from wideresnet.data.splits import split
from wideresnet.data.stream import ArrayImages, FileImages, StreamLoader
from wideresnet.data.transforms import Crop
from wideresnet.errors import ConfigError, DataError


def _file_images(root: Path, split: str) -> tuple[FileImages, list[str], list[str]]:
    """(the split's image files, its classes, the paths left out by DIR/wrn-exclude.txt)."""
    paths, labels, classes = listing(root, split)
    source = FolderSource(root)
    images = FileImages(root, paths, labels, getattr(source, "prefix", ""))
    left_out = excluded(root)
    if left_out:
        positions = {p: i for i, p in enumerate(paths)}
        for path in sorted(left_out & positions.keys()):
            i = positions[path]
            same = np.flatnonzero(labels == labels[i])
            kept = [j for j in same if paths[j] not in left_out]
            if not kept:
                raise DataError(f"{root / EXCLUDE}: leaves class {classes[labels[i]]} empty")
            nearest = min(kept, key=lambda j: (abs(j - i), j > i))
            images.substitutes[i] = paths[nearest]
    return images, classes, sorted(left_out & set(paths))


def open_source(
    config: Config, split: str, dataset: str | None = None, data_dir: str | None = None
):
    """(the images a streaming loader reads for a split, classes, paths excluded)."""
    data = config.data
    dataset, root = dataset or data.dataset, Path(data_dir or data.data_dir).expanduser()
    if dataset in ("imagenet", "folder"):
        return _file_images(root, split)
    if dataset == "shards":
        shards = ShardImages(root, split)
        return ArrayImages(shards, shards.labels, str(root)), shards.classes, []
    images, labels, classes = load_dataset(
        dataset, root, split, data.verify, labels=data.labels, image_size=data.image_size
    )
    return ArrayImages(images, labels, str(root)), classes, []


def identity(images: FileImages | ArrayImages) -> list[str | bytes]:
    """What identifies streamed data for resume: the files' names and labels (a file fixed
    in place keeps the run's data), or a sample of the decoded images."""
    if isinstance(images, FileImages):
        return ["\n".join(images.files), images.labels.tobytes()]
    step = max(1, len(images) // 1024)
    sample = np.stack([images.image(i) for i in range(0, len(images), step)])
    return [sample.tobytes(), np.asarray(images.labels).tobytes()]


def crop_of(config: Config) -> Crop:
    return Crop(config.data.crop, *config.data.crop_sizes())


@dataclass
class Streamed:
    train: StreamLoader | None
    test: StreamLoader
    classes: list[str]
    fingerprint: str
    flags: list[str]
    val: StreamLoader | None = None  # the held-out images, with --val-and-test


def _common(config: Config, device: torch.device, rank, world, workers, memory) -> dict:
    mean, std = normalisation(config.data.preprocess)
    return dict(
        device=device,
        crop=crop_of(config),
        image_size=config.data.image_size,
        mean=mean,
        std=std,
        seed=config.runtime.seed,
        rank=rank,
        world=world,
        workers=workers,
        memory=memory,
    )


def _excluded_flag(left_out: list[str]) -> list[str]:
    if not left_out:
        return []
    shown = ", ".join(left_out[:3]) + (" ..." if len(left_out) > 3 else "")
    return [
        f"{len(left_out)} image(s) excluded by {EXCLUDE} (each replaced by the nearest image "
        f"of its class): {shown}"
    ]


def stream_data(
    config: Config,
    device: torch.device,
    *,
    rank: int,
    world: int,
    workers: int,
    memory: int,
    compile_policy: bool = False,
) -> Streamed:
    """The run's training and test loaders, streaming (limits and held-out tail applied)."""
    data = config.data
    if data.preprocess == "zca":
        raise ConfigError(
            "--preprocess zca fits the whole training set: it needs --loader resident"
        )
    left_out: list[str] = []

    def open_split(name: str):
        source, classes, excluded = open_source(config, name)
        left_out.extend(excluded)
        return source, classes

    found = split(config, open_split)
    train, test, held_out, classes = found.train, found.test, found.val, found.classes
    augment = TrainAugment.of(data, compile_policy)
    common = _common(config, device, rank, world, workers, memory)
    train_loader = StreamLoader(
        train,
        config.optim.batch_size,
        shuffle=True,
        augment=augment,
        jitter=data.color_jitter,
        lighting_std=data.lighting,
        **common,
    )
    test_loader = StreamLoader(test, config.runtime.eval_batch_size, **common)
    parts = ["stream", *identity(train), *identity(test)]
    val_loader = None
    if held_out is not None:
        val_loader = StreamLoader(held_out, config.runtime.eval_batch_size, **common)
        parts += identity(held_out)
    return Streamed(
        train_loader,
        test_loader,
        classes,
        fingerprint(parts),
        _excluded_flag(left_out),
        val_loader,
    )


def stream_test(
    config: Config,
    device: torch.device,
    split: str,
    *,
    dataset: str | None,
    data_dir: str | None,
    workers: int,
    memory: int,
) -> Streamed:
    """A trained run's test loader, streaming: the split as its run cropped test images."""
    test, classes, left_out = open_source(config, split, dataset, data_dir)
    common = _common(config, device, 0, 1, workers, memory)
    loader = StreamLoader(test, config.runtime.eval_batch_size, **common)
    return Streamed(None, loader, classes, "", _excluded_flag(left_out))
