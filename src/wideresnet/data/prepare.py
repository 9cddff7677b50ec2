"""The data of a run, prepared the same way for `wrn train` and `wrn eval`: resident (the
decoded set held on the device, data/loader.py) or streaming (data/streamed.py), as
data/memory.py chooses."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from wideresnet.config import Config
from wideresnet.data.augment import TrainAugment
from wideresnet.data.cache import fingerprint
from wideresnet.data.loader import BatchLoader
from wideresnet.data.memory import LoaderChoice, choose_loader
from wideresnet.data.preprocess import cached_zca, normalisation, zca_transform
from wideresnet.data.sources import load_dataset
from wideresnet.data.splits import Arrays, split
from wideresnet.data.stream import StreamLoader, default_workers
from wideresnet.data.streamed import stream_data, stream_test

Split = tuple[np.ndarray, np.ndarray]


Loader = BatchLoader | StreamLoader


@dataclass
class RunData:
    train: Loader | None
    test: Loader
    classes: list[str]
    train_size: int
    test_size: int
    val: Loader | None = None  # the held-out images, with --val-and-test
    fingerprint: str = ""  # of the images and labels a run trains and tests on
    seconds: float = 0.0  # wall clock spent loading and preparing them
    loader: str = "resident"  # resident | stream
    loader_reason: str = ""
    flags: list[str] = field(default_factory=list)  # how the data departs from the listing


def data_fingerprint(*arrays: np.ndarray) -> str:
    """Identifies a run's data wherever it lives: shapes, every label, a sample of images."""
    parts: list[str | bytes] = []
    for array in arrays:
        step = 1 if array.ndim == 1 else max(1, len(array) // 1024)
        parts += [f"{array.dtype}{array.shape}", np.ascontiguousarray(array[::step]).tobytes()]
    return fingerprint(parts)


def load_split(config: Config, split: str, dataset: str | None = None, data_dir: str | None = None):
    """(images, labels, classes) of one split of the config's dataset (or another one)."""
    data = config.data
    return load_dataset(
        dataset or data.dataset,
        data_dir or data.data_dir,
        split,
        data.verify,
        labels=data.labels,
        image_size=data.image_size,
    )


def training_split(config: Config) -> tuple[Split, Split | None, list[str]]:
    """(x_train, y_train), the held-out (x_val, y_val) or None, classes: the training images
    exactly as a run uses them (the first train_limit, less the last val_size)."""
    found = split(config, _arrays(config), test=False)
    held_out = (found.val.images, found.val.labels) if found.val is not None else None
    return (found.train.images, found.train.labels), held_out, found.classes


def _arrays(config: Config):
    """open_split for the resident loader: a split decoded into memory."""

    def open_split(name: str) -> tuple[Arrays, list[str]]:
        images, labels, classes = load_split(config, name)
        return Arrays(images, labels), classes

    return open_split


def _whitener(config: Config, x_train: np.ndarray):
    """The run's GCN + ZCA fit on its training images (cached), as a transform."""
    mean, whiten = cached_zca(x_train, f"{config.data.dataset}|{config.data.data_dir}")
    return lambda images: zca_transform(images, mean, whiten)


def _loader(
    config: Config,
    images,
    labels,
    device,
    *,
    train: bool,
    rank: int,
    world: int,
    compile_policy: bool = False,
) -> BatchLoader:
    data = config.data
    mean, std = normalisation(data.preprocess)
    augment = TrainAugment.of(data, compile_policy) if train else None
    return BatchLoader(
        images,
        labels,
        config.optim.batch_size if train else config.runtime.eval_batch_size,
        device=device,
        shuffle=train,
        augment=augment,
        mean=mean,
        std=std,
        seed=config.runtime.seed,
        rank=rank,
        world=world,
    )


def run_data(
    config: Config,
    device: torch.device,
    *,
    rank: int = 0,
    world: int = 1,
    compile_policy: bool = False,
    recorded_loader: str | None = None,
) -> RunData:
    """Training and test loaders of a run (the test set is the held-out tail with val_size);
    `compile_policy`: the augmentation policy's slots as torch.compile graphs;
    `recorded_loader`: the loader a resumed run started with (kept under --loader auto)."""
    start = time.perf_counter()
    choice = choose_loader(config, device, recorded_loader)
    if choice.kind == "stream":
        data = _streamed(config, device, rank, world, compile_policy, choice)
    else:
        data = _resident(config, device, rank, world, compile_policy)
    data.loader, data.loader_reason = choice.kind, choice.reason
    data.seconds = time.perf_counter() - start
    return data


def _streamed(config, device, rank, world, compile_policy, choice: LoaderChoice) -> RunData:
    workers = config.data.workers
    workers = default_workers(world) if workers is None else workers
    streamed = stream_data(
        config,
        device,
        rank=rank,
        world=world,
        workers=workers,
        memory=choice.budget,
        compile_policy=compile_policy,
    )
    train, test = streamed.train, streamed.test
    return RunData(
        train,
        test,
        streamed.classes,
        train.n,
        test.n,
        streamed.val,
        streamed.fingerprint,
        flags=streamed.flags,
    )


def _resident(config, device, rank, world, compile_policy) -> RunData:
    found = split(config, _arrays(config))
    train, test, val = found.train, found.test, found.val
    held = (val.images, val.labels) if val is not None else ()
    identity = data_fingerprint(train.images, train.labels, test.images, test.labels, *held)
    x_train, x_test = train.images, test.images
    if config.data.preprocess == "zca":
        whiten = _whitener(config, x_train)
        x_train, x_test = whiten(x_train), whiten(x_test)
        held = (whiten(val.images), val.labels) if val is not None else ()
    common = dict(device=device, rank=rank, world=world)
    return RunData(
        val=_loader(config, *held, train=False, **common) if held else None,
        train=_loader(
            config, x_train, train.labels, train=True, compile_policy=compile_policy, **common
        ),
        test=_loader(config, x_test, test.labels, train=False, **common),
        classes=found.classes,
        train_size=len(train),
        test_size=len(test),
        fingerprint=identity,
    )


def eval_data(
    config: Config,
    device: torch.device,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
) -> RunData:
    """The test loader of a trained run (another dataset, folder or split if given),
    streaming where the run's data streams."""
    choice = choose_loader(config, device)
    if choice.kind == "stream" and config.data.preprocess != "zca":
        workers = config.data.workers
        streamed = stream_test(
            config,
            device,
            split or config.data.test_split,
            dataset=dataset,
            data_dir=data_dir,
            workers=default_workers(1) if workers is None else workers,
            memory=choice.budget,
        )
        test = streamed.test
        return RunData(None, test, streamed.classes, 0, test.n, loader="stream")
    images, labels, classes = load_split(config, split or config.data.test_split, dataset, data_dir)
    if config.data.preprocess == "zca":  # whitened with the run's own fit
        (x_train, _), _, _ = training_split(config)
        images = _whitener(config, x_train)(images)
    test = _loader(config, images, labels, device, train=False, rank=0, world=1)
    return RunData(None, test, classes, 0, len(images))
