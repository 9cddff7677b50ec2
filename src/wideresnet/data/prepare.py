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
from wideresnet.data.stream import StreamLoader, default_workers
from wideresnet.data.streamed import stream_data, stream_test
from wideresnet.errors import DataError

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
    data = config.data
    x_train, y_train, classes = load_split(config, data.train_split)
    if data.train_limit:
        x_train, y_train = x_train[: data.train_limit], y_train[: data.train_limit]
    if not data.val_size:
        return (x_train, y_train), None, classes
    if data.val_size >= len(x_train):
        raise DataError(f"val_size {data.val_size} leaves no training images")
    held_out = x_train[-data.val_size :], y_train[-data.val_size :]
    return (x_train[: -data.val_size], y_train[: -data.val_size]), held_out, classes


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


def check_classes(config: Config, classes: list[str]) -> None:
    wanted = config.model.num_classes
    if wanted is not None and wanted != len(classes):
        raise DataError(
            f"--num-classes {wanted} does not match the {len(classes)} classes of "
            f"{config.data.data_dir}"
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
    check_classes(config, streamed.classes)
    if train.n < config.optim.batch_size:
        raise DataError(
            f"{train.n} training images are fewer than one batch of {config.optim.batch_size}"
        )
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
    (x_train, y_train), held_out, classes = training_split(config)
    validate = held_out is not None and config.data.val_and_test
    if held_out is not None and not validate:
        x_test, y_test = held_out
    else:
        x_test, y_test, test_classes = load_split(config, config.data.test_split)
        if test_classes != classes:
            raise DataError(f"{config.data.data_dir}: train and test splits have different classes")
    check_classes(config, classes)
    if config.data.eval_limit:
        x_test, y_test = x_test[: config.data.eval_limit], y_test[: config.data.eval_limit]
    if len(x_train) < config.optim.batch_size:
        raise DataError(
            f"{len(x_train)} training images are fewer than one batch of {config.optim.batch_size}"
        )
    identity = data_fingerprint(x_train, y_train, x_test, y_test, *(held_out if validate else ()))
    if config.data.preprocess == "zca":
        whiten = _whitener(config, x_train)
        x_train, x_test = whiten(x_train), whiten(x_test)
        held_out = (whiten(held_out[0]), held_out[1]) if validate else held_out
    common = dict(device=device, rank=rank, world=world)
    return RunData(
        val=_loader(config, *held_out, train=False, **common) if validate else None,
        train=_loader(
            config, x_train, y_train, train=True, compile_policy=compile_policy, **common
        ),
        test=_loader(config, x_test, y_test, train=False, **common),
        classes=classes,
        train_size=len(x_train),
        test_size=len(x_test),
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
