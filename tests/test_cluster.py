"""Many runs beyond one process: a table through submitit's own local executor (the Slurm code
path but for the executor) with a real preemption signal and requeue; grid files of one's own
rows; `wrn table status` on an experiment with runs in every state."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli, cli_with, learnable_npz, metrics, one_line_error, parent_pid, wait_for

pytestmark = pytest.mark.spawns  # submitit's jobs and `wrn train` processes

pytest.importorskip("submitit", reason="the cluster extra (pip install 'wideresnet[cluster]')")


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return learnable_npz(tmp_path_factory.mktemp("data") / "d.npz", n_train=96, n_test=16, size=32)


def table_command(npz: Path, out: Path, *more: str) -> list[str]:
    where = ["--dataset", "npz", "--data-dir", str(npz), "--paper-dataset", "cifar10"]
    rows = ["--rows", "16-4,16-4-dropout", "--seeds", "0", "--epochs", "6"]
    train = ["--", "--model", "wrn-10-1", "--batch-size", "16", "--precision", "fp32"]
    train += ["--checkpoint-every", "2"]
    return ["table", "run", "table6", *where, *rows, "--out", str(out), *more, *train]


def runs_of(exp: Path) -> list[Path]:
    return sorted(p.parent for p in exp.rglob("result.json") if "submitit" not in p.parts)


def cells(exp: Path) -> list[dict]:
    report = cli("report", exp, "--format", "json")
    assert report.returncode == 0, report.stderr
    keep = ("id", "median", "min", "max", "runs", "finished", "epochs")
    return [{k: c[k] for k in keep} for c in json.loads(report.stdout)["cells"]]


@pytest.fixture(scope="module")
def local(npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "exp"
    result = cli(*table_command(npz, out))
    assert result.returncode == 0, result.stderr
    return out


def test_a_table_through_submitit_local_with_a_preempted_job_equals_the_local_launcher(
    npz, local, tmp_path
):
    out = tmp_path / "exp"
    command = [sys.executable, "-m", "wideresnet"]
    command += table_command(npz, out, "--launcher", "submitit-local", "--max-parallel", "2")
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    preempted = out / "table6" / "16-4" / "npz-as-cifar10" / "seed0"
    wait_for(preempted / "checkpoint.pt", runner)  # its first mid-epoch checkpoint
    training = int((preempted / ".lock").read_text())
    job = parent_pid(training)  # submitit's process running the job: Slurm's target too
    os.kill(job, signal.SIGUSR2)  # what Slurm sends before a time limit or preemption
    stdout, stderr = runner.communicate(timeout=600)
    assert runner.returncode == 0, stderr
    assert "2 runs finished now, 0 failed" in stdout
    log = (out / "logs" / "table6-16-4-npz-as-cifar10-seed0.log").read_text()
    assert "stopped by SIGTERM; checkpoint saved" in log and "wrn train --resume" in log
    assert len(runs_of(out)) == 2
    for ours, theirs in zip(runs_of(out), runs_of(local)):
        assert metrics(ours, timing=False) == metrics(theirs, timing=False), ours
    assert cells(out) == cells(local)
    jobs = json.loads((out / "jobs.json").read_text())
    assert len(jobs) == 2 and {j["launcher"] for j in jobs.values()} == {"submitit-local"}
    again = cli(*table_command(npz, out, "--launcher", "submitit-local"))
    assert again.returncode == 0, again.stderr
    assert "skipped 2 finished" in again.stdout and "nothing new to submit" in again.stdout
    assert json.loads((out / "jobs.json").read_text()) == jobs  # nothing new submitted


def test_submitit_without_slurm_and_bad_cluster_options_are_one_line(npz, tmp_path):
    out = tmp_path / "exp"
    (tmp_path / "bin").mkdir()  # a PATH without Slurm's commands, wherever they are installed
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    alone = {"PATH": str(tmp_path / "bin")}
    line = one_line_error(cli(*table_command(npz, out, "--launcher", "submitit"), env=alone))
    assert "no Slurm here" in line and "submitit-local" in line
    for option, value, message in (
        ("--slurm-time", "soon", "--slurm-time 'soon'"),
        ("--slurm-option", "account", "--slurm-option 'account'"),
        ("--max-parallel", "0", "--max-parallel 0"),
    ):
        line = one_line_error(
            cli(*table_command(npz, out, "--launcher", "submitit-local", option, value))
        )
        assert message in line, line
    assert not list(out.rglob("config.json"))


# --------------------------------------------------------------------------------------------
# Grid files: your own rows, run and reported as the paper's tables are
# --------------------------------------------------------------------------------------------

GRID = """
name = "lr-grid"
title = "WRN-10-1 at three learning rates"
seeds = [0]
datasets = ["cifar10"]

