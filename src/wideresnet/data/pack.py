"""`wrn data pack`: a folder, .npz or official set written as shards (data/shards.py), a
shard's worth of images decoded at a time, so that a set larger than memory packs too."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wideresnet.data.folders import FolderSource, decode_image, folder_files
from wideresnet.data.imagenet import class_names
from wideresnet.data.shards import FORMAT, IMAGES_PER_SHARD, INDEX, shard_bytes
from wideresnet.data.sources import load_dataset
from wideresnet.errors import DataError
from wideresnet.files import atomic_write, write_json
from wideresnet.progress import Progress


def _chunks(dataset: str, data_dir: str, split: str, image_size: int | None, verify: bool):
    """(images, labels) of a split, a shard's worth at a time; and its classes."""
    if dataset in ("folder", "imagenet"):  # decoded a shard at a time: never held whole
        source = FolderSource(Path(data_dir).expanduser())
        files, classes, _ = folder_files(source, split, stats=False)
        if dataset == "imagenet":
            classes = class_names(source.root, classes)

        def decode(item: tuple[str, int]) -> np.ndarray:
            return decode_image(source.read(item[0]), f"{source.root}/{item[0]}", image_size)

        def chunks():
            with ThreadPoolExecutor() as pool:
                for start in range(0, len(files), IMAGES_PER_SHARD):
                    part = files[start : start + IMAGES_PER_SHARD]
                    images = list(pool.map(decode, part))
                    if len({a.shape for a in images}) > 1:
                        raise DataError(f"{data_dir}: images of several sizes; pass --image-size")
                    yield np.stack(images), np.array([label for _, label in part], np.int64)

        return chunks(), classes, len(files)
    images, labels, classes = load_dataset(dataset, data_dir, split, verify, image_size=image_size)
    parts = (
        (images[i : i + IMAGES_PER_SHARD], labels[i : i + IMAGES_PER_SHARD])
        for i in range(0, len(images), IMAGES_PER_SHARD)
    )
    return parts, classes, len(images)


def _pack_splits(dataset, data_dir, out: Path, splits, image_size, verify, index, written):
    """Each split's shards into `out` (each file's path added to `written` once it is there)
    and its entries into `index`; the number of images."""
    total = 0
    for split in splits:
        parts, classes, count = _chunks(dataset, data_dir, split, image_size, verify)
        if not count:
            raise DataError(f"{data_dir}: the {split} split has no images; nothing to pack")
        entries = []
        with Progress(f"packing {split}", count, "images") as progress:
            for number, (images, labels) in enumerate(parts):
                data = shard_bytes(images, labels)
                name = f"{split}-{number:05d}.bin"
                atomic_write(out / name, data)
                written.append(out / name)
                digest = hashlib.sha256(data).hexdigest()
                entries.append({"file": name, "images": len(images), "sha256": digest})
                shape = list(images.shape[1:])
                total += len(images)
                progress.update(sum(e["images"] for e in entries))
        if index.setdefault("classes", classes) != classes:
            raise DataError(f"{data_dir}: {split} has other classes than {splits[0]}")
        if index.setdefault("shape", shape) != shape:
            raise DataError(
                f"{data_dir}: {split} images are {'x'.join(map(str, shape))}, {splits[0]}'s "
                f"{'x'.join(map(str, index['shape']))}; pack with --image-size N"
            )
        index["splits"][split] = entries
    return total


def pack(
    dataset: str,
    data_dir: str,
    out: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "test"),
    image_size: int | None = None,
    verify: bool = True,
) -> str:
    """Write a dataset's splits as shards into `out` (written last: index.json, so that an
    interrupted pack is not mistaken for a finished one); a one-line summary."""
    out = Path(out)
    if (out / INDEX).exists():
        raise DataError(f"--out {out}: holds shards already; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file, not a folder" if not out.is_dir() else "not an empty folder"
        raise DataError(f"--out {out}: {what}; choose a new one (nothing replaced)")
    index: dict = {"format": FORMAT, "splits": {}}
    written: list[Path] = []
    try:
        total = _pack_splits(dataset, data_dir, out, splits, image_size, verify, index, written)
    except BaseException:  # a refused split or an interrupt: no half-written folder is left
        for path in written:
            path.unlink(missing_ok=True)
        raise
    write_json(out / INDEX, index)
    return f"{total:,} images in {sum(len(v) for v in index['splits'].values())} shards, {out}"
