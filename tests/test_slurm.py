"""`wrn table run --launcher submitit` on a real Slurm: a one-node cluster (Debian's slurm-wlm
and munge, started by tests/slurm/start.sh for this session, without accounting, as many small
clusters run), preemption and a time limit as Slurm signals them (USR2 to every process of
the job step), the requeued job's wait, and sbatch's refusals.

Skipped where Slurm's packages are not installed (`apt-get install -y slurm-wlm munge`);
in CI (CI=true), where .ci/run installs them, a skip is an error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import cli, learnable_npz, metrics, one_line_error

pytestmark = [pytest.mark.spawns, pytest.mark.timeout(1200)]  # Slurm's own waits

pytest.importorskip("submitit", reason="the cluster extra (pip install 'wideresnet[cluster]')")

START = Path(__file__).parent / "slurm" / "start.sh"
PACED = Path(__file__).parent / "slurm" / "paced"  # a sitecustomize.py that slows each step
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a one-node Slurm that lives as long as this module's tests."""
    missing = [tool for tool in DAEMONS if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Slurm tests, but {missing} are not installed")
        pytest.skip(f"no Slurm here ({', '.join(missing)}): apt-get install -y slurm-wlm munge")
    folder = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([START, folder], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().split("=", 1)[1]
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True)
        subprocess.run([START, folder, "stop"], capture_output=True)
        os.environ.pop("SLURM_CONF", None)


def paced(seconds: float) -> dict[str, str]:
    """The environment of a submission whose jobs' training steps each sleep `seconds` first
    (tests/slurm/paced: the jobs inherit it): a run lasts as long as a test needs it to without
    keeping a core busy; its numbers are the unpaced run's."""
    path = [str(PACED), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path), "WRN_TEST_STEP_SLEEP": str(seconds)}


def slurm_state(job: str) -> str:
    """squeue's state and reason of a job ("" once it has left the queue)."""
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True)
    return out.stdout.decode().strip()


def release_when_requeued(job: str) -> None:
    """Slurm holds a requeued job for two minutes (BeginTime) before it may start again; the
    tests have it start at once, as an administrator can."""
    if "BeginTime" in slurm_state(job):
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def until(condition, seconds: float, what: str, every=None):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what}: not after {seconds} s"
        if every:
            every()
        time.sleep(0.2)
    return found


def status(exp: Path) -> dict[str, dict]:
    result = cli("table", "status", exp, "--json")
    assert result.returncode == 0, result.stderr
    return {run["path"]: run for run in json.loads(result.stdout)["runs"]}


