"""`wrn table run`: the runs of a table, one after another or one per device at once.

Each run is an ordinary `wrn train` process (the same command --print-commands prints), so a
finished run is skipped, a stopped one resumed, and a failed one recorded while the next
starts. SIGTERM or SIGINT reaches every running process, which checkpoints; the same command
later continues the table. Each run's output goes to EXP_DIR/logs/.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wideresnet.errors import Interrupted, RunError, stop_signals
from wideresnet.experiments.expdir import Claims, ExperimentDir, stopped_by_signal
from wideresnet.experiments.plan import PlannedRun
from wideresnet.progress import log as progress_log
from wideresnet.train.rundir import RunDir, RunState

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
TABLE_STOPPED = "every running run saved a checkpoint; the same command resumes the table"


@dataclass
class Outcome:
    finished: int = 0
    failed: int = 0
    skipped: int = 0


class Job(Protocol):
    """A started run, as the scheduler sees it."""

    def done(self) -> bool: ...

    def stop(self) -> None:
        """Ask the run to save a checkpoint and end (returns at once)."""

    def wait(self) -> None:
        """Until the run has ended, after stop()."""


HELD = object()  # start()'s answer for a run another runner holds: looked at again later


def schedule(
    todo: list[PlannedRun],
    slots: int,
    start: Callable[[PlannedRun, int], Job | object | None],
    ended: Callable[[Job, int], None],
) -> None:
    """The one local scheduler of both local launchers: the runs in order, at most `slots` at
    once. `start(run, slot)` gives a Job, HELD (another runner holds the run) or None (nothing
    to do now); `ended(job, left)` is told of each job that ended. SIGTERM or SIGINT: every
    running job is stopped (each saves a checkpoint), told of, and Interrupted is raised."""
    pending, held, active, announced = list(todo), [], {}, 0  # active: slot -> job
    with stop_requests() as stop:
        while pending or active or held:
            while pending and len(active) < slots and not stop:
                run, slot = pending.pop(0), min(set(range(slots)) - set(active))
                job = start(run, slot)
                if job is HELD:
                    held.append(run)
                elif job is not None:
                    active[slot] = job
            for slot, job in list(active.items()):
                if job.done():
                    del active[slot]
                    ended(job, len(pending) + len(active))
            if stop:
                if active:
                    name = signal.Signals(stop[0]).name
                    log.info(f"passing {name} to {len(active)} running run(s)")
                for job in active.values():
                    job.stop()
                for job in active.values():
                    job.wait()
                    ended(job, len(pending))
                raise Interrupted(stop[0], TABLE_STOPPED)
            if not pending and held:
                if not active and announced != len(held):
                    announced = len(held)
                    log.info(f"waiting for {announced} run(s) another runner holds")
                pending, held = held, []
                time.sleep(POLL_SECONDS * 5)
            time.sleep(POLL_SECONDS)


def log_path(exp_dir: Path, run: PlannedRun) -> Path:
    experiment = ExperimentDir(exp_dir)
    return experiment.log(experiment.key(run))


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Signals noted (not acted on at once): the loop passes them on to the runs."""
    received: list[int] = []
    with stop_signals(lambda signum, frame: received.append(signum)):
        yield received


@dataclass
class Running:
    """A run in a `wrn train` process this runner started."""

    run: PlannedRun
    process: subprocess.Popen
    started: float
    claim: int  # the descriptor of this runner's claim on the run

    def done(self) -> bool:
        return self.process.poll() is not None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        self.process.wait()


