"""Which loader a run uses: resident (the decoded set held whole on the training device) when
it fits a memory budget there, streaming otherwise and for ImageNet; and why."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from wideresnet.config import Config
from wideresnet.data.folders import FolderSource
from wideresnet.data.official import OFFICIAL
from wideresnet.data.shards import read_index
from wideresnet.errors import ConfigError
from wideresnet.options import memory_bytes

# images of each official split, as its files hold them (32 x 32 x 3 each)
OFFICIAL_IMAGES = {
    ("cifar10", "train"): 50_000,
    ("cifar10", "test"): 10_000,
    ("cifar100", "train"): 50_000,
    ("cifar100", "test"): 10_000,
    ("svhn", "train"): 73_257,
    ("svhn", "test"): 26_032,
    ("svhn", "extra"): 531_131,
}
BUDGET_SHARE = 0.5  # of the free memory, when no --data-memory is given


def free_memory(device: torch.device) -> int:
    """Bytes free on the device: the GPU's, or the machine's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def decoded_bytes(config: Config) -> int | None:
    """The bytes the decoded train and test splits take (uint8), where they can be told
    without decoding (None: not known)."""
    data = config.data
    name = data.dataset
    if name in OFFICIAL:
        splits = [s for part in (data.train_split, data.test_split) for s in part.split("+")]
        counts = [OFFICIAL_IMAGES.get((name, s)) for s in splits]
        return None if None in counts else sum(counts) * 32 * 32 * 3
    if name == "shards":
        index = read_index(Path(data.data_dir))
        per_image = 3 * index["shape"][0] * index["shape"][1]
        return per_image * sum(e["images"] for es in index["splits"].values() for e in es)
    if name == "folder" and data.image_size:
        source = FolderSource(Path(data.data_dir).expanduser())
        files = sum(
            len(f) for split in ("train", "test") for f in source.listing(split, False).values()
        )
        return files * 3 * data.image_size**2
    return None


@dataclass(frozen=True)
class LoaderChoice:
    kind: str  # resident | stream
    reason: str
    budget: int  # bytes the data may take on the device


def choose_loader(
    config: Config, device: torch.device, recorded: str | None = None
) -> LoaderChoice:
    """The loader for a run on `device` and why (`recorded`: the loader a resumed run used,
    kept while --loader is auto)."""
    data = config.data
    if data.data_memory:
        budget, said = memory_bytes(data.data_memory), f"--data-memory {data.data_memory}"
    else:
        budget = int(free_memory(device) * BUDGET_SHARE)
        said = f"half the free memory of {device.type} ({_size(budget)})"
    if data.loader == "resident" and (data.crop != "pad" or data.dataset == "imagenet"):
        raise ConfigError(
            "--loader resident holds decoded images of one size: ImageNet and --crop "
            f"{data.crop} stream (--loader stream)"
        )
    if data.loader != "auto":
        return LoaderChoice(data.loader, f"asked for: --loader {data.loader}", budget)
    if recorded in ("resident", "stream"):
        return LoaderChoice(recorded, f"the loader this run started with ({recorded})", budget)
    if data.dataset == "imagenet":
        return LoaderChoice("stream", "ImageNet: images of many sizes, decoded as they go", budget)
    if data.crop != "pad":
        return LoaderChoice("stream", f"--crop {data.crop}: crops of the image files", budget)
    size = decoded_bytes(config)
    if size is None:
        return LoaderChoice("resident", "decoded once and held on the device", budget)
    if size <= budget:
        return LoaderChoice("resident", f"the decoded set ({_size(size)}) fits {said}", budget)
    return LoaderChoice("stream", f"the decoded set ({_size(size)}) is over {said}", budget)
