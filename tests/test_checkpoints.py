"""Checkpoints: a flipped bit caught by the checksum and the previous checkpoint used, another
run's checkpoint refused by resume and eval, crafted fields with a valid checksum one line,
and non-finite values never saved."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import (
    cli,
    cli_with,
    copy_run,
    files_of,
    metrics,
    one_line_error,
    tiny_config,
    train_argv,
)

from wideresnet.errors import RunError
from wideresnet.train.checkpoint import content_checksum
from wideresnet.train.run import make_trainer
from wideresnet.train.rundir import RunDir

# --------------------------------------------------------------------------------------------
# Checksums, foreign files, crafted fields
# --------------------------------------------------------------------------------------------


def flip_a_bit_in_the_weights(path: Path) -> None:
    """Flip one bit inside the largest tensor stored in a torch checkpoint (a zip file)."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    # the local header: 30 bytes, the name, the extra field; then the stored bytes
    at = record.header_offset
    name_length = int.from_bytes(data[at + 26 : at + 28], "little")
    extra_length = int.from_bytes(data[at + 28 : at + 30], "little")
    start = at + 30 + name_length + extra_length
    data[start + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_is_caught_and_the_previous_checkpoint_used(npz, tmp_path, finished):
    out = tmp_path / "run"
    assert cli_with("sigterm", 9, *train_argv(npz, out)).returncode == 143
    flip_a_bit_in_the_weights(out / "checkpoint.pt")
    resumed = cli("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "fails its checksum" in resumed.stderr and "falling back to" in resumed.stderr
    assert metrics(out, timing=False) == metrics(finished, timing=False)


def test_a_corrupt_newest_checkpoint_never_replaces_the_good_previous(npz, tmp_path):
    out = tmp_path / "run"
    assert cli_with("sigterm", 9, *train_argv(npz, out)).returncode == 143
    good = (out / "checkpoint.prev.pt").read_bytes()  # end of epoch 1
    flip_a_bit_in_the_weights(out / "checkpoint.pt")
    # resumed from the previous one, stopped again at once: one save after the fallback
    assert cli_with("sigterm", 1, "train", "--resume", out).returncode == 143
    assert (out / "checkpoint.prev.pt").read_bytes() == good  # not the corrupt one
    (out / "checkpoint.pt").unlink()  # as if killed before the new one was renamed in
    assert cli("train", "--resume", out).returncode == 0


def test_a_checkpoint_of_another_run_is_refused(npz, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert cli_with("sigterm", 9, *train_argv(npz, ours)).returncode == 143
    assert cli(*train_argv(npz, theirs, "--seed", "5", epochs=1)).returncode == 0
    (ours / "checkpoint.pt").write_bytes((theirs / "checkpoint.pt").read_bytes())
    line = one_line_error(cli("train", "--resume", ours))
    assert "belongs to another run" in line and "seed 5" in line and "seed 3" in line
    assert len(metrics(ours, timing=False)) == 1  # its metrics were not rewritten


def write_with_checksum(path: Path, state: dict) -> None:
    """A checkpoint file of these fields, with the checksum they make (as a crafted file)."""
    torch.save({**state, "checksum": content_checksum(state)}, path)


def test_crafted_fields_with_a_valid_checksum_are_one_line(finished, tmp_path):
    state = torch.load(finished / "checkpoint.pt", weights_only=True)
    assert content_checksum(state) == state["checksum"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes((finished / "config.json").read_bytes())
    write_with_checksum(run / "checkpoint.pt", {**state, "epoch": "3"})
    line = one_line_error(cli("train", "--resume", run))
    assert "field epoch is a str" in line
    write_with_checksum(run / "checkpoint.pt", {**state, "model": [1, 2]})
    line = one_line_error(cli("eval", run / "checkpoint.pt"))
    assert "field model is a list" in line


# --------------------------------------------------------------------------------------------
# Non-finite values: the truly good checkpoint, never a non-finite save, a resume that works
# --------------------------------------------------------------------------------------------


def test_a_nan_before_any_checkpoint_says_none_exists(npz, tmp_path):
    out = tmp_path / "run"
    failed = cli_with("nan", 2, *train_argv(npz, out))
    line = one_line_error(failed, code=1)
    assert "no good checkpoint was saved yet" in line and "lower --lr" in line
    assert not (out / "checkpoint.pt").exists()


def test_a_nan_names_the_good_checkpoint_and_its_advice_is_accepted(npz, tmp_path):
    out = tmp_path / "run"
    line = one_line_error(cli_with("nan", 8, *train_argv(npz, out)), code=1)
    assert f"the last good checkpoint is {out / 'checkpoint.pt'} (epoch 1, step 0)" in line
    assert "--lr LOWER" in line
    resumed = cli("train", "--resume", out, "--lr", "0.02")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((out / "result.json").read_text())
    change = result["config_changes"][0]
    assert (change["key"], change["from"], change["to"], change["epoch"]) == ("lr", 0.05, 0.02, 2)
    assert any("changed on resume: lr 0.05 -> 0.02" in flag for flag in result["flags"])
    assert [r["lr"] for r in metrics(out, timing=False)] == pytest.approx([0.05, 0.004, 0.0008])
    extended = cli("train", "--resume", out, "--epochs", "4")  # a finished run, extended
    assert extended.returncode == 0, extended.stderr
    assert [r["epoch"] for r in metrics(out, timing=False)] == [1, 2, 3, 4]


def test_non_finite_weights_are_never_saved(npz, tmp_path):
    trainer = make_trainer(tiny_config(npz), RunDir(tmp_path))
    with torch.no_grad():
        trainer.model.bn.running_var[0] = float("inf")
    with pytest.raises(RunError, match="non-finite weights"):
        trainer.save()
    assert not (tmp_path / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------------
# A checkpoint carries its run's identity
# --------------------------------------------------------------------------------------------


def test_another_runs_checkpoint_with_the_same_seed_is_refused_by_resume_and_eval(
    npz, finished, tmp_path
):
    other = tmp_path / "other"
    assert cli(*train_argv(npz, other, epochs=2)).returncode == 0
    run = copy_run(finished, tmp_path / "run")
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        shutil.copy(other / name, run / name)
    (run / "result.json").unlink()
    before = files_of(run)
    line = one_line_error(cli("train", "--resume", run))
    assert "belongs to another run" in line
    line = one_line_error(cli("eval", run))
    assert "belongs to another run" in line
    assert files_of(run) == before and len(metrics(run)) == 3


def test_a_whole_checkpoint_of_another_model_is_refused_by_eval(npz, finished, tmp_path):
    other = tmp_path / "other"
    assert cli(*train_argv(npz, other, epochs=1, model="wrn-16-1")).returncode == 0
    run = copy_run(finished, tmp_path / "run")
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    line = one_line_error(cli("eval", run))
    assert "belongs to another run" in line and "wrn-16-1" in line and "wrn-10-1" in line


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epoch", "3", "field epoch is a str"),
        ("classes", 5, "field classes is a int"),
        ("epoch", -1, "negative"),
        ("train_seconds", "x", "field train_seconds is a str"),
    ],
)
def test_crafted_fields_with_a_valid_checksum_are_one_line_for_eval(
    finished, tmp_path, field, value, message
):
    state = torch.load(finished / "checkpoint.pt", weights_only=True)
    run = copy_run(finished, tmp_path / "run")
    write_with_checksum(run / "checkpoint.pt", {**state, field: value})
    (run / "checkpoint.prev.pt").unlink()
    for command in (["eval", run], ["eval", run / "checkpoint.pt"], ["train", "--resume", run]):
        line = one_line_error(cli(*command))
        assert message in line, line
