"""Packed shards for big sets of small images (`wrn data pack`, `--dataset shards`).

SHARDS/index.json names the classes, the image shape and, per split, its shard files with
their image counts and SHA-256. A shard is a small header (magic, version, count, shape),
the labels (int64) and the images (uint8, N x H x W x C) as fixed-size records, read by
memory map with random access: streaming touches only the images a batch needs, and the
resident loader can read the same files. A truncated shard, or one whose bytes changed since
it was packed, is refused by name (its SHA-256 is checked once per size and mtime, as the
official files' md5s are).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from wideresnet.data.cache import verify_digest
from wideresnet.errors import DataError, RunError
from wideresnet.files import check_regular, one_component, parse_json, read_text

FORMAT = "wideresnet-shards/1"
INDEX = "index.json"
MAGIC = b"WRNSHARD"
HEADER = struct.Struct("<8sIQIII")  # magic, version, images, height, width, channels
HEADER_BYTES = 64
IMAGES_PER_SHARD = 8192
VERIFIED_RECORD = "verified-shards.json"


def shard_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """One shard file: the header, the labels, the images."""
    n, height, width, channels = images.shape
    header = HEADER.pack(MAGIC, 1, n, height, width, channels).ljust(HEADER_BYTES, b"\0")
    return header + labels.astype("<i8").tobytes() + np.ascontiguousarray(images).tobytes()


def read_index(root: Path) -> dict:
    """index.json of a shards folder, checked; DataError naming it otherwise."""
    path = root / INDEX
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{root}: no {INDEX} (shards are made by `wrn data pack`)")
    try:
        index = parse_json(read_text(path, "shards index"), str(path))
    except RunError as error:
        raise DataError(str(error)) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path}: not a wideresnet shards index (format {FORMAT})")
    problem = _schema_problem(index)
    if problem:
        raise DataError(f"{path}: {problem}; not an index `wrn data pack` wrote")
    return index


MAX_SHARDS = 100_000  # entries of one split: an index declaring more is refused unread


def _schema_problem(index: dict) -> str | None:
    """What in an index does not have the shape `wrn data pack` writes, or None."""
    classes, shape, splits = index.get("classes"), index.get("shape"), index.get("splits")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes must be a list of names"
    if not (isinstance(shape, list) and len(shape) == 3 and all(_count(v, 1) for v in shape)):
        return "shape must be [height, width, channels]"
    if not isinstance(splits, dict) or not splits:
        return "splits must map each split to its shards"
    for split, entries in splits.items():
        if not isinstance(entries, list) or len(entries) > MAX_SHARDS:
            return f"split {split!r} must be a list of at most {MAX_SHARDS:,} shards"
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                return f"split {split!r}: each shard needs its file name"
            if not _count(entry.get("images"), 0) or not isinstance(entry.get("sha256"), str):
                return f"split {split!r}: {entry.get('file')!r} needs a count and a SHA-256"
    return None


def _count(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < 2**40


def _verify(path: Path, expected: str) -> None:
    """The shard's SHA-256, checked once per (size, mtime)."""
    refusal = "fails its SHA-256 (changed or corrupted since it was packed)"
    verify_digest(path, "sha256", expected, VERIFIED_RECORD, refusal)


def _open(root: Path, entry: dict, shape: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(images memory map, labels) of one shard, its size and header checked."""
    path = root / one_component(entry["file"], "shard file", str(root / INDEX))
    check_regular(path, "shard")
    n = int(entry["images"])
    size = HEADER_BYTES + 8 * n + n * int(np.prod(shape))
    try:
        actual = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(HEADER.size)
    except OSError as error:
        raise DataError(f"{path}: unreadable ({error.strerror})") from None
    if actual != size or len(header) < HEADER.size:
        raise DataError(f"{path}: {actual:,} bytes, expected {size:,} (truncated?)")
    magic, _, count, *dims = HEADER.unpack(header)
    if magic != MAGIC or count != n or list(dims) != list(shape):
        raise DataError(f"{path}: its header does not match {INDEX}")
    _verify(path, str(entry["sha256"]))
    labels = np.fromfile(path, dtype="<i8", count=n, offset=HEADER_BYTES).astype(np.int64)
    images = np.memmap(path, np.uint8, "r", HEADER_BYTES + 8 * n, (n, *shape))
    return images, labels


class ShardImages:
    """The images of one split of a shards folder, read by index across its shards."""

    def __init__(self, root: Path, split: str) -> None:
        index = read_index(root)
        entries = index["splits"].get(split)
        if entries is None:
            raise DataError(f"{root}: no {split} split (it has {', '.join(index['splits'])})")
        self.root, self.classes, self.shape = root, list(index["classes"]), index["shape"]
        opened = [_open(root, entry, self.shape) for entry in entries]
        self.shards = [images for images, _ in opened]
        self.labels = (
            np.concatenate([labels for _, labels in opened]) if opened else np.zeros(0, np.int64)
        )
        if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < len(self.classes):
            raise DataError(
                f"{root}: {split} labels from {self.labels.min()} to {self.labels.max()}, but "
                f"{INDEX} names {len(self.classes)} classes"
            )
        self.starts = np.cumsum([0] + [len(images) for images in self.shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.shards[shard][i - self.starts[shard]]

    def array(self) -> np.ndarray:
        """Every image in memory (the resident loader)."""
        if not self.shards:
            return np.zeros((0, *self.shape), np.uint8)
        return np.concatenate([np.asarray(images) for images in self.shards])


def load_shards(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One split of a shards folder in memory: (images, labels, classes)."""
    shards = ShardImages(root, split)
    return shards.array(), shards.labels, shards.classes
