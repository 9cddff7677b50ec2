"""`wrn data download`: fetch the official files, check their md5, unpack them safely.

Downloads stream to a temporary file beside the target, are checked, then renamed into place;
archives are unpacked into a staging folder with every member confined to it. An interrupted
or failed download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from wideresnet.data.official import OFFICIAL
from wideresnet.errors import DataError
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
            total_mib = max(expected_size, 0) >> 20
            with Progress(f"downloading {destination.name}", total_mib, "MiB") as progress:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    progress.update(received >> 20)
            out.flush()
            os.fsync(out.fileno())
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
                fetch(base.rstrip("/") + "/" + file, target, md5 or file_md5)
        return root
    archive = root / official.archive
    fetch(url or official.url + official.archive, archive, md5 or official.archive_md5)
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
