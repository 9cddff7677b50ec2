"""`wrn data download`: fetch the official files, check their md5, unpack them safely.

Downloads stream to a temporary file beside the target, are checked, then renamed into place;
archives are unpacked into a staging folder with every member confined to it. An interrupted
or failed download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from wideresnet.data.official import OFFICIAL
from wideresnet.errors import DataError, WriteError
from wideresnet.files import atomic_write
from wideresnet.progress import Progress


def safe_extract(archive: Path, target: Path) -> None:
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
                    or member.isdev()
                ):
                    raise DataError(
                        f"{archive}: member {member.name!r} would escape the target "
                        "folder or is a link; refusing to unpack"
                    )
            tar.extractall(target, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{archive}: cannot unpack ({error})") from None


def fetch(url: str, destination: Path, md5: str | None) -> None:
    """Stream url into destination through the atomic writer: the file appears only once it
    is complete and its md5 matches; anything else (a cut connection, a wrong md5, a full
    disk, SIGTERM) leaves nothing behind."""

    def stream(out) -> None:
        digest, received = hashlib.md5(), 0
        with urllib.request.urlopen(url, timeout=60) as response:
            expected_size = int(response.headers.get("Content-Length") or -1)
            total_mib = max(expected_size, 0) >> 20
            with Progress(f"downloading {destination.name}", total_mib, "MiB") as progress:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    progress.update(received >> 20)
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

    try:
        atomic_write(destination, stream)
    except WriteError as error:
        cause = error.__cause__
        if isinstance(cause, urllib.error.URLError | http.client.HTTPException | TimeoutError):
            reason = getattr(cause, "reason", cause)
            raise DataError(f"{url}: download failed ({reason}); nothing was kept") from None
        if isinstance(cause, ConnectionError | ValueError):  # ValueError: not a URL at all
            raise DataError(f"{url}: download failed ({cause}); nothing was kept") from None
        raise


def base_url(name: str) -> str:
    """Where the official files come from: $WRN_DATA_MIRROR (same file names), else the
    dataset's official address."""
    mirror = os.environ.get("WRN_DATA_MIRROR")
    return mirror.rstrip("/") + "/" if mirror else OFFICIAL[name].url


def download(
    name: str,
    data_dir: str | os.PathLike,
    url: str | None = None,
    md5: str | None = None,
    *,
    files: list[str] | None = None,
    verify: bool = True,
) -> Path:
    """Fetch the official files of cifar10, cifar100 or svhn into data_dir, md5-checked.

    url: a mirror (the archive's full URL for CIFAR; a base URL ending in / for SVHN's
    files). md5: the archive's expected md5, replacing the official one (CIFAR only). files:
    SVHN's .mat files to fetch (default all three). verify=False skips the md5 check. Returns
    the folder the dataset was unpacked to. An interrupted download leaves nothing behind.
    """
    if name not in OFFICIAL:
        raise DataError(f"{name}: only {', '.join(OFFICIAL)} can be downloaded")
    official, root = OFFICIAL[name], Path(data_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"{root}: cannot be the data folder ({error.strerror})") from None
    if official.archive is None:  # SVHN: bare .mat files
        base = url or base_url(name)
        for file in files or list(official.files):
            target = root / file
            if not target.is_file():
                expected = (md5 or official.files[file]) if verify else None
                fetch(base.rstrip("/") + "/" + file, target, expected)
        return root
    archive = root / official.archive
    expected = (md5 or official.archive_md5) if verify else None
    fetch(url or base_url(name) + official.archive, archive, expected)
    final = root / official.folder
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
    try:
        safe_extract(archive, staging)
        unpacked = staging / official.folder
        if not unpacked.is_dir():
            raise DataError(f"{archive}: archive has no {official.folder}/ folder")
        if final.exists():
            shutil.rmtree(final)
        os.replace(unpacked, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def default_data_dir(name: str) -> Path:
    """Where `wrn train` keeps official files it fetched: $WRN_DATA_DIR/<name>, else
    <cache>/data/<name>."""
    from wideresnet.data.cache import cache_dir

    root = os.environ.get("WRN_DATA_DIR")
    if root and Path(root).expanduser().exists() and not Path(root).expanduser().is_dir():
        raise DataError(f"WRN_DATA_DIR={root}: not a folder")
    return (Path(root).expanduser() if root else cache_dir() / "data") / name


def ensure_official(name: str, root: Path, splits: list[str], verify: bool) -> Path:
    """root, after fetching the official files of `splits` that are not there yet."""
    official = OFFICIAL[name]
    try:
        if official.archive is None:
            needed = sorted({f for split in splits for f in official.splits.get(split, [])})
            missing = [f for f in needed if not (root / f).is_file()]
            if missing:
                download(name, root, files=missing, verify=verify)
        elif not (root / official.folder).is_dir() and not (root / official.archive).is_file():
            download(name, root, verify=verify)
    except DataError as error:
        raise DataError(
            f"{error}. Without internet access here, fetch the files elsewhere (`wrn data "
            f"download --dataset {name} --data-dir DIR`) and pass --data-dir DIR, or train on "
            "an image folder (--dataset folder --data-dir DIR)"
        ) from None
    return root
