"""Datasets of the paper read from their official formats, image folders and .npz files,
decoded once into a cache, and fed from tensors held on the training device."""

from wideresnet.data.augment import TrainAugment
from wideresnet.data.cache import cache_dir
from wideresnet.data.download import download
from wideresnet.data.loader import BatchLoader, epoch_order
from wideresnet.data.official import OFFICIAL
from wideresnet.data.prepare import RunData, eval_data, run_data, training_split
from wideresnet.data.preprocess import CIFAR_MEAN, CIFAR_STD, fit_zca, zca_transform
from wideresnet.data.sources import DATASETS, load_dataset
from wideresnet.data.stream import StreamLoader
from wideresnet.errors import DataError

__all__ = [
    "BatchLoader",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "DataError",
    "OFFICIAL",
    "RunData",
    "StreamLoader",
    "TrainAugment",
    "cache_dir",
    "download",
    "epoch_order",
    "eval_data",
    "fit_zca",
    "load_dataset",
    "run_data",
    "training_split",
    "zca_transform",
]
