"""`wrn table run --launcher submitit|submitit-local`: a table's runs as cluster jobs.

Each run not finished, running or already queued becomes one job (on Slurm, one task of a
single job array); the job runs the same `wrn train` command a local runner would, in a child
process, into the run's own directory. Preemption or a time limit (submitit's USR2) reaches
`RunJob.checkpoint`: the child gets SIGTERM, saves a checkpoint and exits, and submitit
requeues the job, which resumes the run as `--resume` does. The job ids go into EXP/jobs.json,
so the same command later submits only what is neither finished nor queued or running.

    --launcher submitit        Slurm (sbatch), through submitit's AutoExecutor; returns once
                               submitted (`wrn table status EXP` follows the jobs); USR2
                               comes --slurm-signal-delay seconds (90) before --slurm-time
    --launcher submitit-local  submitit's local executor on this machine: the same jobs and
                               requeue, --max-parallel at a time; waits for them to end
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from wideresnet.errors import ConfigError, RunError
from wideresnet.experiments.expdir import ExperimentDir, job_active, stopped_by_signal
from wideresnet.experiments.plan import PlannedRun
from wideresnet.experiments.runner import POLL_SECONDS, Outcome, log_path, schedule
from wideresnet.extras import require
from wideresnet.train.rundir import LOCK, RunDir, RunState

log = logging.getLogger(__name__)

DEFAULT_MINUTES = 24 * 60


@dataclass(frozen=True)
class ClusterOptions:
    launcher: str  # submitit | submitit-local
    partition: str | None = None
    minutes: int | None = None
    signal_delay: int | None = None  # seconds before the time limit that USR2 comes
    gpus_per_run: int | None = None
    max_parallel: int | None = None
    slurm_options: dict[str, str] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return self.launcher == "submitit-local"


def parse_minutes(text: str | None) -> int | None:
    """--slurm-time: minutes (90), or Slurm's [D-]HH:MM[:SS] (1-12:00:00)."""
    if text is None:
        return None
    try:
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) == 1:
            minutes = parts[0]
        elif len(parts) in (2, 3):
            minutes = parts[0] * 60 + parts[1] + (1 if len(parts) == 3 and parts[2] else 0)
        else:
            raise ValueError
        minutes += int(days) * 24 * 60 if days else 0
    except ValueError:
        raise ConfigError(f"--slurm-time {text!r}: give minutes or [D-]HH:MM:SS") from None
    if minutes < 1:
        raise ConfigError(f"--slurm-time {text!r}: at least one minute")
    return minutes


def parse_slurm_options(items: list[str] | None) -> dict[str, str]:
    """--slurm-option KEY=VALUE (repeatable): sbatch options submitit has no name for."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm-option {item!r}: give KEY=VALUE (e.g. account=myproj)")
        options[key.strip().lstrip("-").replace("-", "_")] = value.strip()
    return options


def _job_id() -> str:
    import submitit

    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # not inside a submitit job (a test calling the job directly)
        return "none"


def _job_environment() -> dict[str, str]:
    """The child's environment: torch's threads as many as the CPUs Slurm gave the job (torch
    would take every core of the node, and jobs sharing a node would slow each other down many
    times over), unless OMP_NUM_THREADS is set already."""
    env = dict(os.environ)
    cpus = env.get("SLURM_CPUS_PER_TASK") or env.get("SLURM_CPUS_ON_NODE")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = cpus
    return env


def _child_signals() -> None:
    """In the training child: USR2 ignored (Slurm's preemption and time-limit signal reaches
    every process of the step; the job process stops the child with SIGTERM), and SIGTERM
    when the job process ends, however it ends (Linux), so a killed job never leaves a run
    training on with nobody to requeue it."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class RunJob:
    """One run as a submitit job: the run's `wrn train` (fresh or --resume, as its directory
    says when the job starts) in a child process, its output appended to EXP_DIR/logs/."""

    def __init__(self, run: PlannedRun, exp_dir: Path) -> None:
        self.run, self.exp_dir = run, exp_dir
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"run": self.run, "exp_dir": self.exp_dir}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _process=None)

    def __call__(self) -> int:
        if self.run.state == RunState.FINISHED:  # requeued after the run had ended: done
            return 0
        args = self.run.args()
        path = log_path(self.exp_dir, self.run)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(path, "a") as out:
            out.write(f"$ wrn {' '.join(args)}   (job {_job_id()})\n")
            out.flush()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "wideresnet", *args],
                env=_job_environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_signals,
            )
            try:
                code = self._process.wait()
            except BaseException:  # Ctrl-C or an exit of the job: the run checkpoints first
                self._stop_child()
                raise
        ExperimentDir(self.exp_dir).record_exit(self.run, code, time.monotonic() - started)
        if code != 0 and not stopped_by_signal(code):
            raise RunError(f"{self.run.tag} seed {self.run.seed}: exit {code}; see {path}")
        return code

    def _stop_child(self) -> None:
        """SIGTERM to the run (it saves a checkpoint), and wait until it has ended. Called from
        a signal handler that interrupted Popen.wait, so it waits with os.waitpid (Popen.wait
        would wait for the lock the interrupted wait holds)."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        try:
            process.send_signal(signal.SIGTERM)
            _, status = os.waitpid(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped already
            pass

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on preemption or time-out: the run saves a checkpoint and stops;
        the job is requeued with a fresh RunJob, which resumes it."""
        import submitit

        self._stop_child()
        return submitit.helpers.DelayedSubmission(RunJob(self.run, self.exp_dir))


