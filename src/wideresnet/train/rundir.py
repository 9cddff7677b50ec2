"""A run directory (DESIGN.md CONTRACT): its file names, its lock, its records, and the one
definition of where a run stands (`RunDir.status`).

config.json     the resolved config (flat) and `resolved` (the speed choices and why)
metrics.jsonl   one JSON object per epoch
checkpoint.pt   the latest training state (checkpoint.prev.pt: the one before)
result.json     written when the run ends
failure.json    written when a run stops on a non-finite loss
.lock           held by the one process that writes the run (an OS lock: it dies with it)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from enum import StrEnum
from pathlib import Path
from typing import Any

from wideresnet.errors import RunError, WriteError, WrnError
from wideresnet.extras import require
from wideresnet.files import (
    alive,
    atomic_write,
    free_space,
    read_json,
    read_text,
    take_lock,
    write_json,
)
from wideresnet.train.checkpoint import CHECKPOINT, PREVIOUS, Checkpoint, Checkpoints
from wideresnet.train.records import MetricsRow, Result

log = logging.getLogger(__name__)

CONFIG, METRICS, RESULT, FAILURE = "config.json", "metrics.jsonl", "result.json", "failure.json"
LOCK, TENSORBOARD, ASIDE = ".lock", "tensorboard", ".replaced-"
IDENTITY = ("model", "dataset", "seed")  # recorded in every run's config and checkpoint
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, PREVIOUS, RESULT, FAILURE, TENSORBOARD)
RECORD_FILES = (CONFIG, METRICS, RESULT, FAILURE)  # the small files (no checkpoints)


class RunState(StrEnum):
    NEW = "new"  # nothing written yet
    RUNNING = "running"  # a process holds its lock now
    STOPPED = "stopped"  # started, not finished, not failed (resumable with a checkpoint)
    FAILED = "failed"  # stopped on a non-finite loss (failure.json)
    FINISHED = "finished"  # result.json written


class RunDir:
    """The files of one run, written by one process at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = Checkpoints(self.path)
        self._lock_fd: int | None = None
        self._aside: Path | None = None  # the run an --overwrite replaces, until it is safe

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # ---- where the run stands ----

    def status(self) -> RunState:
        """new | running | stopped | failed | finished: the only definition of each."""
        if self.locked_by_other():
            return RunState.RUNNING
        try:
            if self.result() is not None:
                return RunState.FINISHED
        except RunError:
            pass  # a torn or foreign result.json: the run is resumed and writes it again
        if (self / FAILURE).is_file():
            return RunState.FAILED
        if (
            (self / CHECKPOINT).is_file()
            or (self / PREVIOUS).is_file()
            or (self / CONFIG).is_file()
        ):
            return RunState.STOPPED
        return RunState.NEW

    @property
    def resumable(self) -> bool:
        return (self / CHECKPOINT).is_file() or (self / PREVIOUS).is_file()

    def check_belongs(self, checkpoint: Checkpoint, path: Path) -> None:
        """Refuse a checkpoint of another run dropped into this run's directory: its run id
        (when both record one), the model, data and seed, and its history of epochs (the
        checkpoint's and metrics.jsonl's: one must begin the other, timings and all)."""
        recorded = self.config()
        if recorded is None:
            return
        differing = [k for k in IDENTITY if checkpoint.config.get(k) != recorded.get(k)]
        if differing:
            found = ", ".join(f"{k} {checkpoint.config.get(k)!r}" for k in differing)
            mine = ", ".join(f"{k} {recorded.get(k)!r}" for k in differing)
            raise RunError(
                f"{path} belongs to another run ({found}; this run: {mine}); refusing it"
            )
        history = (
            [row.to_dict() for row in checkpoint.training.state.metrics]
            if checkpoint.training
            else []
        )
        written = [row.to_dict() for row in self.metrics()]
        shorter = min(len(history), len(written))
        if history[:shorter] != written[:shorter]:
            raise RunError(
                f"{path} belongs to another run (its epochs differ from {self / METRICS}); "
                "refusing it"
            )

    # ---- what an interrupted --overwrite leaves ----

    def orphans(self) -> list[Path]:
        """Runs an --overwrite moved aside whose process ended before settling them, newest
        first."""
        found = []
        for entry in self.path.glob(ASIDE + "*") if self.path.is_dir() else []:
            pid = entry.name[len(ASIDE) :]
            mine = entry.is_dir() and not entry.is_symlink()  # a link names another folder
            if mine and pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
                found.append(entry)
        return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)

    def aside_with_checkpoint(self) -> Path | None:
        """The run an interrupted --overwrite left aside, when this folder has no checkpoint."""
        if self.resumable:
            return None
        return next((o for o in self.orphans() if RunDir(o).resumable), None)

    def put_back(self) -> Path | None:
        """The run an interrupted --overwrite replaced comes back (the new run never saved a
        checkpoint; its files go); the folder it came from, or None. Under the lock."""
        aside = self.aside_with_checkpoint()
        if aside is None:
            return None
        self._clear_run_files()
        self._move_back(aside)
        log.warning(
            f"{self.path}: the run an interrupted --overwrite replaced is back (from {aside.name})"
        )
        return aside

    # ---- one writer at a time ----

    def _try_lock(self) -> tuple[int, str]:
        """(fd holding the lock, the pid the file named before); RunError when held."""
        fd = take_lock(self / LOCK, wait=False)
        if fd is None:
            try:
                holder = read_text(self / LOCK, "lock file", 64).strip() or "unknown"
            except WrnError:
                holder = "unknown"
            raise RunError(
                f"{self.path} is in use by another wrn process (pid {holder}); wait for it to "
                "end or stop it, then try again"
            ) from None
        return fd, os.pread(fd, 64, 0).decode(errors="replace").strip()

    def locked_by_other(self) -> bool:
        """Another process holds this run's lock now (it is running)."""
        if self._lock_fd is not None or not (self / LOCK).is_file():
            return False
        try:
            fd, _ = self._try_lock()
        except WriteError:
            return False  # a read-only folder: nobody writes it
        except RunError as error:
            return "in use" in str(error)
        os.close(fd)
        return False

    def check_free(self) -> None:
        """Fail fast when another process writes this run (the lock is not kept)."""
        if (self / LOCK).exists():
            fd, _ = self._try_lock()
            os.close(fd)

    def lock(self) -> None:
        """Own the run directory until release() or the end of this process."""
        fd, before = self._try_lock()
        if before and before != str(os.getpid()):
            shown = before if before.isdigit() else repr(before[:20])
            log.warning(
                f"took over {self / LOCK} from pid {shown}, which ended without releasing it"
            )
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            os.close(fd)
            raise WriteError(
                f"cannot write {self / LOCK}: {error.strerror} ({free_space(self.path)}); "
                "nothing was changed"
            ) from None
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- a new run ----

    def run_files(self) -> list[str]:
        return (
            [name for name in os.listdir(self.path) if name != LOCK] if self.path.is_dir() else []
        )

    def check_new(self, overwrite: bool) -> None:
        """Before any work: the folder can take a new run (nothing is changed yet)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"--out {self.path}: exists and is not a directory")
        self._refuse_a_run_without(overwrite)
        self.check_free()

    def _refuse_a_run_without(self, overwrite: bool) -> None:
        if self.run_files() and not overwrite:
            raise RunError(
                f"--out {self.path}: not empty; use --resume {self.path} to continue it "
                "or --overwrite to start again"
            )

    def claim_new(self, overwrite: bool) -> None:
        """Create and lock the folder; with overwrite, move the old run's files aside until
        the new run has written its first checkpoint (settle) or failed (restore)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunError(f"--out {self.path}: cannot create ({error.strerror})") from None
        self.lock()
        self._refuse_a_run_without(overwrite)  # another process may have filled it meanwhile
        old = [name for name in RUN_FILES if (self / name).exists()]
        if old:
            self._aside = self / f".replaced-{os.getpid()}"
            self._aside.mkdir(exist_ok=True)
            for name in old:
                os.replace(self / name, self._aside / name)
            log.info(f"--overwrite: the run in {self.path} is kept aside until the new one saves")

    def settle(self) -> None:
        """The new run has a checkpoint: the run it replaced is deleted (and any an earlier,
        interrupted --overwrite of this folder left aside)."""
        if self._aside is not None:
            for aside in [self._aside, *self.orphans()]:
                shutil.rmtree(aside, ignore_errors=True)
            self._aside = None

    def restore(self) -> None:
        """The new run failed before its first checkpoint: the replaced run comes back."""
        if self._aside is None:
            return
        self._clear_run_files()
        self._move_back(self._aside)
        self._aside = None
        log.info(f"the previous run in {self.path} was put back")

    def _move_back(self, aside: Path) -> None:
        """A run's own files (RUN_FILES, never a link) from the aside folder into this one;
        the aside folder goes when nothing else is in it."""
        for name in RUN_FILES:
            entry = aside / name
            if entry.exists() and not entry.is_symlink():
                os.replace(entry, self / name)
        try:
            aside.rmdir()
        except OSError:
            log.warning(f"{aside}: left in place, it holds files that are not the run's")

    def _clear_run_files(self) -> None:
        for name in RUN_FILES:
            target = self / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

    # ---- records ----

    def write_config(
        self, config: dict[str, Any], resolved: dict[str, Any], run_id: str | None = None
    ) -> None:
        record = {**config, "resolved": resolved}
        write_json(self / CONFIG, record | ({"run_id": run_id} if run_id else {}))

    def config(self) -> dict[str, Any] | None:
        """config.json (flat options and `resolved`), or None when missing or not an object."""
        record = read_json(self / CONFIG)
        return record if isinstance(record, dict) else None

    def write_metrics(self, rows: list[MetricsRow]) -> None:
        lines = "".join(json.dumps(row.to_dict()) + "\n" for row in rows)
        atomic_write(self / METRICS, lines.encode())

    def metrics(self) -> list[MetricsRow]:
        """The epochs of metrics.jsonl that read as records (a torn last line of a killed run,
        or a line that is not an epoch record, is left out)."""
        return self.read_metrics()[0]

    def read_metrics(self) -> tuple[list[MetricsRow], list[int]]:
        """(the epoch records of metrics.jsonl, the numbers of its lines that are not one,
        besides a torn last line)."""
        if not (self / METRICS).exists():
            return [], []
        lines = read_text(self / METRICS, "metrics file").splitlines()  # RunError naming it
        rows, bad = [], []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(MetricsRow.from_dict(json.loads(line), str(self / METRICS)))
            except (ValueError, RecursionError, RunError):
                torn = number == len(lines) and line.startswith("{")
                if not torn:
                    bad.append(number)
        return rows, bad

    def write_result(self, result: Result) -> None:
        write_json(self / RESULT, result.to_dict())

    def result(self) -> Result | None:
        """result.json; None when there is none, RunError naming it when it does not read."""
        if not (self / RESULT).exists():
            return None
        record = read_json(self / RESULT)
        if record is None:
            raise RunError(f"{self / RESULT}: not readable JSON")
        return Result.from_dict(record, str(self / RESULT))

    def clear_result(self) -> None:
        (self / RESULT).unlink(missing_ok=True)

    def write_failure(self, failure: dict[str, Any]) -> None:
        write_json(self / FAILURE, failure)

    def failure(self) -> dict[str, Any] | None:
        record = read_json(self / FAILURE)
        return record if isinstance(record, dict) else None


class TensorBoardLog:
    """Each epoch's metrics.jsonl row as TensorBoard scalars in RUN_DIR/tensorboard/
    (`--tensorboard`; needs the tensorboard package: `pip install "wideresnet[tensorboard]"`)."""

    def __init__(self, folder: Path) -> None:
        require("tensorboard", "--tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.make_writer, self.writer = folder, SummaryWriter, None

    def add(self, row: MetricsRow) -> None:
        if self.writer is None:  # created at the first epoch's end, inside the claimed run
            self.writer = self.make_writer(str(self.folder))
        for key, value in row.to_dict().items():
            if key != "epoch" and value is not None:
                self.writer.add_scalar(key, value, row.epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
