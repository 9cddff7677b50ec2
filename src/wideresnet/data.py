"""Datasets of the paper, read from their official formats, and the tensor batch loader.

Readers return (images uint8 (N, H, W, 3) in the official order, labels int64 (N,), classes).
Image folders and SVHN .mat files are decoded once into a cache of uint8 arrays, keyed by a
fingerprint of their sources. The loader keeps a whole split on the training device and does
the paper's augmentation (4-px reflection pad, random 32x32 crop, random flip) for a whole batch
with one gather, with no per-sample Python and no PIL in the loop.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("cifar10", "cifar100", "svhn", "folder", "npz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

# The paper's normalisation on the 0-255 scale (PAPER.md "Training recipes").
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)


class DataError(ValueError):
    """A problem with the user's data: one clear message naming the file."""


# --------------------------------------------------------------------------------------------
# Official files: names, checksums, URLs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Official:
    archive: str | None  # file downloaded (a .tar.gz to unpack), None for SVHN's bare .mat files
    archive_md5: str | None
    folder: str  # where the unpacked files live, relative to data_dir
    files: dict[str, str]  # file name -> md5
    url: str  # base URL


OFFICIAL = {
    "cifar10": Official(
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        {
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        "https://www.cs.toronto.edu/~kriz/",
    ),
    "cifar100": Official(
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        {
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        "https://www.cs.toronto.edu/~kriz/",
    ),
    "svhn": Official(
        None,
        None,
        ".",
        {
            "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
            "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
        },
        "http://ufldl.stanford.edu/housenumbers/",
    ),
}
SPLITS = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"train": ["train"], "test": ["test"]},
    "svhn": {
        "train": ["train_32x32.mat"],
        "test": ["test_32x32.mat"],
        "extra": ["extra_32x32.mat"],
        "train+extra": ["train_32x32.mat", "extra_32x32.mat"],
    },
}


def cache_dir() -> Path:
    """Where decoded arrays, checksum records and ZCA fits are kept ($WRN_CACHE_DIR)."""
    root = os.environ.get("WRN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "wideresnet"
    )
    return Path(root)


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verified_record() -> Path:
    return cache_dir() / "verified.json"


