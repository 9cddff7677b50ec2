"""EXP_DIR, the folder of a `wrn table run`, as RunDir is for a run: its records and where
each run stands, defined here once for every launcher and for `wrn table status`.

    EXP_DIR/plan.json         every run a `wrn table run` planned: tag, seed, epochs
    EXP_DIR/table-runs.json   each run's last exit code, seconds and command
    EXP_DIR/jobs.json         each run's last submitted job (submitit, submitit-local)
    EXP_DIR/logs/             each run's output, every process of it
    EXP_DIR/tables/           the grid files of the tables run here
    EXP_DIR/.claims/          one lock a run: which runner runs it now
    EXP_DIR/<table>/<row>/<dataset>/seed<N>/   the runs themselves (RunDir)

A run's state (`status`): finished, running (a process holds its lock), queued (its job is
pending or running, as the scheduler says), failed (failure.json, or its last process exited
with an error), stopped (interrupted; the same command resumes it), or new.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wideresnet.errors import RunError
from wideresnet.experiments.plan import PlannedRun
from wideresnet.files import (
    check_regular,
    parse_json,
    read_text,
    relative_inside,
    take_lock,
    write_json,
)
from wideresnet.train.rundir import CONFIG, RunDir, RunState

log = logging.getLogger(__name__)

PLAN, TABLE_RUNS, JOBS = "plan.json", "table-runs.json", "jobs.json"
LOG_TAIL = 64 << 10  # bytes: the end of a run's log, where its last error line is
STATES = ("finished", "running", "queued", "stopped", "failed", "new")
# Slurm's states of a job that is still to run or running (squeue's and sacct's names)
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
}


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive OS lock on `path` while inside (a shared record's read-modify-write)."""
    fd = take_lock(path)
    try:
        yield
    finally:
        os.close(fd)


def stopped_by_signal(code: int) -> bool:
    """The exit of a run that was asked to stop (SIGTERM, SIGINT) and saved a checkpoint."""
    return code in (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT)


