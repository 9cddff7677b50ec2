"""Durable file writes: every file wideresnet writes goes through `atomic_write`.

The data goes to a temporary file beside the target, is flushed and fsynced, then renamed over
the target, so a reader sees the old file or the new one, never a torn one. Any failure while
writing (a full disk, a file-size limit, a read-only folder, whatever exception the serialiser
raises) becomes one WriteError naming the path and the free space; the temporary file is
removed and the previous file is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from wideresnet.errors import Interrupted, RunError, WriteError, WrnError


def free_space(path: Path) -> str:
    """'N MiB free' on the file system holding path (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return f"{shutil.disk_usage(candidate).free / 2**20:,.0f} MiB free"
        except OSError:
            continue
    return "free space unknown"


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    data: bytes | Callable[[IO[bytes]], Any],
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Write `data` (bytes, or a function that writes to a binary file) to `path` atomically.

    `before_replace` runs once the new data is safely on disk, just before it replaces `path`
    (a checkpoint keeps the file it replaces as its previous one there)."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except (WrnError, Interrupted):  # already one clear line (a bad download, a signal)
        raise
    except Exception as error:  # any failure of the write is reported the same way
        raise WriteError(
            f"cannot write {path}: {_reason(error)} ({free_space(path.parent)}); "
            "the previous file, if any, is intact"
        ) from error
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def first_line(error: BaseException) -> str:
    """An error's message in one line (its first), or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return first_line(error)


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """An output that exists is replaced only when asked (`--overwrite`)."""
    if Path(path).exists() and not overwrite:
        raise RunError(f"--out {path}: exists; pass --overwrite to replace it")


def write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode())


def read_json(path: Path) -> Any:
    """The JSON value in path, or None when the file is missing, empty or malformed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