class TableRunner:
    """Runs planned runs in processes, `len(devices)` at a time (one when devices is None);
    a run another runner holds is left to it and looked at again when it lets go."""

    def __init__(self, runs: list[PlannedRun], exp_dir: Path, devices: list[str] | None) -> None:
        self.runs, self.exp_dir = runs, Path(exp_dir).absolute()
        self.slots: list[str | None] = list(devices) if devices else [None]
        self.claims = Claims(self.exp_dir)
        self.durations: list[float] = []

    def pending(self, retry_failed: bool) -> list[PlannedRun]:
        return [run for run in self.runs if run.state in _wanted(retry_failed)]

    def run(self, retry_failed: bool = False) -> Outcome:
        pending = self.pending(retry_failed)
        self.outcome = Outcome(skipped=len(self.runs) - len(pending))
        self.total, self.wanted, self.started = len(pending), _wanted(retry_failed), 0
        states = [run.state for run in self.runs]
        finished, failed = states.count(RunState.FINISHED), states.count(RunState.FAILED)
        log.info(
            f"{len(self.runs)} runs: {finished} finished (skipped), "
            f"{failed} failed{' (retried)' if retry_failed else ' (skipped)'}, "
            f"{len(pending)} to run, {len(self.slots)} at a time"
        )
        schedule(pending, len(self.slots), self._start, self._finished)
        return self.outcome

    def _start(self, run: PlannedRun, slot: int) -> Running | object | None:
        claim = self.claims.take(run)
        if claim is None:
            return HELD
        if run.state not in self.wanted:  # another runner did it meanwhile
            os.close(claim)
            self.outcome.skipped += 1
            return None
        device = self.slots[slot]
        args = run.args() + (["--device", device] if device else [])
        path = log_path(self.exp_dir, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as out:
            out.write(f"$ wrn {' '.join(args)}\n")
            out.flush()
            process = subprocess.Popen(
                [sys.executable, "-m", "wideresnet", *args], stdout=out, stderr=subprocess.STDOUT
            )
        self.started += 1
        what = "resuming" if "--resume" in args else "starting"
        log.info(
            f"[{self.started}/{len(self.runs)}] {what} {run.tag} seed {run.seed} (log: {path})"
        )
        return Running(run, process, time.monotonic(), claim)

    def _finished(self, item: Running, left: int) -> None:
        code = item.process.wait()
        os.close(item.claim)
        seconds, outcome = time.monotonic() - item.started, self.outcome
        result = _result(item.run) if code == 0 else None
        if result is not None:
            outcome.finished += 1
            self.durations.append(seconds)
            said = f"test error {result.test_error:.2f}% after {result.epochs} epochs"
        elif stopped_by_signal(code):
            said = "stopped, checkpoint saved"
        else:
            outcome.failed += 1
            said = f"FAILED (exit {code}; see {log_path(self.exp_dir, item.run)})"
        ExperimentDir(self.exp_dir).record_exit(item.run, code, seconds)
        done = outcome.finished + outcome.failed
        progress_log.info(
            f"{item.run.tag} seed {item.run.seed}: {said}, {seconds:.0f}s; {done}/{self.total} "
            f"done{self._eta(left)}",
            extra={"progress": "table", "progress_end": True},
        )

    def _eta(self, left: int) -> str:
        if not self.durations or not left:
            return ""
        mean = sum(self.durations) / len(self.durations)
        return f", ETA {mean * left / len(self.slots) / 60:.1f} min (mean of runs finished so far)"


def _wanted(retry_failed: bool) -> tuple[RunState, ...]:
    """The states of the runs still to run."""
    wanted = (RunState.NEW, RunState.STOPPED)
    return (*wanted, RunState.FAILED) if retry_failed else wanted


def _result(run: PlannedRun):
    try:
        return RunDir(run.run_dir).result()
    except RunError:
        return None


def print_commands(runs: list[PlannedRun], retry_failed: bool = False) -> list[str]:
    """One `wrn ...` line per pending run, for any scheduler."""
    return [run.command() for run in runs if run.state in _wanted(retry_failed)]


def parse_devices(devices: list[str] | None) -> list[str] | None:
    """'0,1' -> cuda:0, cuda:1; cpu (repeatable) and cuda:N as given."""
    if not devices:
        return None
    named = [f"cuda:{d}" if d.isdigit() else d for d in devices]
    for device in named:
        if device != "cpu" and not device.startswith("cuda:"):
            raise RunError(f"--devices: {device!r} is not a GPU number, cuda:N or cpu")
    return named
