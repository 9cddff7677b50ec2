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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from wideresnet.errors import Interrupted, RunError, stop_signals
from wideresnet.experiments.expdir import Claims, ExperimentDir, stopped_by_signal
from wideresnet.experiments.plan import PlannedRun
from wideresnet.progress import log as progress_log
from wideresnet.train.rundir import RunDir, RunState

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
TABLE_STOPPED = "every running run saved a checkpoint; the same command resumes the table"


@dataclass
class Running:
    run: PlannedRun
    process: subprocess.Popen
    started: float
    slot: int
    claim: int  # the descriptor of this runner's claim on the run


@dataclass
class Outcome:
    finished: int = 0
    failed: int = 0
    skipped: int = 0


def log_path(exp_dir: Path, run: PlannedRun) -> Path:
    experiment = ExperimentDir(exp_dir)
    return experiment.log(experiment.key(run))


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Signals noted (not acted on at once): the loop passes them on to the runs."""
    received: list[int] = []
    with stop_signals(lambda signum, frame: received.append(signum)):
        yield received


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
        outcome = Outcome(skipped=len(self.runs) - len(pending))
        states = [run.state for run in self.runs]
        finished, failed = states.count(RunState.FINISHED), states.count(RunState.FAILED)
        log.info(
            f"{len(self.runs)} runs: {finished} finished (skipped), "
            f"{failed} failed{' (retried)' if retry_failed else ' (skipped)'}, "
            f"{len(pending)} to run, {len(self.slots)} at a time"
        )
        active: list[Running] = []
        total, held_elsewhere, announced = len(pending), [], 0
        wanted = _wanted(retry_failed)
        with stop_requests() as stop:
            while pending or active or held_elsewhere:
                while pending and len(active) < len(self.slots) and not stop:
                    run = pending.pop(0)
                    claim = self.claims.take(run)
                    if claim is None:
                        held_elsewhere.append(run)
                    elif run.state not in wanted:  # another runner did it meanwhile
                        os.close(claim)
                        outcome.skipped += 1
                    else:
                        active.append(self._start(run, claim, active, total - len(pending)))
                for item in [a for a in active if a.process.poll() is not None]:
                    active.remove(item)
                    self._finished(item, outcome, total, len(pending) + len(active))
                if stop and active:
                    self._stop(active, stop[0])
                    for item in active:
                        self._finished(item, outcome, total, len(pending))
                    active = []
                if stop:
                    raise Interrupted(stop[0], TABLE_STOPPED)
                if not pending and held_elsewhere:
                    if not active and announced != len(held_elsewhere):
                        announced = len(held_elsewhere)
                        log.info(f"waiting for {announced} run(s) another runner holds")
                    pending, held_elsewhere = held_elsewhere, []
                    time.sleep(POLL_SECONDS * 5)
                time.sleep(POLL_SECONDS)
        return outcome

    def _start(self, run: PlannedRun, claim: int, active: list[Running], index: int) -> Running:
        slot = min(set(range(len(self.slots))) - {a.slot for a in active})
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
        what = "resuming" if "--resume" in args else "starting"
        log.info(f"[{index}/{len(self.runs)}] {what} {run.tag} seed {run.seed} (log: {path})")
        return Running(run, process, time.monotonic(), slot, claim)

    def _finished(self, item: Running, outcome: Outcome, total: int, left: int) -> None:
        code = item.process.wait()
        os.close(item.claim)
        seconds = time.monotonic() - item.started
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
            f"{item.run.tag} seed {item.run.seed}: {said}, {seconds:.0f}s; {done}/{total} done"
            f"{self._eta(left)}",
            extra={"progress": "table", "progress_end": True},
        )

    def _eta(self, left: int) -> str:
        if not self.durations or not left:
            return ""
        mean = sum(self.durations) / len(self.durations)
        return f", ETA {mean * left / len(self.slots) / 60:.1f} min (mean of runs finished so far)"

    def _stop(self, active: list[Running], signum: int) -> None:
        log.info(f"passing {signal.Signals(signum).name} to {len(active)} running run(s)")
        for item in active:
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGTERM)
        for item in active:
            item.process.wait()


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