def verify_md5(path: Path, expected: str) -> None:
    """Check a file's md5, remembering a verified file by (size, mtime) so it is hashed once."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, expected]
    record_path = _verified_record()
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get(key) == stamp:
        return
    actual = md5_file(path)
    if actual != expected:
        raise DataError(
            f"{path}: md5 {actual} does not match the official {expected} (corrupt, truncated "
            "or not the official file; download it again, or pass --no-verify to use it anyway)"
        )
    record[key] = stamp
    try:
        _atomic_write(record_path, json.dumps(record).encode())
    except OSError:
        pass  # an unwritable cache only costs a re-hash next time


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# CIFAR pickles, read without running arbitrary code
# --------------------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of bytes, lists and numpy arrays) and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes as written by Python 3's protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, name: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # any failure of a foreign file is the file's fault
        raise DataError(f"{name}: not a readable CIFAR batch ({error})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: not a CIFAR batch (a {type(obj).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class _CifarSource:
    """The CIFAR files in data_dir/<folder>/, data_dir itself, or the .tar.gz in data_dir."""

    def __init__(self, name: str, data_dir: Path, verify: bool) -> None:
        self.official, self.verify = OFFICIAL[name], verify
        candidates = [data_dir / self.official.folder, data_dir]
        self.folder = next(
            (c for c in candidates if any((c / f).is_file() for f in self.official.files)), None
        )
        self.archive = None
        if self.folder is None:
            archive = data_dir / self.official.archive
            if data_dir.is_file() and data_dir.name.endswith(".tar.gz"):
                archive = data_dir
            if not archive.is_file():
                raise DataError(
                    f"{data_dir}: no {name} files found (expected {self.official.folder}/ or "
                    f"{self.official.archive}; `wrn data download --dataset {name}` fetches them)"
                )
            if verify:
                verify_md5(archive, self.official.archive_md5)
            try:
                self.archive = tarfile.open(archive, "r:gz")
                self.members = {
                    Path(m.name).name: m for m in self.archive.getmembers() if m.isfile()
                }
            except (tarfile.TarError, OSError, EOFError) as error:
                raise DataError(f"{archive}: unreadable archive ({error})") from None
            self.where = archive

    def read(self, file: str) -> dict:
        if self.archive is not None:
            member = self.members.get(file)
            if member is None:
                raise DataError(f"{self.where}: archive has no member {file}")
            try:
                data = self.archive.extractfile(member).read()
            except (tarfile.TarError, OSError, EOFError) as error:
                raise DataError(f"{self.where}: cannot read {file} ({error})") from None
            if self.verify and hashlib.md5(data).hexdigest() != self.official.files[file]:
                raise DataError(f"{self.where}: member {file} does not match the official md5")
            return _unpickle(data, f"{self.where}:{file}")
        path = self.folder / file
        if not path.is_file():
            raise DataError(f"{path}: missing")
        if self.verify:
            verify_md5(path, self.official.files[file])
        return _unpickle(path.read_bytes(), str(path))


def _load_cifar(name: str, data_dir: Path, split: str, verify: bool, labels: str):
    if split not in SPLITS[name]:
        raise DataError(f"{name} has splits {sorted(SPLITS[name])}, not {split!r}")
    source = _CifarSource(name, data_dir, verify)
    meta_file, meta_key = (
        ("batches.meta", "label_names")
        if name == "cifar10"
        else ("meta", "coarse_label_names" if labels == "coarse" else "fine_label_names")
    )
    label_key = "labels" if name == "cifar10" else f"{labels}_labels"
    meta = source.read(meta_file)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(meta_key, [])]
    images, targets = [], []
    for file in SPLITS[name][split]:
        batch = source.read(file)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        except KeyError as error:
            raise DataError(f"{file}: CIFAR batch without key {error}") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch_labels):
            raise DataError(
                f"{file}: data of shape {data.shape} with {len(batch_labels)} "
                "labels, expected (N, 3072) with N labels"
            )
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        targets.append(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(targets), classes


# --------------------------------------------------------------------------------------------
# SVHN .mat files
# --------------------------------------------------------------------------------------------


def _load_svhn_file(path: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing (`wrn data download --dataset svhn` fetches it)")
    if verify:
        verify_md5(path, OFFICIAL["svhn"].files[path.name])

    def decode() -> tuple[np.ndarray, np.ndarray]:
        import scipy.io

        try:
            mat = scipy.io.loadmat(path)
            x, y = mat["X"], mat["y"]
        except Exception as error:  # scipy raises many types for a bad file
            raise DataError(f"{path}: not a readable SVHN .mat file ({error})") from None
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.size:
            raise DataError(
                f"{path}: X of shape {x.shape} and {y.size} labels, expected "
                "(32, 32, 3, N) with N labels"
            )
        labels = y.reshape(-1).astype(np.int64)
        labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
        return np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8)), labels

    return _cached(f"svhn-{path.name}", _fingerprint([path]), decode)


def _load_svhn(data_dir: Path, split: str, verify: bool):
    if split not in SPLITS["svhn"]:
        raise DataError(f"svhn has splits {sorted(SPLITS['svhn'])}, not {split!r}")
    parts = [_load_svhn_file(data_dir / f, verify) for f in SPLITS["svhn"][split]]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return images, labels, [str(d) for d in range(10)]


# --------------------------------------------------------------------------------------------
# Decoded cache
# --------------------------------------------------------------------------------------------


CACHE_VERSION = "2"  # bump when a reader's output changes for the same sources


def _fingerprint(paths: list[Path], extra: str = "") -> str:
    digest = hashlib.sha1((CACHE_VERSION + extra).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cached(name: str, fingerprint: str, decode) -> tuple[np.ndarray, np.ndarray]:
    """Return decode()'s (images, labels), from the cache when its fingerprint matches."""
    folder = cache_dir() / "decoded"
    path = folder / f"{name}-{fingerprint[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path) as cached:
                return cached["images"], cached["labels"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged cache entry is rebuilt
    images, labels = decode()
    try:
        buffer = io.BytesIO()
        np.savez(buffer, images=images, labels=labels)
        _atomic_write(path, buffer.getvalue())
        for old in folder.glob(f"{name}-*.npz"):  # a changed source leaves a stale entry
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as error:
        warnings.warn(f"could not write the decoded cache {path}: {error}", stacklevel=2)
    return images, labels


# --------------------------------------------------------------------------------------------
# Image folders (a directory or a .zip of the same layout)
# --------------------------------------------------------------------------------------------


def _decode_image(data: bytes, name: str, image_size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{name}: unreadable image ({error})") from None


class _FolderSource:
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
            return _fingerprint([self.root], extra)
        digest = hashlib.sha1((CACHE_VERSION + extra).encode())
        digest.update(
            "".join(f"{f}|{self.stats[f]}\n" for fs in listing.values() for f in fs).encode()
        )
        return digest.hexdigest()

    def read(self, relative: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(self.prefix + relative)
            return (self.root / relative).read_bytes()
        except (OSError, zipfile.BadZipFile, KeyError) as error:
            raise DataError(f"{self.root}/{relative}: unreadable ({error})") from None


def _load_folder(root: Path, split: str, image_size: int | None):
    if split not in ("train", "test"):
        raise DataError(f"folder datasets have splits train and test, not {split!r}")
    source = _FolderSource(root)
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

    def decode() -> tuple[np.ndarray, np.ndarray]:
        def one(item: tuple[str, int]) -> np.ndarray:
            return _decode_image(source.read(item[0]), f"{root}/{item[0]}", image_size)

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            decoded = list(pool.map(one, files, chunksize=256))
        shapes = {a.shape for a in decoded}
        if len(shapes) > 1:
            odd = next(f for (f, _), a in zip(files, decoded) if a.shape != decoded[0].shape)
            raise DataError(
                f"{root}/{odd}: image size differs from the others ({sorted(shapes)}); "
                "pass --image-size to resize all images"
            )
        return np.stack(decoded), np.array([label for _, label in files], dtype=np.int64)

    extra = f"{split}|{image_size}"
    name = f"folder-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]}-{split}"
    images, labels = _cached(name, source.fingerprint(listing, extra), decode)
    return images, labels, train_classes


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def _load_npz(path: Path, split: str):
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
    y = y.astype(np.int64).reshape(-1)
    return np.ascontiguousarray(x), y, classes


# --------------------------------------------------------------------------------------------
# The public reader
# --------------------------------------------------------------------------------------------


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

    name: cifar10 | cifar100 | svhn | folder | npz. split: train | test (svhn: also extra and
    train+extra). verify: check the official md5s (cifar, svhn). labels: "fine" or "coarse"
    (CIFAR-100). image_size: resize folder images to this square size.
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
        warnings.warn(f"--no-verify: the {name} files' checksums are not checked", stacklevel=2)
    if name in ("cifar10", "cifar100"):
        images, targets, classes = _load_cifar(name, root, split, verify, labels)
    elif name == "svhn":
        images, targets, classes = _load_svhn(root, split, verify)
    elif name == "folder":
        images, targets, classes = _load_folder(root, split, image_size)
    else:
        images, targets, classes = _load_npz(root, split)
    if len(targets) and (targets.min() < 0 or targets.max() >= len(classes)):
        raise DataError(
            f"{root}: {split} labels range over [{targets.min()}, {targets.max()}], "
            f"outside the {len(classes)} classes"
        )
    return images, targets, classes


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _safe_extract(archive: Path, target: Path) -> None:
    """Unpack a .tar.gz into target, refusing members that would land outside it."""
    target = target.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                where = (target / member.name).resolve()
                if (
                    not where.is_relative_to(target)
                    or member.issym()
                    or member.islnk()
                    or (member.isdev())
                ):
                    raise DataError(
                        f"{archive}: member {member.name!r} would escape the target "
                        "folder or is a link; refusing to unpack"
                    )
            tar.extractall(target, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{archive}: cannot unpack ({error})") from None


def _fetch(url: str, destination: Path, md5: str | None, progress: bool) -> None:
    """Stream url to a temporary file beside destination, check it, then rename it into place."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    tmp = Path(tmp_name)
    digest, received = hashlib.md5(), 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            expected_size = int(response.headers.get("Content-Length") or -1)
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                received += len(block)
                if progress:
                    total = f"/{expected_size >> 20}" if expected_size > 0 else ""
                    print(f"\r{destination.name}: {received >> 20}{total} MiB", end="", flush=True)
            out.flush()
            os.fsync(out.fileno())
        if progress:
            print()
        if 0 <= expected_size != received:
            raise DataError(
                f"{url}: connection closed after {received} of {expected_size} "
                "bytes; run the command again"
            )
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(
                f"{url}: downloaded file has md5 {digest.hexdigest()}, expected "
                f"{md5}; nothing was kept"
            )
        os.replace(tmp, destination)
    except (urllib.error.URLError, OSError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        reason = getattr(error, "reason", error)
        raise DataError(f"{url}: download failed ({reason}); nothing was kept") from None
    finally:
        tmp.unlink(missing_ok=True)


def download(
    name: str,
    data_dir: str | os.PathLike,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = False,
) -> Path:
    """Fetch the official files of cifar10, cifar100 or svhn into data_dir, md5-checked.

    url: a mirror (the archive's full URL for CIFAR; a base URL ending in / for SVHN's three
    files). md5: the archive's expected md5, replacing the official one (CIFAR only). Returns the
    folder the dataset was unpacked to. An interrupted download leaves nothing behind.
    """
    if name not in OFFICIAL:
        raise DataError(f"{name}: only {', '.join(OFFICIAL)} can be downloaded")
    official, root = OFFICIAL[name], Path(data_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if official.archive is None:  # SVHN: three bare .mat files
        base = url if url else official.url
        for file, file_md5 in official.files.items():
            target = root / file
            if not target.is_file():
                _fetch(base.rstrip("/") + "/" + file, target, md5 or file_md5, progress)
        return root
    archive = root / official.archive
    _fetch(url or official.url + official.archive, archive, md5 or official.archive_md5, progress)
    final = root / official.folder
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
    try:
        _safe_extract(archive, staging)
        unpacked = staging / official.folder
        if not unpacked.is_dir():
            raise DataError(f"{archive}: archive has no {official.folder}/ folder")
        if final.exists():
            shutil.rmtree(final)
        os.replace(unpacked, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def fit_zca(images: np.ndarray, filter_bias: float = 0.01, scale: float = 55.0):
    """Global contrast normalisation then ZCA, as pylearn2's make_cifar10_gcn_whitened.py:
    GCN(scale=55) per image, ZCA(filter_bias=0.01) fitted on these images.
    Returns (mean (D,), whitening matrix (D, D)) as float32."""
    x = _gcn(images.reshape(len(images), -1).astype(np.float64), scale)
    mean = x.mean(axis=0)
    x -= mean
    covariance = x.T @ x / len(x)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    whiten = (eigenvectors / np.sqrt(eigenvalues + filter_bias)) @ eigenvectors.T
    return mean.astype(np.float32), whiten.astype(np.float32)


def _gcn(x: np.ndarray, scale: float) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.sqrt((x**2).sum(axis=1, keepdims=True)) / scale
    norms[norms < 1e-8] = 1.0
    return x / norms


def zca_transform(images: np.ndarray, mean: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """Whiten uint8 (N, H, W, C) images; returns float32 of the same shape."""
    out = np.empty(images.shape, dtype=np.float32)
    flat, result = images.reshape(len(images), -1), out.reshape(len(images), -1)
    for start in range(0, len(images), 4096):
        chunk = _gcn(flat[start : start + 4096].astype(np.float32), 55.0) - mean
        result[start : start + 4096] = chunk @ whiten
    return out


def cached_zca(images: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
    """fit_zca on the training images, cached by a fingerprint of their bytes."""
    digest = hashlib.sha1(key.encode())
    digest.update(images[:: max(1, len(images) // 512)].tobytes())
    digest.update(str(images.shape).encode())
    path = cache_dir() / "zca" / f"{digest.hexdigest()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path) as cached:
                return cached["mean"], cached["whiten"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass
    mean, whiten = fit_zca(images)
    buffer = io.BytesIO()
    np.savez(buffer, mean=mean, whiten=whiten)
    try:
        _atomic_write(path, buffer.getvalue())
    except OSError as error:
        warnings.warn(f"could not cache the ZCA fit at {path}: {error}", stacklevel=2)
    return mean, whiten


# --------------------------------------------------------------------------------------------
# The batch loader
# --------------------------------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of an epoch: a function of (seed, epoch) alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class BatchLoader:
    """Batches from a split held whole on `device`.

    images: uint8 (N, H, W, C), or float32 when already preprocessed (ZCA). With augment=True
    each image gets a random HxW crop of its `pad`-pixel reflection-padded self and a random
    horizontal flip, drawn per image and applied to the batch with one gather. `mean`/`std`
    normalise on the 0-255 scale (or divide by 255 with std=255, mean=0). Training order and
    augmentation are functions of (seed, epoch); with shuffle=True the last partial batch is
    dropped, evaluation (shuffle=False) covers every image. Yields (x (B, C, H, W) float32 in
    channels_last memory format, y int64).
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        shuffle: bool = False,
        augment: bool = False,
        pad: int = 4,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
    ) -> None:
        images = torch.as_tensor(images)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
        self.n, self.height, self.width, channels = images.shape
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.device = torch.device(device)
        self.pad = pad if augment else 0
        if self.pad:
            # reflection-pad once; a crop is then a window of this stored tensor
            padded = torch.nn.functional.pad(
                images.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="reflect"
            ).permute(0, 2, 3, 1)
            images = padded.to(images.dtype) if images.dtype == torch.uint8 else padded
        self.images = images.contiguous().to(self.device)
        self.mean = torch.tensor(mean if mean else [0.0] * channels, device=self.device)
        self.std = torch.tensor(std if std else [1.0] * channels, device=self.device)

    def __len__(self) -> int:
        if self.shuffle:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def batches(
        self, epoch: int = 0, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of an epoch, from batch index `start_batch` on (for mid-epoch resume)."""
        order = (
            epoch_order(self.n, self.seed, epoch) if self.shuffle else torch.arange(self.n)
        ).to(self.device)
        if self.augment:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7919)
            offsets = torch.randint(0, 2 * self.pad + 1, (self.n, 2), generator=generator)
            flips = torch.rand(self.n, generator=generator) < 0.5
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        rows = torch.arange(self.height, device=self.device)
        cols = torch.arange(self.width, device=self.device)
        for b in range(start_batch, len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.augment:
                dy, dx = offsets[b * self.batch_size :][: len(index)].unbind(1)
                flip = flips[b * self.batch_size :][: len(index)]
                r = (dy[:, None] + rows)[:, :, None]  # (B, H, 1)
                c = torch.where(
                    flip[:, None], dx[:, None] + self.width - 1 - cols, dx[:, None] + cols
                )[:, None, :]  # (B, 1, W)
                x = self.images[index[:, None, None], r, c]  # (B, H, W, C), one gather
            else:
                x = self.images[index]
            x = (x.float() - self.mean) / self.std
            yield x.permute(0, 3, 1, 2), self.labels[index]

    __iter__ = batches
