"""The official files of CIFAR-10, CIFAR-100 and SVHN: names, md5s, URLs and readers.

Readers return (images uint8 (N, H, W, 3) in the official order, labels int64 (N,), classes).
CIFAR pickles are read with an unpickler that builds arrays and nothing else; SVHN .mat files
are decoded once into the cache.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wideresnet.data.cache import cached_arrays, file_stamp, fingerprint, verify_digest
from wideresnet.errors import DataError


@dataclass(frozen=True)
class OfficialFiles:
    archive: str | None  # file downloaded (a .tar.gz to unpack), None for SVHN's bare .mat files
    archive_md5: str | None
    folder: str  # where the unpacked files live, relative to data_dir
    files: dict[str, str]  # file name -> md5
    url: str  # base URL
    splits: dict[str, list[str]]  # split -> files


OFFICIAL = {
    "cifar10": OfficialFiles(
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
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    ),
    "cifar100": OfficialFiles(
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        {
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        "https://www.cs.toronto.edu/~kriz/",
        {"train": ["train"], "test": ["test"]},
    ),
    "svhn": OfficialFiles(
        None,
        None,
        ".",
        {
            "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
            "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
        },
        "http://ufldl.stanford.edu/housenumbers/",
        {
            "train": ["train_32x32.mat"],
            "test": ["test_32x32.mat"],
            "extra": ["extra_32x32.mat"],
            "train+extra": ["train_32x32.mat", "extra_32x32.mat"],
        },
    ),
}
VERIFIED_RECORD = "verified.json"


def check_split(name: str, split: str) -> list[str]:
    splits = OFFICIAL[name].splits
    if split not in splits:
        raise DataError(f"{name} has splits {sorted(splits)}, not {split!r}")
    return splits[split]


def verify_md5(path: Path, expected: str) -> None:
    """Check a file's md5, remembering a verified file by (size, mtime) so it is hashed once."""
    verify_digest(
        path,
        "md5",
        expected,
        VERIFIED_RECORD,
        "md5 {actual} does not match the official {expected} (corrupt, truncated or not the "
        "official file; download it again, or pass --no-verify to use it anyway)",
    )


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


class CifarSource:
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

    def name(self, file: str) -> str:
        """How a file of the set is named in messages: its path, or ARCHIVE:MEMBER."""
        return f"{self.where}:{file}" if self.archive is not None else str(self.folder / file)

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
            return _unpickle(data, self.name(file))
        path = self.folder / file
        if not path.is_file():
            raise DataError(f"{path}: missing")
        if self.verify:
            verify_md5(path, self.official.files[file])
        return _unpickle(path.read_bytes(), str(path))


def load_cifar(name: str, data_dir: Path, split: str, verify: bool, labels: str):
    files = check_split(name, split)
    source = CifarSource(name, data_dir, verify)
    meta_file, meta_key = (
        ("batches.meta", "label_names")
        if name == "cifar10"
        else ("meta", "coarse_label_names" if labels == "coarse" else "fine_label_names")
    )
    label_key = "labels" if name == "cifar10" else f"{labels}_labels"
    meta = source.read(meta_file)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(meta_key, [])]
    images, targets = [], []
    for file in files:
        batch = source.read(file)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        except KeyError as error:
            raise DataError(f"{source.name(file)}: CIFAR batch without key {error}") from None
        except (ValueError, TypeError, OverflowError) as error:  # labels not small integers
            raise DataError(f"{source.name(file)}: not CIFAR's data and labels ({error})") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch_labels):
            raise DataError(
                f"{source.name(file)}: data of shape {data.shape} with {len(batch_labels)} "
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

    def decode() -> dict[str, np.ndarray]:
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
        images = np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8))
        return {"images": images, "labels": labels}

    arrays = cached_arrays("decoded", f"svhn-{path.name}", fingerprint([file_stamp(path)]), decode)
    return arrays["images"], arrays["labels"]


def load_svhn(data_dir: Path, split: str, verify: bool):
    parts = [_load_svhn_file(data_dir / f, verify) for f in check_split("svhn", split)]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return images, labels, [str(d) for d in range(10)]
