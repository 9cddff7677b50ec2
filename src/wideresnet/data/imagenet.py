"""ImageNet (ILSVRC2012) in its usual layout, DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG,
streamed: the listing, the class names, sorting the official flat val/ folder into that
layout (`wrn data prepare imagenet`), and decoding every file to find the broken ones
(`wrn data verify`).

Class names come from LOC_synset_mapping.txt (Kaggle's copy of the devkit) where present,
else they are the wnids. ImageNet's oddities load as any image does: CMYK and greyscale
JPEGs are converted to RGB, and a PNG named .JPEG is opened by its content.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from wideresnet.data.folders import FolderSource, folder_files, open_image, to_rgb
from wideresnet.errors import DataError, RunError
from wideresnet.files import check_regular, one_component, read_text
from wideresnet.progress import Progress

log = logging.getLogger(__name__)

SYNSETS = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
DEVKIT = "ILSVRC2012_devkit_t12"
EXCLUDE = "wrn-exclude.txt"  # images to skip, one path per line (relative to the data folder)
VERIFY_CHUNK = 256  # files per task of the verifying processes
VERIFY_SIDE = 64  # JPEGs are verified at 1/8 scale: every block of the file is still decoded


def class_names(root: Path, wnids: list[str]) -> list[str]:
    """The wnids' names from LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca"), in
    DIR or beside it; the wnids themselves where there is none."""
    for path in (root / SYNSETS, root.parent / SYNSETS):
        if path.exists():
            names = {}
            for line in _side_text(path, "synset list").splitlines():
                wnid, _, name = line.strip().partition(" ")
                names[wnid] = name.strip() or wnid
            return [names.get(wnid, wnid) for wnid in wnids]
    return list(wnids)


def listing(root: Path, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(relative paths, labels, class names) of a split of an ImageNet-style folder (train,
    or val; `test` means val), in the interleaved order of folder datasets."""
    source = FolderSource(root)
    files, wnids, _ = folder_files(source, "train" if split == "train" else "test", stats=False)
    paths = [f for f, _ in files]
    labels = np.fromiter((label for _, label in files), dtype=np.int64, count=len(files))
    return paths, labels, class_names(root, wnids)


def excluded(root: Path) -> set[str]:
    """The paths DIR/wrn-exclude.txt lists (relative to DIR), if there is one."""
    path = root / EXCLUDE if root.is_dir() else root.parent / EXCLUDE
    if not path.exists():
        return set()
    lines = (line.strip() for line in _side_text(path, "exclusion list").splitlines())
    return {line for line in lines if line and not line.startswith("#")}


# --------------------------------------------------------------------------------------------
# wrn data prepare imagenet: the flat val/ folder sorted by class
# --------------------------------------------------------------------------------------------


def _side_text(path: Path, what: str) -> str:
    """A text file beside the images (a regular file, bounded, UTF-8); DataError naming it."""
    try:
        return read_text(path, what)
    except RunError as error:
        raise DataError(str(error)) from None


def _labels_from_csv(path: Path) -> dict[str, str]:
    """LOC_val_solution.csv: ImageId,PredictionString ("n01751748 x y x y ...")."""
    try:
        rows = list(csv.DictReader(io.StringIO(_side_text(path, "label file"), newline="")))
        labels: dict[str, str] = {}
        for row in rows:
            image, wnid = row["ImageId"], row["PredictionString"].split()[0]
            if labels.setdefault(image, wnid) != wnid:  # one image, two classes: which?
                raise DataError(
                    f"{path}: {image} is listed twice, as {labels[image]} and as {wnid}; "
                    "nothing was moved"
                )
        return labels
    except (OSError, KeyError, IndexError, csv.Error, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a LOC_val_solution.csv ({error})") from None


def _devkit_files(path: Path) -> tuple[bytes, bytes]:
    """(meta.mat, ILSVRC2012_validation_ground_truth.txt) of a devkit folder or .tar.gz."""
    wanted = ("data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt")
    try:
        if path.is_dir():
            return tuple((path / name).read_bytes() for name in wanted)  # type: ignore[return-value]
        with tarfile.open(path) as tar:
            members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            return tuple(tar.extractfile(members[name]).read() for name in wanted)  # type: ignore
    except (OSError, KeyError, tarfile.TarError) as error:
        raise DataError(f"{path}: not the ILSVRC2012 devkit ({error})") from None


def _labels_from_devkit(path: Path, names: list[str]) -> dict[str, str]:
    """The devkit: meta.mat maps ILSVRC2012_ID to wnid; the ground truth lists the ID of
    val image 1, 2, ... (ILSVRC2012_val_00000001.JPEG, ...)."""
    import scipy.io

    meta, truth = _devkit_files(path)
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True, struct_as_record=False)
        wnid = {int(s.ILSVRC2012_ID): str(s.WNID) for s in np.atleast_1d(synsets["synsets"])}
        ids = [int(line) for line in truth.decode().split()]
    except Exception as error:  # scipy raises many types for a bad file
        raise DataError(f"{path}: not a readable devkit meta.mat ({error})") from None
    by_number = {int(Path(n).stem.rsplit("_", 1)[-1]): Path(n).stem for n in names}
    return {by_number[k]: wnid[ids[k - 1]] for k in by_number if 0 < k <= len(ids)}


