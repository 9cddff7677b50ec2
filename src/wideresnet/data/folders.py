"""Image folders: DIR/<split>/<class>/<image>, in a directory or a .zip of that layout.

Classes are the sorted sub-folder names of train/. Images are decoded once, in threads, into a
uint8 array cached under a fingerprint of the files (name, size, mtime), so an edited image
invalidates the cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wideresnet.data.cache import cached_arrays, file_stamp, fingerprint
from wideresnet.errors import DataError
from wideresnet.progress import Progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
DECODE_CHUNK = 512  # images per task of the decoding threads


def decode_image(data: bytes, name: str, image_size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{name}: unreadable image ({error})") from None


class FolderSource:
    """DIR/<split>/<class>/<image> in a directory or in a .zip (read in place)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.zip: zipfile.ZipFile | None = None
        self.stats: dict[str, str] = {}  # image path -> "size|mtime" (directories)
        if root.is_file():
            try:
                self.zip = zipfile.ZipFile(root)
                names = [n for n in self.zip.namelist() if not n.endswith("/")]
            except (zipfile.BadZipFile, OSError) as error:
                raise DataError(f"{root}: not a readable zip file ({error})") from None
            # the layout may sit under one top-level folder inside the zip
            prefixes = {
                n.split("train/")[0]
                for n in names
                if "train/" in n and n.split("train/")[0].count("/") <= 1
            }
            prefix = min(prefixes, key=len) if prefixes else ""
            self.files = [n[len(prefix) :] for n in names if n.startswith(prefix)]
            self.prefix = prefix
        elif not root.is_dir():
            raise DataError(f"{root}: no such directory or .zip file")

    def split_dir(self, split: str) -> str:
        wanted = ["train"] if split == "train" else ["test", "val"]
        for name in wanted:
            if self.zip is not None:
                if any(f.startswith(name + "/") for f in self.files):
                    return name
            elif (self.root / name).is_dir():
                return name
        raise DataError(
            f"{self.root}: no {' or '.join(w + '/' for w in wanted)} folder "
            "(expected DIR/train/<class>/ and DIR/test/<class>/)"
        )

    def listing(self, split: str, stats: bool = True) -> dict[str, list[str]]:
        """class -> sorted image paths (relative to root) of one split."""
        top = self.split_dir(split)
        classes: dict[str, list[str]] = {}
        if self.zip is not None:
            for f in self.files:
                parts = f.split("/")
                if parts[0] != top or len(parts) < 2 or any(p.startswith(".") for p in parts):
                    continue
                classes.setdefault(parts[1], [])
                if len(parts) == 3 and f.lower().endswith(IMAGE_SUFFIXES):
                    classes[parts[1]].append(f)
        else:
            for entry in sorted(os.scandir(self.root / top), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                classes[entry.name] = []
                for f in os.scandir(entry.path):
                    if not f.name.startswith(".") and f.name.lower().endswith(IMAGE_SUFFIXES):
                        relative = f"{top}/{entry.name}/{f.name}"
                        if stats:  # for the fingerprint, without a path object per file
                            stat = f.stat()
                            self.stats[relative] = f"{stat.st_size}|{stat.st_mtime_ns}"
                        classes[entry.name].append(relative)
        if not classes:
            raise DataError(f"{self.root}/{top}: no class folders")
        for name, files in classes.items():
            if not files:
                raise DataError(f"{self.root}/{top}/{name}: empty class (no image files)")
            files.sort()
        return dict(sorted(classes.items()))

    def fingerprint(self, listing: dict[str, list[str]], extra: str) -> str:
        if self.zip is not None:
            return fingerprint([extra, file_stamp(self.root)])
        lines = (f"{f}|{self.stats[f]}" for files in listing.values() for f in files)
        return fingerprint([extra, *lines])

    def read(self, relative: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(self.prefix + relative)
            return (self.root / relative).read_bytes()
        except (OSError, zipfile.BadZipFile, KeyError) as error:
            raise DataError(f"{self.root}/{relative}: unreadable ({error})") from None


def _decode_all(source: FolderSource, files: list[tuple[str, int]], what: str, size: int | None):
    def chunk(start: int) -> list[np.ndarray]:
        items = files[start : start + DECODE_CHUNK]
        return [decode_image(source.read(f), f"{source.root}/{f}", size) for f, _ in items]

    decoded: list[np.ndarray] = []
    with (
        Progress(f"decoding {what}", len(files), "files") as progress,
        ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
    ):
        for part in pool.map(chunk, range(0, len(files), DECODE_CHUNK)):
            decoded += part
            progress.update(len(decoded))
    shapes = {a.shape for a in decoded}
    if len(shapes) > 1:
        odd = next(f for (f, _), a in zip(files, decoded) if a.shape != decoded[0].shape)
        raise DataError(
            f"{source.root}/{odd}: image size differs from the others ({sorted(shapes)}); "
            "pass --image-size to resize all images"
        )
    return np.stack(decoded), np.array([label for _, label in files], dtype=np.int64)


def load_folder(root: Path, split: str, image_size: int | None):
    if split not in ("train", "test"):
        raise DataError(f"folder datasets have splits train and test, not {split!r}")
    source = FolderSource(root)
    train_listing = source.listing("train", stats=split == "train")  # test: class names only
    listing = train_listing if split == "train" else source.listing(split)
    train_classes = list(train_listing)
    unknown = set(listing) - set(train_classes)
    if unknown:
        raise DataError(f"{root}: {split} has classes not in train: {sorted(unknown)}")
    # Classes interleaved (1st image of each class, then 2nd, ...), so that the first N images,
    # --train-limit and a held-out tail all cover every class.
    files = sorted(
        ((f, train_classes.index(c), i) for c, fs in listing.items() for i, f in enumerate(fs)),
        key=lambda t: (t[2], t[1]),
    )
    files = [(f, label) for f, label, _ in files]

    def decode() -> dict[str, np.ndarray]:
        images, labels = _decode_all(source, files, f"{root} {split}", image_size)
        return {"images": images, "labels": labels}

    name = f"folder-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]}-{split}"
    key = source.fingerprint(listing, f"{split}|{image_size}")
    arrays = cached_arrays("decoded", name, key, decode)
    return arrays["images"], arrays["labels"], train_classes