class ExperimentDir:
    """The records of one EXP_DIR, each read and written here alone."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def key(self, run: PlannedRun) -> str:
        """A run's name in the records: its folder relative to EXP_DIR."""
        return str(run.run_dir.relative_to(self.path))

    def log(self, key: str) -> Path:
        """EXP_DIR/logs/<the run's folder, its parts joined by ->.log: every process of it."""
        return self.path / "logs" / ("-".join(Path(key).parts) + ".log")

    def _record(self, name: str) -> dict:
        """A record's entries; one that is damaged (unreadable, not JSON, not an object) is
        said and read as empty (the next write replaces it)."""
        path = self.path / name
        if not os.path.lexists(path):
            return {}
        try:
            found = parse_json(read_text(path, "record"), str(path))
        except RunError as error:
            log.warning(f"{error}; its entries are ignored")
            return {}
        if not isinstance(found, dict):
            log.warning(f"{path}: not a record of runs (a JSON object); its entries are ignored")
            return {}
        return found

    def _lock(self, name: str) -> Path:
        return self.path / f".{name.split('.')[0]}.lock"

    def _update(self, name: str, entries: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with locked(self._lock(name)):
            record = self._record(name)
            record.update(entries)
            write_json(self.path / name, record)

    # ---- the records ----

    def plan(self) -> dict[str, dict]:
        """plan.json, without an entry naming a folder outside EXP_DIR (not a run here)."""
        plan = self._record(PLAN)
        for key in [k for k in plan if not relative_inside(k, self.path)]:
            shown = str(key)[:200]
            log.warning(f"{self.path / PLAN}: {shown!r} is not a folder inside it; left out")
            del plan[key]
        return plan

    def record_plan(self, runs: list[PlannedRun]) -> None:
        entries = {}
        for run in runs:
            values = {**run.values, **run.extra}
            entries[self.key(run)] = {
                "tag": str(run.tag),
                "seed": run.seed,
                "epochs": values.get("epochs"),
            }
        self._update(PLAN, entries)
        for name in (TABLE_RUNS, JOBS):  # a record that cannot be written: said before any run
            with locked(self._lock(name)):
                pass

    def exits(self) -> dict[str, dict]:
        return self._record(TABLE_RUNS)

    def record_exit(self, run: PlannedRun, code: int, seconds: float) -> None:
        """A run's last exit code and command (for the ledger and `wrn table status`),
        whichever launcher ran it."""
        entry = {"exit": code, "seconds": round(seconds, 1), "command": run.command()}
        self._update(TABLE_RUNS, {self.key(run): entry})

    def jobs(self) -> dict[str, dict]:
        return self._record(JOBS)

    def record_jobs(self, submitted: list[tuple[PlannedRun, str]], launcher: str) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._update(
            JOBS,
            {
                self.key(run): {"job_id": job_id, "launcher": launcher, "submitted": when}
                for run, job_id in submitted
            },
        )

    # ---- where a run stands ----

    def run_keys(self, plan: dict[str, dict]) -> list[str]:
        """Every run planned here (`plan`, as plan() read it) or found here (a folder with a
        config.json)."""
        found = {
            str(p.parent.relative_to(self.path))
            for p in self.path.rglob(CONFIG)
            if p.parent.relative_to(self.path).parts[:1] not in (("submitit",), ("logs",), ())
        }
        return sorted(set(plan) | found)

    def status(self, key: str, plan: dict, exits: dict, jobs: dict) -> dict[str, Any]:
        """{"path", "state", "tag", "seed", "epoch", "epochs", "test_error", and "job_id",
        "eta_seconds" or "error" where they apply}; `plan`, `exits` and `jobs`: the records,
        read once for every run."""
        run = RunDir(self.path / key)
        planned = plan.get(key) if isinstance(plan.get(key), dict) else {}
        config = run.config() or {}
        rows = run.metrics()
        epochs = config.get("epochs") or planned.get("epochs")
        entry: dict[str, Any] = {
            "path": key,
            "tag": config.get("experiment") or planned.get("tag"),
            "seed": config.get("seed", planned.get("seed")),
            "epoch": len(rows),
            "epochs": epochs,
            "test_error": rows[-1].test_error if rows else None,
        }
        state = run.status() if run.path.is_dir() else RunState.NEW
        job = jobs.get(key)
        last = exits.get(key)
        last_exit = last.get("exit") if isinstance(last, dict) else None
        if state == RunState.FINISHED:
            result = run.result()
            entry.update(state="finished", epoch=result.epochs, test_error=result.test_error)
        elif state == RunState.RUNNING:
            entry["state"] = "running"
            seconds = [r.epoch_seconds for r in rows if r.epoch_seconds]
            if seconds and isinstance(epochs, int):
                entry["eta_seconds"] = round(sum(seconds) / len(seconds) * (epochs - len(rows)))
        elif job_active(job):
            entry.update(state="queued", job_id=str(job["job_id"]))
        elif state == RunState.FAILED:
            failure = run.failure() or {}
            entry.update(state="failed", error=str(failure.get("message", "failure.json"))[:300])
        elif isinstance(last_exit, int) and last_exit != 0 and not stopped_by_signal(last_exit):
            error = self._last_error(key) or f"exit {last_exit}"
            entry.update(state="failed", error=error[:300])
        else:
            entry["state"] = "stopped" if state == RunState.STOPPED else "new"
        return entry

    def _last_error(self, key: str) -> str | None:
        """The last `wrn: error:` line of a run's log."""
        path = self.log(key)
        try:
            check_regular(path, "log")  # a FIFO would hang the read
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - LOG_TAIL))
                lines = f.read(LOG_TAIL).decode(errors="replace").splitlines()
        except (OSError, RunError):
            return None
        errors = [line for line in lines if line.startswith("wrn: ")]
        return errors[-1] if errors else None


class Claims:
    """One runner at a time per run (two `wrn table run` into one experiment split the work):
    EXP_DIR/.claims/<run>.lock, an OS lock held while this runner's process for that run
    lives, and dropped with this runner if it dies."""

    def __init__(self, exp_dir: Path) -> None:
        self.folder = exp_dir / ".claims"

    def take(self, run: PlannedRun) -> int | None:
        """The claim's descriptor, or None when another runner holds the run."""
        name = "-".join(run.run_dir.relative_to(self.folder.parent).parts) + ".lock"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # .claims a file or a link to one
            raise RunError(
                f"{self.folder}: cannot hold the runs' claims ({error.strerror}); it must be a "
                "folder of lock files"
            ) from None
        return take_lock(self.folder / name, wait=False)


# --------------------------------------------------------------------------------------------
# What the scheduler says of a recorded job
# --------------------------------------------------------------------------------------------


def job_active(job: dict | None) -> bool:
    """Whether a recorded job is still queued or running, as its scheduler says."""
    if not isinstance(job, dict) or not str(job.get("job_id", "")):
        return False
    job_id = str(job["job_id"])
    if job.get("launcher") == "submitit-local":  # the id is the local controller's pid
        return job_id.isdigit() and _is_local_controller(int(job_id))
    return slurm_state(job_id) in ACTIVE_STATES


def _is_local_controller(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit.local._local" in command


def slurm_state(job_id: str) -> str:
    """A job's state as Slurm says: squeue for a live job (pending, requeued, running), else
    sacct where accounting answers ("UNKNOWN" when neither knows it)."""
    for command in (
        ["squeue", "-h", "-j", job_id, "-o", "%T"],
        ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"],
    ):
        if shutil.which(command[0]) is None:
            continue
        try:
            answer = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        states = [line.split()[0] for line in answer.stdout.splitlines() if line.strip()]
        if answer.returncode == 0 and states:
            return states[0]
    return "UNKNOWN"