[base]
model = "wrn-10-1"
epochs = 2
milestones = [2]
batch_size = 16
precision = "fp32"

[[rows]]
id = "lr-0.1"
lr = 0.1
published = { cifar10 = 40.0 }

[[rows]]
id = "lr-0.05"
lr = 0.05

[[rows]]
id = "wide"
lr = 0.05
model = "wrn-10-2"
published = { cifar10 = 30.0 }
"""


def test_a_grid_of_three_rows_runs_and_reports_beside_its_numbers(npz, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    shown = cli("table", "show", grid, "--json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)["rows"]
    assert [(r["id"], r["model"], r["paper"]["cifar10"]) for r in rows] == [
        ("lr-0.1", "wrn-10-1", 40.0),
        ("lr-0.05", "wrn-10-1", None),
        ("wide", "wrn-10-2", 30.0),
    ]
    out = tmp_path / "exp"
    where = ["--dataset", "npz", "--data-dir", npz, "--paper-dataset", "cifar10"]
    result = cli("table", "run", grid, *where, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "tables" / "lr-grid.toml").read_text() == GRID
    report = json.loads(cli("report", out, "--format", "json").stdout)["cells"]
    assert [(c["table"], c["id"], c["paper"], c["runs"]) for c in report] == [
        ("lr-grid", "lr-0.1", 40.0, 1),
        ("lr-grid", "lr-0.05", None, 1),
        ("lr-grid", "wide", 30.0, 1),
    ]
    for cell in report:
        run = out / "lr-grid" / cell["id"] / "npz-as-cifar10" / "seed0"
        config = json.loads((run / "config.json").read_text())
        assert cell["median"] == metrics(run)[-1]["test_error"] and config["epochs"] == 2
        assert config["lr"] == {"lr-0.1": 0.1}.get(cell["id"], 0.05)
    assert (
        json.loads((out / "lr-grid/wide/npz-as-cifar10/seed0/config.json").read_text())["model"]
        == "wrn-10-2"
    )
    ledger = tmp_path / "results" / "grid"
    assert cli("table", "save", out, "--to", ledger).returncode == 0
    assert cli("report", ledger).stdout == cli("report", out).stdout


def test_a_run_made_under_other_row_options_is_not_taken_as_the_rows(npz, tmp_path):
    """The grid's row changed after its run finished: the old run would stand for the new row,
    so the run is refused, naming the run and the option."""
    grid, out = tmp_path / "grid.toml", tmp_path / "exp"
    grid.write_text(GRID)
    where = ["--dataset", "npz", "--data-dir", npz, "--paper-dataset", "cifar10", "--out", out]
    assert cli("table", "run", grid, *where, "--rows", "lr-0.1").returncode == 0
    grid.write_text(GRID.replace("lr = 0.1\n", "lr = 0.01\n", 1))
    line = one_line_error(cli("table", "run", grid, *where, "--rows", "lr-0.1"))
    assert "lr-grid/lr-0.1/npz-as-cifar10/seed0 was made with lr=0.1 (the row now: 0.01)" in line
    again = cli("table", "run", grid, *where, "--rows", "lr-0.1", "--", "--device", "cpu")
    assert again.returncode == 2  # the train options after -- do not decide it; the row does
    grid.write_text(GRID)
    same = cli("table", "run", grid, *where, "--rows", "lr-0.1", "--", "--device", "cpu")
    assert same.returncode == 0 and "skipped" in same.stdout


def test_a_grid_says_the_column_its_data_fills_and_its_paths_are_the_files(npz, tmp_path):
    """Data of the user's own fills a grid's one column without --paper-dataset; with two
    columns, the message names the grid's. init_from is a row option like any other, a path
    relative to the grid file, which must exist before any run starts."""
    folder = tmp_path / "grids"
    (folder / "start").mkdir(parents=True)
    grid = folder / "grid.toml"
    grid.write_text(GRID.replace('id = "wide"', 'id = "wide"\ninit_from = "start"'))
    assert cli("table", "show", grid).returncode == 0
    where = ["--dataset", "npz", "--data-dir", npz, "--out", tmp_path / "exp", "--print-commands"]
    printed = cli("table", "run", grid, *where)
    assert printed.returncode == 0, printed.stderr
    commands = [shlex.split(line) for line in printed.stdout.splitlines()]
    assert len(commands) == 3 and all("npz-as-cifar10" in c[-1] for c in commands)
    starts = [c[c.index("--init-from") + 1] for c in commands if "--init-from" in c]
    assert starts == [str(folder / "start")]
    (folder / "start").rmdir()
    line = one_line_error(cli("table", "run", grid, *where))
    assert "lr-grid row wide: init_from" in line and "no such run directory" in line
    grid.write_text(GRID.replace('datasets = ["cifar10"]', 'datasets = ["cifar10", "cifar100"]'))
    line = one_line_error(cli("table", "run", grid, *where))
    assert "which of the grid's datasets (cifar10, cifar100)" in line
    assert "--paper-dataset cifar10|cifar100" in line


def test_two_grids_of_one_name_in_one_report_are_said_and_not_mixed(npz, tmp_path):
    """Each report reads the grids it holds (none are remembered between reports); two grids
    of one name under one folder: the second is named in a warning, not merged."""
    where = ["--dataset", "npz", "--data-dir", npz, "--paper-dataset", "cifar10"]
    other = GRID.replace('id = "lr-0.05"', 'id = "lr-0.02"').replace(
        "lr = 0.05\n", "lr = 0.02\n", 1
    )
    for name, text in (("a", GRID), ("b", other)):
        (tmp_path / f"{name}.toml").write_text(text)
        out = tmp_path / "both" / name
        ran = cli(
            "table", "run", tmp_path / f"{name}.toml", *where, "--rows", "lr-0.1", "--out", out
        )
        assert ran.returncode == 0, ran.stderr
    alone = json.loads(cli("report", tmp_path / "both" / "b", "--format", "json").stdout)
    assert [c["id"] for c in alone["cells"]] == ["lr-0.1"]
    both = cli("report", tmp_path / "both", "--format", "json")
    assert both.returncode == 0, both.stderr
    assert "a second grid named 'lr-grid'" in both.stderr and "reported by the first" in both.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ("lr = 0.05\n", "lrr = 0.05\n"),
            "row 'lr-0.05': unknown option 'lrr'; did you mean 'lr'?",
        ),
        (('id = "wide"', 'id = "lr-0.1"'), "row 'lr-0.1': a second row with this id"),
        (("seeds = [0]\n", ""), "no seeds"),
        (("seeds = [0]", "seeds = [-1]"), "seeds [-1]"),
        (('model = "wrn-10-2"', 'model = "wrn-11-2"'), "row 'wide': "),
        (("[base]", "[bsae]"), "unknown key 'bsae'"),
        (("published = { cifar10 = 30.0 }", "published = { svhn = 3.0 }"), "published 'svhn'"),
        (('datasets = ["cifar10"]', 'datasets = ["mnist"]'), "'mnist' is not a column"),
        (("lr = 0.1\n", "lr = 0.1\ndataset = 'svhn'\n"), "option 'dataset' is set by"),
        (("[[rows]]", "[[rows]"), "not valid TOML"),
    ],
    ids=[
        "unknown-option",
        "duplicate-id",
        "missing-seeds",
        "bad-seeds",
        "bad-model",
        "unknown-key",
        "published-column",
        "unknown-dataset",
        "reserved",
        "toml",
    ],
)
def test_a_malformed_grid_is_one_line_naming_the_row_and_option(npz, tmp_path, change, message):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace(*change, 1))
    for command in (["table", "show", grid], ["table", "run", grid, "--out", tmp_path / "exp"]):
        line = one_line_error(cli(*command))
        assert str(grid) in line and message in line, line
    assert not (tmp_path / "exp").exists()


# --------------------------------------------------------------------------------------------
# wrn table status
# --------------------------------------------------------------------------------------------


def test_status_lists_finished_running_stopped_failed_and_new_runs(npz, tmp_path):
    rows = "".join(f'\n[[rows]]\nid = "r{i}"\nlr = 0.0{i + 1}\n' for i in range(5))
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.split("[[rows]]")[0].replace("epochs = 2", "epochs = 3") + rows)
    out = tmp_path / "exp"
    where = ["--dataset", "npz", "--data-dir", npz, "--paper-dataset", "cifar10"]
    printed = cli("table", "run", grid, *where, "--out", out, "--print-commands")
    commands = {
        line.split("/lr-grid/")[1].split("/")[0]: shlex.split(line)[1:]
        for line in printed.stdout.splitlines()
    }
    assert cli(*commands["r0"]).returncode == 0  # finished
    assert cli_with("sigterm", 8, *commands["r1"]).returncode == 143  # stopped in epoch 2
    assert cli_with("nan", 2, *commands["r2"]).returncode == 1  # failed (non-finite loss)
    longer = [*commands["r3"], "--epochs", "400", "--checkpoint-every", "1"]
    running = subprocess.Popen(
        [sys.executable, "-m", "wideresnet", *longer],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run3 = out / "lr-grid" / "r3" / "npz-as-cifar10" / "seed0"
        while len(metrics(run3) if (run3 / "metrics.jsonl").exists() else []) < 1:
            assert running.poll() is None
            time.sleep(0.1)
        status = cli("table", "status", out, "--json")
        text = cli("table", "status", out)
    finally:
        running.kill()
        running.wait()
    assert status.returncode == 0 and text.returncode == 0, status.stderr
    runs = {Path(r["path"]).parts[1]: r for r in json.loads(status.stdout)["runs"]}
    states = {row: run["state"] for row, run in runs.items()}
    assert states == {
        "r0": "finished",
        "r1": "stopped",
        "r2": "failed",
        "r3": "running",
        "r4": "new",
    }
    assert runs["r0"]["epoch"] == 3 and runs["r0"]["epochs"] == 3
    assert (
        runs["r0"]["test_error"]
        == metrics(out / "lr-grid/r0/npz-as-cifar10/seed0")[-1]["test_error"]
    )
    assert runs["r1"]["epoch"] == 1 and runs["r1"]["epochs"] == 3
    assert "non-finite" in runs["r2"]["error"]
    assert runs["r3"]["epochs"] == 400 and runs["r3"]["eta_seconds"] > 0
    assert runs["r4"]["epoch"] == 0 and runs["r4"]["test_error"] is None
    totals = json.loads(status.stdout)["totals"]
    assert totals == {"finished": 1, "running": 1, "queued": 0, "stopped": 1, "failed": 1, "new": 1}
    lines = text.stdout.splitlines()
    assert lines[0].endswith("5 runs: 1 finished, 1 running, 0 queued, 1 stopped, 1 failed, 1 new")
    by_row = {line.split("/")[1]: line for line in lines[1:]}
    assert "finished" in by_row["r0"] and "3/3" in by_row["r0"] and "test error" in by_row["r0"]
    assert "running" in by_row["r3"] and "ETA" in by_row["r3"]
    assert "failed" in by_row["r2"] and "non-finite" in by_row["r2"]
    assert " new " in by_row["r4"] + " " and "stopped" in by_row["r1"]


def test_status_of_a_folder_with_no_runs_is_one_line(tmp_path):
    line = one_line_error(cli("table", "status", tmp_path))
    assert "no runs here" in line
    line = one_line_error(cli("table", "status", tmp_path / "missing"))
    assert "no such experiment folder" in line


def test_a_stopped_submitit_local_runner_signals_its_runs(npz, tmp_path):
    """SIGTERM to the runner: the running run (a process it started) saves a checkpoint."""
    out = tmp_path / "exp"
    command = [sys.executable, "-m", "wideresnet"]
    command += table_command(npz, out, "--launcher", "submitit-local", "--max-parallel", "1")
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "table6" / "16-4" / "npz-as-cifar10" / "seed0"
    wait_for(first / "checkpoint.pt", runner)
    runner.send_signal(signal.SIGTERM)
    _, stderr = runner.communicate(timeout=300)
    assert runner.returncode == 143, stderr
    log = (out / "logs" / "table6-16-4-npz-as-cifar10-seed0.log").read_text()
    assert "stopped by SIGTERM; checkpoint saved" in log
    early = tmp_path / "early"  # stopped while its first run still starts: stopped all the same
    command[command.index(str(out))] = str(early)
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(early / "jobs.json", runner)
    runner.send_signal(signal.SIGTERM)
    _, stderr = runner.communicate(timeout=300)
    assert runner.returncode == 143, stderr
    assert not list(early.rglob("result.json"))  # not trained on to the end


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's may stay one in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_a_pid_planted_in_a_runs_lock_is_never_signalled(tmp_path):
    from types import SimpleNamespace

    from wideresnet.experiments.cluster import LocalJob

    # an unrelated process: started by a shell that exits at once, so not one of ours
    shell = subprocess.run(["sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"], capture_output=True)
    stranger = int(shell.stdout)
    child = subprocess.Popen(["sleep", "120"])  # one this process started
    try:
        planted, ours = tmp_path / "planted", tmp_path / "ours"
        for run_dir, pid in ((planted, stranger), (ours, child.pid)):
            run_dir.mkdir()
            (run_dir / ".lock").write_text(str(pid))
        LocalJob(SimpleNamespace(run_dir=planted), job=None).stop()
        time.sleep(0.5)  # a signalled sleep would be gone (or a zombie) by now
        assert running(stranger)  # never signalled
        LocalJob(SimpleNamespace(run_dir=ours), job=None).stop()
        assert child.wait(10) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()
        os.kill(stranger, signal.SIGKILL)
