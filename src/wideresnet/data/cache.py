"""The cache of decoded arrays, ZCA fits and checksum records ($WRN_CACHE_DIR).

Entries are keyed by a fingerprint of their sources, so a changed source misses the cache. An
entry that cannot be read (empty, truncated, malformed) is rebuilt, never trusted; a cache that
cannot be written only costs the work again next time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from wideresnet.errors import DataError, WriteError
from wideresnet.files import atomic_write, read_json

log = logging.getLogger(__name__)

CACHE_VERSION = "3"  # bump when a reader's output changes for the same sources


def cache_dir() -> Path:
    """$WRN_CACHE_DIR, else $XDG_CACHE_HOME/wideresnet, else ~/.cache/wideresnet."""
    root = os.environ.get("WRN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "wideresnet"
    )
    return Path(root)


def file_stamp(path: Path) -> str:
    """What identifies a file's version cheaply: its absolute path, size and mtime."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def fingerprint(parts: Iterable[str | bytes]) -> str:
    """A hex digest of the parts, in order (and of the cache version)."""
    digest = hashlib.sha1(CACHE_VERSION.encode())
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\n")
    return digest.hexdigest()


KEY = "__key__"  # every entry holds the full key it was built for
DIGEST = "__sha256__"  # and the SHA-256 of its arrays (arrays_digest)


def cached_arrays(
    kind: str, name: str, key: str, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """build()'s arrays, from cache_dir()/kind/name-key.npz when it holds a readable copy
    built for this key whose content is what was written (the SHA-256 of its arrays, stored
    beside them, checked on every load: about 0.1 s for CIFAR-10's 150 MB); an entry that is
    torn, foreign, for another key, changed or short of arrays is rebuilt, never trusted."""
    folder = cache_dir() / kind
    path = folder / f"{name}-{key[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                arrays = {k: cached[k] for k in cached.files}
            stored_key, stored_digest = str(arrays.pop(KEY, "")), str(arrays.pop(DIGEST, ""))
            if stored_key != key:
                log.warning(f"cache entry {path} was not built for these files; rebuilding it")
            elif stored_digest != arrays_digest(arrays):
                log.warning(f"cache entry {path} changed since it was written; rebuilding it")
            else:
                return arrays
        except Exception as error:  # any unreadable entry is rebuilt: it is only a cache
            log.warning(f"cache entry {path} is unreadable ({type(error).__name__}); rebuilding it")
    arrays = build()
    buffer = io.BytesIO()
    stamps = {KEY: np.array(key), DIGEST: np.array(arrays_digest(arrays))}
    np.savez(buffer, **arrays, **stamps)
    try:
        atomic_write(path, buffer.getvalue())
        for old in folder.glob(f"{name}-*.npz"):  # a changed source leaves a stale entry
            if old != path:
                old.unlink(missing_ok=True)
    except (WriteError, OSError) as error:
        log.warning(f"could not write the cache entry {path}: {error}")
    return arrays


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays: each one's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def file_digest(path: Path, algorithm: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_digest(path: Path, algorithm: str, expected: str, record_name: str, refusal: str):
    """Check a file's digest, remembering a verified file by (size, mtime) in the cache's
    record `record_name` so that it is hashed once; DataError "PATH: `refusal`" when it does
    not match (`refusal` may name {actual})."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns, expected]
    record = read_record(record_name)
    if record.get(key) == stamp:
        return
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(f"{path}: " + refusal.format(actual=actual, expected=expected))
    record[key] = stamp
    write_record(record_name, record)


def read_record(name: str) -> dict:
    """A JSON record of the cache (e.g. verified checksums); {} when missing or malformed."""
    record = read_json(cache_dir() / name)
    return record if isinstance(record, dict) else {}


def write_record(name: str, record: dict) -> None:
    try:
        atomic_write(cache_dir() / name, json.dumps(record).encode())
    except WriteError as error:
        log.debug(f"record not written: {error}")  # costs a re-check next time, nothing more