# --------------------------------------------------------------------------------------------
# Submitting
# --------------------------------------------------------------------------------------------


def _executor(exp_dir: Path, options: ClusterOptions):
    import submitit

    if not options.local and shutil.which("sbatch") is None:
        raise RunError(
            "--launcher submitit: no Slurm here (sbatch not found); run it on the cluster's "
            "login node, or use --launcher submitit-local to try the sweep on this machine"
        )
    folder = exp_dir / "submitit" / "%j"
    executor = submitit.AutoExecutor(
        folder=folder, cluster="local" if options.local else "slurm", slurm_max_num_timeout=20
    )
    parameters: dict = {"timeout_min": options.minutes or DEFAULT_MINUTES, "name": "wrn"}
    gpus = options.gpus_per_run
    if gpus is None:
        gpus = 0 if options.local and not _has_cuda() else 1
    parameters["gpus_per_node"] = gpus
    if not options.local:
        parameters["slurm_array_parallelism"] = options.max_parallel or 256
        if options.signal_delay is not None:
            parameters["slurm_signal_delay_s"] = options.signal_delay
        if options.partition:
            parameters["slurm_partition"] = options.partition
        if options.slurm_options:
            parameters["slurm_additional_parameters"] = dict(options.slurm_options)
    executor.update_parameters(**parameters)
    return executor


