"""Repeating a run from its record, starting from trained weights, quick evaluation options,
evaluating unfinished runs, TensorBoard, progress of long waits and the CPU precision choice."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from helpers import (
    cli,
    cli_with,
    learnable_npz,
    metrics,
    one_line_error,
    tiny_config,
    write_image_folder,
)

from wideresnet.train.run import make_trainer
from wideresnet.train.rundir import RunDir

BASE = "--model wrn-10-1 --dataset npz --batch-size 32 --lr 0.05 --precision fp32 --seed 3"


def train_args(npz: Path, out: Path, *extra) -> list:
    return [
        "train",
        *BASE.split(),
        "--epochs",
        "2",
        "--milestones",
        "2",
        "--data-dir",
        npz,
        "--out",
        out,
        *extra,
    ]


@pytest.fixture(scope="module")
def run(npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "a"
    result = cli(*train_args(npz, out))
    assert result.returncode == 0, result.stderr
    return out


# --------------------------------------------------------------------------------------------
# Repeating a run, --init-from
# --------------------------------------------------------------------------------------------


def test_a_run_repeated_from_its_config_json_has_the_same_config(run, tmp_path):
    again = tmp_path / "again"
    result = cli("train", "--config", run / "config.json", "--out", again)
    assert result.returncode == 0, result.stderr
    first, second = (json.loads((r / "config.json").read_text()) for r in (run, again))
    assert first.pop("run_id") != second.pop("run_id")  # the same config, another run
    assert first == second
    # and, on the CPU, the same run: every epoch's errors to the bit
    strip = ("epoch_seconds", "train_seconds", "eval_seconds", "train_images_per_second")
    assert [{k: v for k, v in r.items() if k not in strip} for r in metrics(again)] == [
        {k: v for k, v in r.items() if k not in strip} for r in metrics(run)
    ]


def test_init_from_loads_the_weights_with_a_fresh_optimiser(run, npz, tmp_path):
    trainer = make_trainer(tiny_config(npz, init_from=str(run)), RunDir(tmp_path))
    trained = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert len(trainer.optimizer.state) == 0 and trainer.state.epoch == 0


def test_init_from_with_another_class_count_gets_a_new_head(run, tmp_path):
    three = learnable_npz(tmp_path / "three.npz", classes=3, seed=1)
    out = tmp_path / "finetuned"
    result = cli(*train_args(three, out, "--init-from", run, "--epochs", "1"))
    assert result.returncode == 0, result.stderr
    assert "a new head for 3 classes (the checkpoint's has 4)" in result.stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["init_from"] == str(run.absolute())
    tuned = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert tuned["fc.weight"].shape == (3, 64)


def test_init_from_weights_that_do_not_fit_is_one_line(run, npz, tmp_path):
    line = one_line_error(
        cli(*train_args(npz, tmp_path / "b", "--init-from", run, "--model", "wrn-10-2"))
    )
    assert "--init-from" in line and "do not fit" in line


# --------------------------------------------------------------------------------------------
# Quick evaluation options, flagged; top-5; TensorBoard
# --------------------------------------------------------------------------------------------


def test_eval_limit_and_eval_every_are_recorded_and_flagged(npz, tmp_path):
    out = tmp_path / "quick"
    args = train_args(
        npz, out, "--epochs", "3", "--milestones", "3", "--eval-limit", "20", "--eval-every", "2"
    )
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    tested = [r["test_error"] is not None for r in metrics(out)]
    assert tested == [False, True, True]  # every 2nd epoch, and always the last
    final = json.loads((out / "result.json").read_text())
    assert final["test_images"] == 20
    assert any(f.startswith("eval_limit=20") for f in final["flags"])
    assert any(f.startswith("eval_every=2") for f in final["flags"])
    assert "flagged: eval_limit=20" in result.stdout
    assert "not measured this epoch" in result.stdout


def test_full_protocol_runs_carry_no_flags(run):
    assert json.loads((run / "result.json").read_text())["flags"] == []


def test_tensorboard_holds_the_same_numbers_as_metrics_jsonl(npz, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert cli(*train_args(npz, out, "--tensorboard")).returncode == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("test_error")]
    expected = [(r["epoch"], r["test_error"]) for r in metrics(out)]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert {"lr", "train_loss", "test_top5_error"} <= set(events.Tags()["scalars"])


# --------------------------------------------------------------------------------------------
# wrn eval: finished or not, the run's precision, top-5
# --------------------------------------------------------------------------------------------


def test_eval_says_a_finished_run_is_finished_and_reports_top5(run):
    result = cli("eval", run)
    assert result.returncode == 0, result.stderr
    assert "finished run (2 epochs)" in result.stdout and "top-5" in result.stdout
    report = json.loads(cli("eval", run, "--json").stdout)
    assert report["finished"] is True and report["test_top5_error"] == 0.0  # 4 classes
    assert report["test_error"] == json.loads((run / "result.json").read_text())["test_error"]


def test_eval_of_a_run_stopped_mid_epoch_says_it_is_unfinished(npz, tmp_path):
    out = tmp_path / "stopped"
    stopped = cli_with("sigterm", 9, *train_args(npz, out))
    assert stopped.returncode == 128 + signal.SIGTERM
    result = cli("eval", out)
    assert result.returncode == 0, result.stderr
    assert "UNFINISHED run: stopped after epoch 1 of 2, step 3 of the next" in result.stdout
    assert json.loads(cli("eval", out, "--json").stdout)["finished"] is False


def test_eval_uses_the_runs_precision_by_default(npz, tmp_path):
    out = tmp_path / "bf16"
    assert cli(*train_args(npz, out, "--precision", "bf16", "--epochs", "1")).returncode == 0
    report = json.loads(cli("eval", out, "--json").stdout)
    assert report["precision"] == "bf16"
    assert report["test_error"] == json.loads((out / "result.json").read_text())["test_error"]
    assert (
        json.loads(cli("eval", out, "--json", "--precision", "fp32").stdout)["precision"] == "fp32"
    )


# --------------------------------------------------------------------------------------------
# Progress of long waits; the CPU precision choice
# --------------------------------------------------------------------------------------------


def test_decoding_and_evaluation_show_progress(tmp_path):
    import numpy as np

    write_image_folder(tmp_path / "images", np.random.default_rng(0), per_class=40)
    out = tmp_path / "run"
    args = "--model wrn-10-1 --dataset folder --epochs 1 --batch-size 32 --precision fp32"
    result = cli(
        "train",
        *args.split(),
        "--data-dir",
        tmp_path / "images",
        "--out",
        out,
        env={"WRN_PROGRESS_AFTER": "0"},  # a small folder decodes faster than the 2 s grace
    )
    assert result.returncode == 0, result.stderr
    assert "decoding" in result.stdout and "files" in result.stdout
    assert "evaluating: " in result.stdout and "images" in result.stdout
    quiet = cli("train", *args.split(), "--data-dir", tmp_path / "images", "--out", tmp_path / "q")
    assert "decoding" not in quiet.stdout  # under two seconds: nothing


def test_an_asked_for_precision_is_recorded_with_its_reason(run):
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["precision"] == "fp32" and "asked for" in resolved["reasons"]["precision"]
