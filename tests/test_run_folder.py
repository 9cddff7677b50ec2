"""Nothing lost in a run folder: one writer at a time (its lock, a link or a folder in its
place, a killed holder), --overwrite that checks first and keeps the old run until the new one
checkpoints, full disks (a real small tmpfs, else a real file-size limit), paths stored
absolute, and two table runs sharing one experiment. Real concurrent processes and SIGKILLs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    authors_params,
    cli,
    cli_with,
    copy_run,
    files_of,
    learnable_npz,
    leftovers,
    metrics,
    one_line_error,
    spawn,
    train_argv,
    wait_for,
    with_file_size_limit,
    wrn,
    wrn_with,
)

from wideresnet import create_model
from wideresnet.train.checkpoint import load_checkpoint

# --------------------------------------------------------------------------------------------
# One writer per run folder: its lock
# --------------------------------------------------------------------------------------------


@pytest.mark.spawns
def test_a_second_writer_is_refused_while_a_run_goes_on(npz, tmp_path):
    out = tmp_path / "run"
    first = spawn(*train_argv(npz, out, epochs=200))
    wait_for(out / "checkpoint.pt", first)
    pid = str(first.pid)
    line = one_line_error(cli(*train_argv(npz, out, "--overwrite")))
    assert "in use by another wrn process" in line and pid in line
    line = one_line_error(cli("train", "--resume", out))
    assert "in use by another wrn process" in line
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 143
    assert json.loads((out / "config.json").read_text())["epochs"] == 200  # run A's, untouched
    assert load_checkpoint(out / "checkpoint.pt").config["epochs"] == 200


@pytest.mark.spawns
def test_the_lock_of_a_killed_run_is_taken_over_and_said_so(npz, tmp_path, finished):
    out = tmp_path / "run"
    first = spawn(*train_argv(npz, out, "--checkpoint-every", "2"))
    wait_for(out / "checkpoint.pt", first)
    first.kill()  # SIGKILL: no chance to clean up
    first.wait()
    resumed = cli("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over {out / '.lock'} from pid {first.pid}" in resumed.stderr
    assert metrics(out, timing=False) == metrics(finished, timing=False)


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious victim text")
    (run / ".lock").symlink_to(victim)
    line = one_line_error(cli("train", "--resume", run))
    assert f"{run / '.lock'} is a symlink" in line
    assert victim.read_text() == "precious victim text"


def test_records_that_are_symlinks_are_replaced_never_written_through(npz, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    victims = {}
    for name in ("metrics.jsonl", "result.json"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text(f"victim {name}")
        (run / name).unlink()
        (run / name).symlink_to(victims[name])
    resumed = cli("train", "--resume", run)  # result.json unreadable: the run is resumed
    assert resumed.returncode == 0, resumed.stderr
    assert all(v.read_text() == f"victim {n}" for n, v in victims.items())
    assert not (run / "metrics.jsonl").is_symlink() and not (run / "result.json").is_symlink()


def test_a_lock_that_is_a_directory_is_one_line(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / ".lock").mkdir()
    line = one_line_error(cli("train", "--resume", run))
    assert f"{run / '.lock'} is a directory" in line


@pytest.mark.spawns
def test_a_read_only_run_folder_is_one_line(finished, small_fs):
    fs = small_fs(4 << 20)
    run = fs.path / "run"
    shutil.copytree(finished, run)
    (run / "result.json").unlink()  # a stopped run, to resume
    fs.read_only()
    line = one_line_error(wrn("train", "--resume", run), code=1)
    assert f"cannot write {run / '.lock'}" in line and "Read-only file system" in line
    fs.resize(4 << 20)


@pytest.mark.spawns
def test_a_disk_already_full_at_start_is_one_line_naming_the_lock(npz, small_fs):
    fs = small_fs(4 << 20)
    fs.fill()
    out = fs.path / "run"
    line = one_line_error(wrn(*train_argv(npz, out, epochs=1)), code=1)
    assert str(out) in line and "No space left on device" in line
    (fs.path / "filler").unlink()
    assert wrn(*train_argv(npz, out, epochs=1)).returncode == 0  # no --overwrite needed


# --------------------------------------------------------------------------------------------
# --overwrite: checked first, the old run kept until the new one checkpoints, a killed one undone
# --------------------------------------------------------------------------------------------


def test_overwrite_with_a_bad_option_leaves_the_old_run_intact(npz, finished, tmp_path):
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    line = one_line_error(cli(*train_argv(tmp_path / "typo.npz", finished, "--overwrite")))
    assert "typo.npz" in line
    line = one_line_error(cli(*train_argv(npz, finished, "--overwrite", "--model", "wrn-11-1")))
    assert "wrn-11-1" in line
    after = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    assert after == before


def test_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(npz, tmp_path):
    out = tmp_path / "run"
    assert cli(*train_argv(npz, out, epochs=1)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    failed = cli_with("nan", 2, *train_argv(npz, out, "--overwrite", "--lr", "0.01"))
    assert failed.returncode == 1 and "no good checkpoint was saved yet" in failed.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
    assert not [p for p in out.iterdir() if p.name.startswith(".replaced")]
    replaced = cli(*train_argv(npz, out, "--overwrite", "--lr", "0.01", epochs=1))
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "config.json").read_text())["lr"] == 0.01
    assert not [p for p in out.iterdir() if p.name.startswith(".replaced")]


@pytest.mark.spawns
def test_a_killed_overwrite_leaves_the_old_run_named_and_resume_restores_it(
    npz, finished, tmp_path
):
    run = copy_run(finished, tmp_path / "run")
    before = files_of(run)
    killed = wrn_with("sigkill", 2, *train_argv(npz, run, "--overwrite", "--lr", "0.01", epochs=1))
    assert killed.returncode == -9, killed.stderr
    aside = [p for p in run.iterdir() if p.name.startswith(".replaced-")]
    assert len(aside) == 1 and files_of(aside[0]) == before
    line = one_line_error(cli("eval", run))
    assert aside[0].name in line and "--resume" in line
    line = one_line_error(cli(*train_argv(npz, run, epochs=1)))
    assert "not empty" in line
    resumed = cli("train", "--resume", run)  # the old run is finished: put back, nothing to do
    assert resumed.returncode == 0, resumed.stderr
    assert "is back" in resumed.stderr
    restored = files_of(run)
    assert restored.pop("result.json") and restored == {
        k: v for k, v in before.items() if k != "result.json"
    }
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced-")]
    assert "test error" in cli("eval", run).stdout


@pytest.mark.spawns
def test_a_later_overwrite_that_saves_removes_what_a_killed_one_left(npz, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    killed = wrn_with("sigkill", 2, *train_argv(npz, run, "--overwrite", epochs=1))
    assert killed.returncode == -9
    done = cli(*train_argv(npz, run, "--overwrite", "--lr", "0.02", epochs=1))
    assert done.returncode == 0, done.stderr
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced-")]
    assert json.loads((run / "config.json").read_text())["lr"] == 0.02


@pytest.mark.spawns
def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_write(npz, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "result.json").unlink()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = [
        run / f".checkpoint.pt.{dead}.abcdefgh.tmp",
        run / ".checkpoint.pt.k2x9q1zz.tmp",  # the name 0.2 gave them (no pid)
        run / f".metrics.jsonl.{dead}.qwertyui.tmp",
    ]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    mine = run / f".checkpoint.pt.{os.getpid()}.livewrit.tmp"  # a live writer's: kept
    mine.write_bytes(b"x")
    resumed = cli("train", "--resume", run, "--epochs", "4", "--milestones", "2,3")
    assert resumed.returncode == 0, resumed.stderr
    assert [p for p in stale if p.exists()] == []
    assert mine.exists()


# --------------------------------------------------------------------------------------------
# Full disks: a real small file system, else a real file-size limit
# --------------------------------------------------------------------------------------------


def test_disk_full_during_a_checkpoint_keeps_the_previous_and_resume_finishes(
    npz, finished, small_fs
):
    size = (finished / "checkpoint.pt").stat().st_size
    fs = small_fs(int(2.5 * size) // 4096 * 4096)  # room for two checkpoints, not three
    out = fs.path / "run"
    failed = cli(*train_argv(npz, out))
    line = one_line_error(failed, code=1)
    assert f"cannot write {out / 'checkpoint.pt'}" in line and "No space left on device" in line
    assert "MiB free" in line
    assert leftovers(fs.path) == []
    kept = load_checkpoint(out / "checkpoint.pt")  # verifies: not torn
    assert (
        kept.epochs_trained == 2 and load_checkpoint(out / "checkpoint.prev.pt").epochs_trained == 1
    )
    fs.resize(16 << 20)  # space again
    resumed = cli("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(out, timing=False) == metrics(finished, timing=False)


def test_disk_full_before_config_json_is_one_line_and_leaves_nothing(npz, small_fs):
    fs = small_fs(64 << 10)
    (fs.path / "filler").write_bytes(b"\0" * ((64 << 10) - 4096))
    out = fs.path / "run"
    line = one_line_error(cli(*train_argv(npz, out)), code=1)
    assert f"cannot write {out / 'config.json'}" in line
    assert leftovers(fs.path) == [] and not (out / "config.json").exists()


@pytest.mark.spawns
def test_a_file_size_limit_during_a_checkpoint_is_one_line(npz, tmp_path, finished):
    out = tmp_path / "run"
    limit = (finished / "checkpoint.pt").stat().st_size // 2
    result = wrn(*train_argv(npz, out), preexec_fn=with_file_size_limit(limit))
    line = one_line_error(result, code=1)
    assert f"cannot write {out / 'checkpoint.pt'}: File too large" in line
    assert leftovers(out) == [] and not (out / "checkpoint.pt").exists()


def test_import_official_on_a_full_disk_and_over_an_existing_file(tmp_path, small_fs):
    source = tmp_path / "model.pt7"
    torch.save({"params": authors_params(create_model("wrn-16-2", 10))}, source)
    fs = small_fs(256 << 10)
    line = one_line_error(cli("import-official", source, "--out", fs.path / "ours.pt"), code=1)
    assert "cannot write" in line and "ours.pt" in line
    assert list(fs.path.iterdir()) == []
    existing = tmp_path / "ours.pt"
    existing.write_bytes(b"keep me")
    line = one_line_error(cli("import-official", source, "--out", existing))
    assert "exists" in line and "--overwrite" in line
    assert existing.read_bytes() == b"keep me"
    assert cli("import-official", source, "--out", existing, "--overwrite").returncode == 0


@pytest.mark.exports
def test_onnx_export_to_a_full_disk_is_one_line_and_leaves_nothing(finished, small_fs):
    fs = small_fs(128 << 10)
    fs.fill()
    out = fs.path / "m.onnx"
    line = one_line_error(cli("export", finished, "--format", "onnx", "--out", out), code=1)
    assert f"cannot write {out}" in line and "No space left on device" in line
    assert sorted(p.name for p in fs.path.iterdir()) == ["filler"]


# --------------------------------------------------------------------------------------------
# Paths: stored absolute; a moved dataset named again on resume
# --------------------------------------------------------------------------------------------


def test_a_relative_data_dir_is_stored_absolute_and_resumes_from_anywhere(npz, tmp_path, finished):
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.npz").write_bytes(npz.read_bytes())
    relative = cli(*train_argv(Path("tiny.npz"), Path("run"), epochs=1), cwd=work)
    assert relative.returncode == 0, relative.stderr
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["data_dir"] == str(work / "tiny.npz")
    elsewhere = cli("train", "--resume", work / "run", "--epochs", "2", cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr


def test_a_moved_dataset_is_accepted_on_resume_when_it_is_the_same_data(npz, tmp_path, finished):
    out = tmp_path / "run"
    assert cli_with("sigterm", 9, *train_argv(npz, out)).returncode == 143
    moved = tmp_path / "moved" / "data.npz"
    moved.parent.mkdir()
    moved.write_bytes(npz.read_bytes())
    other = learnable_npz(tmp_path / "other.npz", seed=9)
    line = one_line_error(cli("train", "--resume", out, "--data-dir", other))
    assert "not the data this run trained on" in line
    resumed = cli("train", "--resume", out, "--data-dir", moved)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(out, timing=False) == metrics(finished, timing=False)
    result = json.loads((out / "result.json").read_text())
    assert [c["key"] for c in result["config_changes"]] == ["data_dir"]
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(moved)


# --------------------------------------------------------------------------------------------
# Two table runs into one experiment
# --------------------------------------------------------------------------------------------


@pytest.mark.spawns
def test_two_table_runs_at_once_share_the_work_and_neither_fails(tmp_path):
    data = learnable_npz(tmp_path / "d.npz", n_train=64, n_test=16, size=32)
    out = tmp_path / "exp"
    command = [sys.executable, "-m", "wideresnet", "table", "run", "table6", "--dataset", "npz"]
    command += ["--data-dir", str(data), "--paper-dataset", "cifar10", "--rows"]
    command += ["16-4,16-4-dropout", "--seeds", "0,1", "--epochs", "2", "--out", str(out), "--"]
    command += "--model wrn-10-1 --batch-size 16 --precision fp32".split()
    runners = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [r.communicate(timeout=600) for r in runners]
    for runner, (stdout, stderr) in zip(runners, outputs):
        assert runner.returncode == 0, stderr
        assert "failed" not in stdout.replace("0 failed", "")
    results = sorted(out.rglob("result.json"))
    assert len(results) == 4
    finished_now = sum(int(o.split(" runs finished now")[0].split()[-1]) for o, _ in outputs)
    assert finished_now == 4  # each run trained once, by one of the two
    ledger = json.loads((out / "table-runs.json").read_text())
    assert len(ledger) == 4 and all(entry["exit"] == 0 for entry in ledger.values())
