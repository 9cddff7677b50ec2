"""Durable file writes: every file wideresnet writes goes through `atomic_write`.

The data goes to a temporary file beside the target, is flushed and fsynced, then renamed over
the target, so a reader sees the old file or the new one, never a torn one. Any failure while
writing (a full disk, a file-size limit, a read-only folder, whatever exception the serialiser
raises) becomes one WriteError naming the path and the free space; the temporary file is
removed and the previous file is left as it was.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from wideresnet.errors import DataError, Interrupted, RunError, WriteError, WrnError


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
        _remove_stale_temporaries(path)
        prefix = f".{path.name}.{os.getpid()}."
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
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


def _remove_stale_temporaries(path: Path) -> None:
    """The temporary files a killed writer of `path` left (their process is gone): the next
    write removes them. Names carry the writer's pid (wideresnet 0.2's had none)."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        writer = old.name[len(path.name) + 2 :].split(".", 1)[0]
        if writer.isdigit() and alive(int(writer)):
            continue
        try:
            old.unlink()
        except OSError:
            pass


def alive(pid: int) -> bool:
    """Whether process `pid` still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return first_line(error)


def rewrite_in_place(path: str | os.PathLike, data: bytes) -> None:
    """Replace a file's contents keeping the file itself: its mode, its other hard links,
    and, through a symlink, the file the link names. The new bytes are first written beside it
    (a full or read-only disk then fails with nothing touched), that copy is removed, and the
    file is rewritten in place, fsynced; WriteError naming it on failure."""
    target = Path(os.path.realpath(path))
    atomic_write(target.parent / f".{target.name}.rewrite", data)  # room for it, or one line
    (target.parent / f".{target.name}.rewrite").unlink()
    try:
        with open(target, "r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise WriteError(
            f"cannot write {target}: {error.strerror or error} ({free_space(target.parent)})"
        ) from error


def take_lock(path: Path, wait: bool = True) -> int | None:
    """The package's one lock (a run's .lock, an experiment's records and claims): an exclusive
    OS lock on `path`, created if missing; its descriptor (closing it lets go), or None where
    another process holds it and `wait` is False. Never through a link, never on anything but
    a regular file (a planted link would otherwise truncate or lock what it names)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RunError(f"{path} is a symlink; refusing to follow it (remove it)") from None
        if error.errno == errno.EISDIR or Path(path).is_dir():
            raise RunError(f"{path} is a directory, not a lock file; remove it") from None
        raise WriteError(
            f"cannot write {path}: {error.strerror} ({free_space(Path(path).parent)}); nothing "
            "was changed"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunError(f"{path} is not a regular file; refusing to use it as a lock (remove it)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


def check_regular(path: Path, what: str) -> None:
    """RunError unless `path` is a regular file (a FIFO would hang a read, a device like
    /dev/zero never end one): symlinks are followed, to the thing they name."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise RunError(f"{path}: no such {what}") from None
    except OSError as error:
        raise RunError(f"{path}: unreadable ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        article = "an" if what[:1] in "aeiou" else "a"
        raise RunError(f"{path}: not a regular file; refusing to read it as {article} {what}")


def one_component(name: object, what: str, where: str) -> str:
    """A name read from a file (a wnid, a shard's file name), as one path component inside
    its folder: not empty, no separator, not '.' or '..'; DataError naming `where` otherwise."""
    text = str(name)
    if not text or "/" in text or "\\" in text or "\0" in text or text in (".", ".."):
        raise DataError(f"{where}: {what} {text!r} is not a name inside its folder; refusing it")
    return text


def relative_inside(key: object, folder: Path) -> bool:
    """`key` (a run's name in an experiment's records) is a relative path that stays inside
    `folder`, links included."""
    if not isinstance(key, str) or not key or Path(key).is_absolute():
        return False
    try:
        return (folder / key).resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """An output that exists is replaced only when asked (`--overwrite`)."""
    if Path(path).exists() and not overwrite:
        raise RunError(f"--out {path}: exists; pass --overwrite to replace it")


def write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode())


RECORD_LIMIT = 64 << 20  # bytes: the largest record, config, grid, index or label file read


def read_bounded(path: Path, what: str, limit: int = RECORD_LIMIT) -> bytes:
    """The bytes of `path`, the one way files are read whole: a regular file (a FIFO would
    hang the read, /dev/zero never end it) of at most `limit` bytes; RunError naming it and
    the rule otherwise."""
    path = Path(path)
    check_regular(path, what)
    over = f"over the {limit:,}-byte limit for one {what}; refusing to read it"
    try:
        size = path.stat().st_size
        if size > limit:
            raise RunError(f"{path}: {size:,} bytes, {over}")
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # no further than the limit, whatever the size said
    except OSError as error:
        raise RunError(f"{path}: unreadable ({error.strerror or error})") from None
    if len(data) > limit:
        raise RunError(f"{path}: {over}")
    return data


def read_text(path: Path, what: str, limit: int = RECORD_LIMIT) -> str:
    """`read_bounded` as UTF-8 text; RunError naming the file when it is not."""
    try:
        return read_bounded(path, what, limit).decode()
    except UnicodeDecodeError as error:
        raise RunError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def parse_json(text: str, where: str) -> Any:
    """json.loads with its errors (deep nesting included) as one RunError naming `where`."""
    try:
        return json.loads(text)
    except ValueError as error:
        raise RunError(f"{where}: not valid JSON ({error})") from None
    except RecursionError:
        raise RunError(f"{where}: not valid JSON (nested too deeply)") from None


def read_json(path: Path) -> Any:
    """The JSON value in path, or None when the file is missing, not a regular file, too
    large, or malformed (a record the project wrote, read back: the caller says what then)."""
    try:
        return parse_json(read_text(path, "JSON record"), str(path))
    except RunError:
        return None
