"""`load_dataset`: one split of any supported dataset, as uint8 images, labels and classes."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from wideresnet.data.folders import FolderSource, load_folder
from wideresnet.data.imagenet import class_names
from wideresnet.data.official import OFFICIAL, load_cifar, load_svhn
from wideresnet.data.shards import load_shards
from wideresnet.errors import DataError

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "svhn", "folder", "npz", "imagenet", "shards")


def load_npz(path: Path, split: str):
    """x_train, y_train, x_test, y_test (and optionally classes) in one .npz file."""
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise DataError(f"{path}: expected one .npz file there, found {len(found)}")
        path = found[0]
    if split not in ("train", "test"):
        raise DataError(f"npz datasets have splits train and test, not {split!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in (f"x_{split}", f"y_{split}") if k not in data.files]
            if missing:
                raise DataError(
                    f"{path}: missing array {missing[0]} (needs x_train, y_train, x_test, y_test)"
                )
            x, y = data[f"x_{split}"], data[f"y_{split}"]
            if "classes" in data.files:
                classes = [str(c) for c in data["classes"]]
            else:  # from both splits, so that train and test agree
                ys = [data[k] for k in ("y_train", "y_test") if k in data.files]
                classes = [str(c) for c in range(max(int(v.max()) + 1 for v in ys if v.size))]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8 or len(x) != len(y):
        raise DataError(
            f"{path}: x_{split} must be uint8 (N, H, W, 3) with N labels, got "
            f"{x.dtype} {x.shape} and {len(y)} labels"
        )
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x), class_indices(y, f"{path}: y_{split}"), classes


def class_indices(y: np.ndarray, name: str) -> np.ndarray:
    """Labels as int64 class indices: a 1-D array of integers, else refused by name (one-hot
    or float labels are never reshaped or truncated into something else)."""
    if y.ndim != 1:
        hint = "; one-hot? use y.argmax(1)" if y.ndim == 2 else ""
        raise DataError(f"{name}: labels of shape {y.shape}, expected 1-D class indices{hint}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{name}: labels of type {y.dtype}, expected integer class indices")
    return y.astype(np.int64)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike,
    split: str = "train",
    verify: bool = True,
    *,
    labels: str = "fine",
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one split: (images uint8 (N, H, W, 3) in the official order, labels int64, classes).

    name: cifar10 | cifar100 | svhn | folder | npz | imagenet | shards. split: train | test
    (svhn: also extra and train+extra; imagenet: test is val). verify: check the official
    md5s (cifar, svhn). labels: "fine" or "coarse" (CIFAR-100). image_size: resize folder
    images to this square size (ImageNet's images differ in size: it needs one here; training
    streams them instead).
    """
    name = name.lower()
    root = Path(data_dir).expanduser()
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if labels not in ("fine", "coarse"):
        raise DataError(f"labels must be 'fine' or 'coarse', not {labels!r}")
    if not verify and name in OFFICIAL:
        log.warning(f"--no-verify: the {name} files' checksums are not checked")
    if name in ("cifar10", "cifar100"):
        images, targets, classes = load_cifar(name, root, split, verify, labels)
    elif name == "svhn":
        images, targets, classes = load_svhn(root, split, verify)
    elif name == "folder":
        images, targets, classes = load_folder(root, split, image_size)
    elif name == "imagenet":
        if image_size is None:
            raise DataError(
                f"{root}: ImageNet's images differ in size: load it with an image_size, or "
                "train with the streaming loader (--loader stream, the default for imagenet)"
            )
        images, targets, _ = load_folder(root, "train" if split == "train" else "test", image_size)
        wnids = list(FolderSource(root).listing("train", stats=False))
        classes = class_names(root, wnids)
    elif name == "shards":
        images, targets, classes = load_shards(root, split)
    else:
        images, targets, classes = load_npz(root, split)
    if len(targets) and (targets.min() < 0 or targets.max() >= len(classes)):
        raise DataError(
            f"{root}: {split} labels range over [{targets.min()}, {targets.max()}], "
            f"outside the {len(classes)} classes"
        )
    return images, targets, classes
