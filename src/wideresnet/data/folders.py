"""Image folders: DIR/<split>/<class>/<image>, in a directory or a .zip of that layout.

Classes are the sorted sub-folder names of train/. Images are decoded once, in threads, into a
uint8 array cached under a fingerprint of the files (name, size, mtime), so an edited image
invalidates the cache.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wideresnet.data.cache import cached_arrays, file_stamp, fingerprint
from wideresnet.errors import DataError, RunError
from wideresnet.files import read_bounded
from wideresnet.progress import Progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
DECODE_CHUNK = 512  # images per task of the decoding threads
MAX_IMAGE_BYTES = 64 << 20  # a larger image file is refused before it is read
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's decompression-bomb limit, enforced as an error
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
REFUSED_MODES = {"I": "32-bit integer", "F": "32-bit float"}  # value ranges unknown


def to_rgb(image, name: str):
    """An 8-bit RGB copy: 16-bit grey scaled by 255/65535 (Pillow's convert would clip it
    to white), other modes as Pillow converts them (alpha dropped); 32-bit ones refused."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif image.mode in REFUSED_MODES:
        raise DataError(
            f"{name}: a {REFUSED_MODES[image.mode]} image (mode {image.mode}) has no known "
            "value range; convert it to 8 or 16 bits per channel"
        )
    return image.convert("RGB")


def open_image(data: bytes, name: str):
    """A lazily decoded image, refused by name when its size makes it a decompression bomb."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below
        image = Image.open(io.BytesIO(data))
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{name}: {image.width}x{image.height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel "
            "limit (a decompression bomb?); refusing to decode it"
        )
    return image


def read_image_file(path: Path) -> bytes:
    """The bytes of one image file: refused by name, before anything is read, when it is not
    a regular file (a FIFO, a device, a folder) or is over the size limit, and read no further
    than the limit either way."""
    try:
        return read_bounded(path, "image", MAX_IMAGE_BYTES)
    except RunError as error:
        raise DataError(str(error)) from None


def decode_image(data: bytes, name: str, image_size: int | None) -> np.ndarray:
    """uint8 (H, W, 3) from an image file's bytes (resized to image_size x image_size when
    given), or DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_image(data, name) as image:
            rgb = to_rgb(image, name)
            if image_size is not None and rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as error:  # Pillow's own limit (twice ours)
        raise DataError(f"{name}: {error}; refusing to decode it") from None
    except DataError:
        raise
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
        """The bytes of one image file, refused by name before reading when over the limit."""
        if self.zip is None:
            return read_image_file(self.root / relative)
        try:
            size = self.zip.getinfo(self.prefix + relative).file_size
            if size > MAX_IMAGE_BYTES:
                raise DataError(
                    f"{self.root}/{relative}: {size:,} bytes, over the {MAX_IMAGE_BYTES:,}-byte "
                    "limit for one image; refusing to read it"
                )
            return self.zip.read(self.prefix + relative)
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


def folder_files(
    source: FolderSource, split: str, stats: bool = True
) -> tuple[list[tuple[str, int]], list[str], dict[str, list[str]]]:
    """(the split's image paths with their labels, the classes (train/'s sub-folders), the
    listing). Classes are interleaved (1st image of each class, then 2nd, ...), so that the
    first N images, --train-limit and a held-out tail all cover every class."""
    train_listing = source.listing("train", stats=stats and split == "train")
    listing = train_listing if split == "train" else source.listing(split, stats=stats)
    classes = list(train_listing)
    unknown = set(listing) - set(classes)
    if unknown:
        raise DataError(f"{source.root}: {split} has classes not in train: {sorted(unknown)}")
    label = {name: i for i, name in enumerate(classes)}
    files = sorted(
        ((f, label[c], i) for c, fs in listing.items() for i, f in enumerate(fs)),
        key=lambda t: (t[2], t[1]),
    )
    return [(f, label) for f, label, _ in files], classes, listing


def load_folder(root: Path, split: str, image_size: int | None):
    if split not in ("train", "test"):
        raise DataError(f"folder datasets have splits train and test, not {split!r}")
    source = FolderSource(root)
    files, classes, listing = folder_files(source, split)

    def decode() -> dict[str, np.ndarray]:
        images, labels = _decode_all(source, files, f"{root} {split}", image_size)
        return {"images": images, "labels": labels}

    name = f"folder-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]}-{split}"
    key = source.fingerprint(listing, f"{split}|{image_size}")
    arrays = cached_arrays("decoded", name, key, decode)
    return arrays["images"], arrays["labels"], classes