def _refusal(error: str, options: ClusterOptions) -> ConfigError:
    """sbatch's refusal as one line: its own words, and the option that asked for what the
    cluster lacks where that is clear (GPUs on a partition without them)."""
    lines = [line.strip() for line in error.splitlines() if "error" in line.lower()]
    said = lines[-1] if lines else (error.strip().splitlines() or ["no reason given"])[-1]
    said = said[:300]
    said = said[said.find("sbatch:") :] if "sbatch:" in said else said
    where = f"partition {options.partition!r}" if options.partition else "the default partition"
    if "gres" in said.lower() and options.gpus_per_run != 0:
        gpus = options.gpus_per_run or 1
        return ConfigError(
            f"--gpus-per-run {gpus}: {where} has no GPUs to give ({said}); "
            "give --gpus-per-run 0 to run on CPUs, or --slurm-partition NAME of a GPU partition"
        )
    return ConfigError(f"sbatch refused the jobs ({where}): {said}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class Submission:
    submitted: list[tuple[PlannedRun, str]] = field(default_factory=list)
    finished: list[PlannedRun] = field(default_factory=list)
    queued: list[tuple[PlannedRun, str]] = field(default_factory=list)
    skipped_failed: list[PlannedRun] = field(default_factory=list)
    outcome: Outcome | None = None  # submitit-local: how the jobs ended


def to_submit(runs: list[PlannedRun], exp_dir: Path, retry_failed: bool) -> Submission:
    """Which runs need a job now (neither finished, nor running, nor queued)."""
    experiment, plan = ExperimentDir(exp_dir), Submission()
    jobs = experiment.jobs()
    for run in runs:
        state = run.state
        recorded = jobs.get(experiment.key(run))
        if state == RunState.FINISHED:
            plan.finished.append(run)
        elif state == RunState.RUNNING or job_active(recorded):
            plan.queued.append((run, str((recorded or {}).get("job_id", "?"))))
        elif state == RunState.FAILED and not retry_failed:
            plan.skipped_failed.append(run)
        else:
            plan.submitted.append((run, ""))
    return plan


def submit(
    runs: list[PlannedRun], exp_dir: Path, options: ClusterOptions, retry_failed: bool = False
) -> Submission:
    """Submit the runs that need it; with submitit-local, also wait for them to end."""
    require("cluster", f"--launcher {options.launcher}")
    exp_dir = exp_dir.absolute()
    exp_dir.mkdir(parents=True, exist_ok=True)
    plan = to_submit(runs, exp_dir, retry_failed)
    todo = [run for run, _ in plan.submitted]
    plan.submitted = []
    if not todo:
        return plan
    executor = _executor(exp_dir, options)
    if options.local:
        plan.outcome = _run_locally(executor, todo, exp_dir, options, plan)
        return plan
    try:  # submitit prints sbatch's refusal to sys.stderr, then raises it: said once, below
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            jobs = [executor.submit(RunJob(run, exp_dir)) for run in todo]
    except Exception as error:
        raise _refusal(str(error), options) from None
    plan.submitted = [(run, str(job.job_id)) for run, job in zip(todo, jobs)]
    ExperimentDir(exp_dir).record_jobs(plan.submitted, options.launcher)
    return plan


def _run_locally(executor, todo, exp_dir: Path, options: ClusterOptions, plan) -> Outcome:
    """submitit's local executor, --max-parallel jobs at a time (default 1), until all end,
    through the local runner's scheduler."""
    outcome = Outcome()

    def start(run: PlannedRun, slot: int) -> LocalJob:
        job = executor.submit(RunJob(run, exp_dir))
        plan.submitted.append((run, str(job.job_id)))
        ExperimentDir(exp_dir).record_jobs([(run, str(job.job_id))], options.launcher)
        log.info(f"submitted {run.tag} seed {run.seed} as local job {job.job_id}")
        return LocalJob(run, job)

    schedule(todo, options.max_parallel or 1, start, lambda job, left: job.ended(outcome))
    return outcome


@dataclass
class LocalJob:
    """A run in a submitit-local job."""

    run: PlannedRun
    job: object  # submitit's Job
    signalled: bool = False

    def done(self) -> bool:
        return self.job.done()

    def stop(self) -> None:
        """SIGTERM to the job's run: it saves a checkpoint, and its job ends with it. Only a
        process this runner started is signalled (a descendant of it): the pid in a run's lock
        is a record in a file, which may be stale or planted."""
        pid = _lock_holder(self.run)
        if pid and descends_from(pid, os.getpid()):
            try:
                os.kill(pid, signal.SIGTERM)
                self.signalled = True
            except ProcessLookupError:
                pass

    def wait(self) -> None:
        deadline = time.monotonic() + 300  # a checkpoint of the largest model, with room
        while time.monotonic() < deadline and not self.job.done():
            if not self.signalled:  # a run still starting: stopped once it holds its lock
                self.stop()
            time.sleep(POLL_SECONDS)
        if not self.job.done():  # a job whose run never started: its controller is stopped
            self.job.cancel(check=False)

    def ended(self, outcome: Outcome) -> None:
        run, job = self.run, self.job
        state = RunDir(run.run_dir).status()
        if state == RunState.FINISHED:
            outcome.finished += 1
            error = RunDir(run.run_dir).result().test_error
            log.info(f"{run.tag} seed {run.seed}: test error {error:.2f}% (job {job.job_id})")
            return
        try:
            job.result()
            reason = f"ended {state}"
        except Exception as error:  # the job's own error, as submitit returns it
            text = str(error).strip()
            reason = text.splitlines()[-1] if text else type(error).__name__
        else:
            if state == RunState.STOPPED:  # its run was stopped by a signal, and saved
                log.info(f"{run.tag} seed {run.seed}: stopped, checkpoint saved (job {job.job_id})")
                return
        outcome.failed += 1
        log.info(f"{run.tag} seed {run.seed}: FAILED (job {job.job_id}: {reason})")


def descends_from(pid: int, ancestor: int) -> bool:
    """`pid` is a child, grandchild, ... of `ancestor` (Linux's /proc; False elsewhere)."""
    for _ in range(64):  # a process tree is never this deep; a loop guard
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return False
        pid = int(fields[1])  # the parent
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def _lock_holder(run: PlannedRun) -> int | None:
    try:
        text = (run.run_dir / LOCK).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
