"""The split rules of a run's data, written once for every source (arrays held in memory, image
files, shards): the first --train-limit training images, less the last --val-size held out
(the test set, or with --val-and-test a validation set beside the real test split), the first
--eval-limit test images, the classes checked against --num-classes and between the splits,
and at least one training batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from wideresnet.config import Config
from wideresnet.errors import DataError

# A source: images with labels, in order, with `len` and `take(start, stop)` (positions
# [start, stop) as a source of their own): Arrays here, stream.FileImages and ArrayImages.


@dataclass
class Arrays:
    """Decoded images and their labels, held in memory: the resident loader's source."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, start: int, stop: int) -> Arrays:
        return Arrays(self.images[start:stop], self.labels[start:stop])


@dataclass
class Splits:
    train: Any
    test: Any  # None where only the training images were asked for
    val: Any  # the held-out images with --val-and-test, else None
    classes: list[str]


def split(config: Config, open_split: Callable[[str], tuple[Any, list[str]]], test=True) -> Splits:
    """The run's train, test and held-out sources from `open_split(split name) -> (source,
    classes)`; `test=False`: the training images alone (a ZCA fit), the test split unread."""
    data = config.data
    train, classes = open_split(data.train_split)
    if data.train_limit:
        train = train.take(0, data.train_limit)
    held_out = None
    if data.val_size:
        if data.val_size >= len(train):
            raise DataError(f"val_size {data.val_size} leaves no training images")
        cut = len(train) - data.val_size
        train, held_out = train.take(0, cut), train.take(cut, len(train))
    if not test:
        return Splits(train, None, held_out, classes)
    if held_out is not None and not data.val_and_test:
        tested, held_out = held_out, None
    else:
        tested, test_classes = open_split(data.test_split)
        if list(test_classes) != list(classes):
            raise DataError(f"{data.data_dir}: train and test splits have different classes")
    check_classes(config, classes)
    if data.eval_limit:
        tested = tested.take(0, data.eval_limit)
    if len(train) < config.optim.batch_size:
        raise DataError(
            f"{len(train)} training images are fewer than one batch of {config.optim.batch_size}"
        )
    return Splits(train, tested, held_out, classes)


def check_classes(config: Config, classes: list[str]) -> None:
    wanted = config.model.num_classes
    if wanted is not None and wanted != len(classes):
        raise DataError(
            f"--num-classes {wanted} does not match the {len(classes)} classes of "
            f"{config.data.data_dir}"
        )