GRID = """
name = "slurm-grid"
seeds = [0]
datasets = ["cifar10"]

[base]
model = "wrn-10-1"
epochs = 2
milestones = [1]
batch_size = 8
precision = "fp32"

[[rows]]
id = "lr-0.1"
lr = 0.1

[[rows]]
id = "lr-0.05"
lr = 0.05
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    npz = learnable_npz(folder / "d.npz", n_train=160, n_test=16, size=32)
    (folder / "grid.toml").write_text(GRID)
    return folder / "grid.toml", npz


def run_grid(grid, out: Path, *more, env=None) -> subprocess.CompletedProcess:
    path, npz = grid
    where = ["--dataset", "npz", "--data-dir", npz, "--paper-dataset", "cifar10"]
    return cli("table", "run", path, *where, "--out", out, *more, env=env)


def jobs_of(exp: Path) -> dict[str, str]:
    return {k: v["job_id"] for k, v in json.loads((exp / "jobs.json").read_text()).items()}


def runs_of(exp: Path) -> list[Path]:
    return sorted(p.parent for p in exp.rglob("result.json") if "submitit" not in p.parts)


def test_a_grid_on_slurm_with_a_preempted_job_equals_the_local_launcher(slurm, grid, tmp_path):
    """scancel --signal=USR2 in the middle of the last epoch (two rows, one seed, two epochs
    with the learning rate's step between them): the run saves where it was, `wrn table
    status` says queued (with the job id) while Slurm holds the requeued job, and the resumed
    run ends equal to the uninterrupted run of the local launcher, with nothing replaced."""
    out = tmp_path / "slurm"
    # epochs of 20 steps of 0.15 s and more: the signal lands in the middle of the second
    on_slurm = ["--launcher", "submitit", "--gpus-per-run", "0"]
    submitted = run_grid(grid, out, *on_slurm, env=paced(0.15))
    assert submitted.returncode == 0, submitted.stderr
    assert "2 runs submitted" in submitted.stdout
    key = "slurm-grid/lr-0.1/npz-as-cifar10/seed0"
    job = jobs_of(out)[key]
    run = out / key
    until(lambda: (run / "metrics.jsonl").exists() and metrics(run), 300, "the first epoch")
    time.sleep(0.6)  # a few of the second epoch's 20 steps (3 s) done: a signal mid-epoch
    # Slurm 22.05 signals a running task of an array with pending tasks, then answers "try
    # again later" and scancel retries for minutes: the signal's effect is what is awaited
    scancel = subprocess.Popen(["scancel", "--signal=USR2", job], stderr=subprocess.DEVNULL)
    until(lambda: slurm_state(job).startswith("PENDING"), 120, "the requeued job")
    scancel.kill()
    scancel.wait()
    subprocess.run(["scontrol", "hold", job], check=True)
    seen = status(out)[key]
    assert (seen["state"], seen["job_id"], seen["epoch"]) == ("queued", job, 1)
    subprocess.run(["scontrol", "release", job], check=True)
    until(
        lambda: len(runs_of(out)) == 2, 600, "both runs", every=lambda: release_when_requeued(job)
    )
    log = (out / "logs" / "slurm-grid-lr-0.1-npz-as-cifar10-seed0.log").read_text()
    assert "stopped by SIGTERM; checkpoint saved" in log
    assert f"wrn train --resume {run}" in log
    resumed = re.search(r"resuming \S+ at epoch (\d+) step (\d+)", log)
    assert resumed and resumed.group(1) == "2" and int(resumed.group(2)) > 0, log  # mid-epoch
    assert not list(out.rglob(".replaced-*"))

    local = tmp_path / "local"
    # one thread, as each Slurm job of one CPU runs: a sum split over other threads may round
    # otherwise
    assert run_grid(grid, local, env={"OMP_NUM_THREADS": "1"}).returncode == 0
    assert [p.relative_to(out) for p in runs_of(out)] == [
        p.relative_to(local) for p in runs_of(local)
    ]
    for ours, theirs in zip(runs_of(out), runs_of(local)):
        assert metrics(ours, timing=False) == metrics(theirs, timing=False), ours
    assert {k: v["state"] for k, v in status(out).items()} == dict.fromkeys(status(out), "finished")
    again = run_grid(grid, out, *on_slurm)
    assert "skipped 2 finished" in again.stdout and "nothing new to submit" in again.stdout


def test_a_run_longer_than_its_time_limit_is_requeued_and_finishes(slurm, tmp_path):
    """--slurm-time 1 with USR2 15 s before it: Slurm checks time limits every 30 s and
    signals a job once its end is within the delay plus 30 s, so at 15-45 s of a run that
    lasts about a minute (each step paced by a sleep: tests/slurm/paced); the run saves, the
    job is requeued (as often as the limit needs) and the run finishes."""
    npz = learnable_npz(tmp_path / "d.npz", n_train=320, n_test=16, size=32)
    out = tmp_path / "exp"
    where = ["--dataset", "npz", "--data-dir", npz, "--paper-dataset", "cifar10"]
    rows = ["--rows", "16-4", "--seeds", "0", "--epochs", "12", "--out", out]
    cluster = ["--launcher", "submitit", "--gpus-per-run", "0", "--slurm-time", "1"]
    cluster += ["--slurm-signal-delay", "15"]
    train = ["--", "--model", "wrn-10-1", "--batch-size", "8", "--precision", "fp32"]
    # 480 steps of 0.12 s and more: about a minute
    submitted = cli("table", "run", "table6", *where, *rows, *cluster, *train, env=paced(0.12))
    assert submitted.returncode == 0, submitted.stderr
    ((key, job),) = jobs_of(out).items()
    run = out / key
    until(
        lambda: (run / "result.json").exists(),
        900,
        "the run's end",
        every=lambda: release_when_requeued(job),
    )
    log = (out / "logs" / "table6-16-4-npz-as-cifar10-seed0.log").read_text()
    assert "stopped by SIGTERM; checkpoint saved" in log, log
    assert f"wrn train --resume {run}" in log
    assert len(metrics(run)) == 12 and not list(out.rglob(".replaced-*"))
    script = next((out / "submitit").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@15" in script and "#SBATCH --time=1" in script


def test_sbatch_refusals_are_one_line(slurm, grid, tmp_path):
    """The default --gpus-per-run 1 on a partition without GPUs names the option and what the
    cluster lacks; any other refusal of sbatch is one line too (exit 2, never 70)."""
    line = one_line_error(run_grid(grid, tmp_path / "a", "--launcher", "submitit"))
    assert line.startswith("wrn: error: --gpus-per-run 1: the default partition has no GPUs")
    assert "--gpus-per-run 0" in line and "Invalid generic resource" in line
    refused = run_grid(
        grid,
        tmp_path / "b",
        "--launcher",
        "submitit",
        "--gpus-per-run",
        "0",
        "--slurm-partition",
        "nowhere",
    )
    line = one_line_error(refused)
    assert "sbatch refused the jobs (partition 'nowhere')" in line and "partition" in line
    assert not (tmp_path / "b" / "jobs.json").exists()
    early = run_grid(
        grid,
        tmp_path / "c",
        "--launcher",
        "submitit",
        "--slurm-time",
        "1",
        "--slurm-signal-delay",
        "60",
    )
    assert "--slurm-signal-delay 60: not shorter than the time limit" in one_line_error(early)
