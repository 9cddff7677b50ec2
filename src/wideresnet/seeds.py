"""Every random stream of a run, derived in one place from (seed, index, stream, rank).

Streams of the data (ORDER, CROP_FLIP, POLICY, CUTOUT) are drawn once per epoch (index =
epoch) and are the same on every process, so the data a run sees does not depend on how many
processes train it; each image's draws are indexed by its position in the epoch. Streams of
a process (MIXING per step, DROPOUT per process) include the rank. The formulas are those of
wideresnet 0.2, kept so that a 0.2 run resumes and repeats exactly.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    ORDER = 0  # the permutation of an epoch
    CROP_FLIP = 1  # crop offsets (or random-sized crops) and flips
    POLICY = 2  # AutoAugment / RandAugment / TrivialAugment draws
    CUTOUT = 3  # Cutout boxes
    MIXING = 4  # mixup / CutMix of one step (index = the global step)
    DROPOUT = 5  # a process's global generator: dropout draws (index 1 at start, else step)
    INIT = 6  # the model's initialisation


DATA_STREAMS = (Stream.ORDER, Stream.CROP_FLIP, Stream.POLICY, Stream.CUTOUT)


def torch_seed(seed: int, index: int, stream: Stream, rank: int = 0) -> int:
    """The seed of one stream: epoch streams ignore the rank, process streams use it."""
    if stream in DATA_STREAMS:
        return (seed * 1_000_003 + index) * 7919 + int(stream)
    if stream is Stream.DROPOUT:
        return seed * 65_537 + rank + index
    if stream is Stream.INIT:
        return seed
    raise ValueError(f"{stream.name} is drawn with numpy_generator")


def generator(seed: int, index: int, stream: Stream, rank: int = 0) -> torch.Generator:
    """A CPU torch generator for one stream (one epoch of a data stream)."""
    return torch.Generator().manual_seed(torch_seed(seed, index, stream, rank))


def numpy_generator(seed: int, index: int, stream: Stream, rank: int = 0) -> np.random.Generator:
    """A numpy generator: one step's mixing draws, or one image's draws of a data stream
    (index = the epoch, rank = the image's position in it)."""
    if stream is Stream.MIXING:
        return np.random.default_rng([seed, index, rank])
    return np.random.default_rng([seed, index, int(stream), rank])


def seed_process(seed: int, index: int, stream: Stream, rank: int = 0) -> None:
    """Seed torch's global generator (the model's init, or a process's dropout draws)."""
    torch.manual_seed(torch_seed(seed, index, stream, rank))