def _find_labels(root: Path) -> Path:
    for folder in (root, root.parent):
        for name in (VAL_SOLUTION, DEVKIT, f"{DEVKIT}.tar.gz"):
            if (folder / name).exists():
                return folder / name
    raise DataError(
        f"{root}: no {VAL_SOLUTION} or {DEVKIT}(.tar.gz) here or beside it; pass --val-labels FILE"
    )


def prepare_imagenet(data_dir: str | Path, val_labels: str | Path | None = None) -> str:
    """Sort the official flat DIR/val/*.JPEG into DIR/val/<wnid>/, from LOC_val_solution.csv
    or the ILSVRC2012 devkit. Every file's class is found before any moves; each move is one
    rename, so an interrupted run leaves every file in one place and the same command
    finishes the job. Returns a one-line summary."""
    root = Path(data_dir).expanduser()
    val = root / "val"
    if not val.is_dir():
        raise DataError(f"{val}: no such folder (expected DIR/val/ with the validation images)")
    flat = sorted(e.name for e in os.scandir(val) if e.is_file() and not e.name.startswith("."))
    source = Path(val_labels) if val_labels else _find_labels(root)
    if source.suffix == ".csv":
        check_regular(source, "label file")
        labels = _labels_from_csv(source)
    else:
        labels = _labels_from_devkit(source, flat)
    for wnid in {labels[Path(name).stem] for name in flat if Path(name).stem in labels}:
        one_component(wnid, "class (wnid)", str(source))
        if (val / wnid).is_symlink() or (val / wnid).exists() and not (val / wnid).is_dir():
            raise DataError(f"{val / wnid}: not a class folder (a link or a file); nothing moved")
    trained = (
        {p.name for p in (root / "train").iterdir() if p.is_dir()}
        if (root / "train").is_dir()
        else set()
    )
    unknown = sorted({labels[Path(n).stem] for n in flat if Path(n).stem in labels} - trained)
    if trained and unknown:  # the tree would be one no command loads
        raise DataError(
            f"{source}: {len(unknown)} class(es) that {root / 'train'} does not have (the "
            f"first: {unknown[0]}); nothing was moved"
        )
    missing = [name for name in flat if Path(name).stem not in labels]
    if missing:
        raise DataError(
            f"{source}: no class for {len(missing)} of the {len(flat)} files in {val} (the "
            f"first: {missing[0]}); nothing was moved"
        )
    with Progress(f"sorting {val}", len(flat), "files") as progress:
        for done, name in enumerate(flat, 1):
            folder = val / labels[Path(name).stem]
            folder.mkdir(exist_ok=True)
            os.replace(val / name, folder / name)
            progress.update(done)
    classes = len({p.name for p in val.iterdir() if p.is_dir()})
    return f"{len(flat):,} files sorted into {classes} class folders of {val}"


# --------------------------------------------------------------------------------------------
# wrn data verify: decode every file
# --------------------------------------------------------------------------------------------


_IMAGES = None  # in a verifying process: the images it reads (given once, at its start)


def _take(images) -> None:
    global _IMAGES
    _IMAGES = images


def _verify(indices: list[int]) -> list[str]:
    """What is wrong with each image of `indices` that does not decode (one line each), by
    the checks training makes (open_image: the decompression-bomb limit)."""
    images, failed = _IMAGES, []
    for i in indices:
        try:
            with open_image(images.read(i), images.name(i)) as image:
                image.draft("RGB", (VERIFY_SIDE, VERIFY_SIDE))
                to_rgb(image, images.name(i)).load()
        except DataError as error:
            failed.append(str(error))
        except Exception as error:  # Pillow raises many types for a broken file
            failed.append(f"{images.name(i)}: unreadable image ({error})")
    return failed


def verify_files(images, workers: int | None = None) -> list[str]:
    """Decode every file of `images` (stream.FileImages) in processes, with progress; one
    line for each that fails."""
    indices = list(range(len(images)))
    chunks = [indices[i : i + VERIFY_CHUNK] for i in range(0, len(indices), VERIFY_CHUNK)]
    failed: list[str] = []
    done = 0
    with (
        Progress(f"decoding {images.root}", len(indices), "files") as progress,
        ProcessPoolExecutor(workers or os.cpu_count() or 1, None, _take, (images,)) as pool,
    ):
        for chunk, result in zip(chunks, pool.map(_verify, chunks)):
            failed += result
            done += len(chunk)
            progress.update(done)
    return failed
