"""`wrn train`, resume, eval and failure handling, through the `wrn` entry point.

The data is a small .npz a tiny WRN can learn (helpers.learnable_npz): 192 training images in
batches of 32, so an epoch is 6 steps. Signals and NaNs are injected at a chosen step by
helpers.fault_at, which wraps the training step's loss; the signal is a real SIGTERM to the
process that trains. The uninterrupted reference run and one stop-and-resume run each in a
process of its own (`wrn`); the other runs go through the same entry point in this process
(helpers.cli).
"""

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
    train_argv,
    wrn,
    wrn_with,
)

from wideresnet.train import step as steps
from wideresnet.train.optim import begin_epoch
from wideresnet.train.run import make_trainer
from wideresnet.train.rundir import RunDir

STEPS_PER_EPOCH = 6


def base_args(npz: Path, out: Path, *extra: str) -> list[str]:
    """helpers.train_argv's tiny run with dropout in its blocks."""
    return train_argv(npz, out, "--dropout", "0.3", *extra)


def checkpoint(run: Path, name: str = "checkpoint.pt") -> dict:
    return torch.load(run / name, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:  # parameters and BN buffers, bit for bit
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for key in sa:
        assert torch.equal(sa[key]["momentum_buffer"], sb[key]["momentum_buffer"]), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


@pytest.fixture(scope="module")
def straight(npz, tmp_path_factory) -> Path:
    """The uninterrupted 3-epoch run every resumed run is compared with."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    result = wrn(*base_args(npz, out))
    assert result.returncode == 0, result.stderr
    return out


def test_straight_run_writes_the_run_directory(straight):
    config = json.loads((straight / "config.json").read_text())
    assert config["model"] == "wrn-10-1" and config["milestones"] == [2, 3]
    assert config["resolved"]["precision"] == "fp32" and config["resolved"]["device"] == "cpu"
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.01, 0.002])
    for row in rows:
        assert {"train_loss", "train_error", "test_loss", "test_error", "epoch_seconds"} <= set(row)
    result = json.loads((straight / "result.json").read_text())
    assert result["epochs"] == 3 and result["params"] > 0
    assert result["test_error"] == rows[-1]["test_error"]  # the LAST epoch, not the best
    assert rows[-1]["test_error"] < 50, "the tiny WRN should learn the coloured classes"
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["precision"] == "fp32"
    seconds = result["wall_seconds"]
    assert set(seconds) == {"data", "train", "eval", "total"}
    assert seconds["total"] == pytest.approx(seconds["train"] + seconds["eval"])
    assert seconds["data"] > 0
    state = checkpoint(straight)
    assert state["epoch"] == 3 and state["global_step"] == 3 * STEPS_PER_EPOCH
    assert state["data_order"] == {"seed": 3, "epoch": 4}


@pytest.mark.parametrize(
    "at_step",
    [STEPS_PER_EPOCH + 3, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 1],
    ids=["mid-epoch-2", "end-of-epoch-1-before-milestone", "first-step-of-milestone-epoch"],
)
def test_sigterm_then_resume_is_bit_identical(npz, tmp_path, straight, at_step):
    out = tmp_path / "run"
    # the mid-epoch case stops and resumes in processes of their own; the others in this one
    stop, run = (wrn_with, wrn) if at_step == STEPS_PER_EPOCH + 3 else (cli_with, cli)
    stopped = stop("sigterm", at_step, *base_args(npz, out))
    assert stopped.returncode == 128 + signal.SIGTERM == 143, stopped.stderr
    assert "SIGTERM" in stopped.stderr and "--resume" in stopped.stderr
    state = checkpoint(out)
    assert state["global_step"] == at_step
    assert not (out / "result.json").exists()

    resumed = run("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_state(checkpoint(straight), checkpoint(out))
    assert metrics(out, timing=False) == metrics(straight, timing=False)
    ours = json.loads((out / "result.json").read_text())
    theirs = json.loads((straight / "result.json").read_text())
    assert ours["test_error"] == theirs["test_error"]


def test_mid_epoch_checkpoints_on_request(npz, tmp_path, straight):
    out = tmp_path / "run"
    stopped = cli_with("sigterm", 11, *base_args(npz, out, "--checkpoint-every", "4"))
    assert stopped.returncode == 143
    # checkpoints after steps 4, 6 (epoch end), 8 and 11 (signal): prev holds step 8
    assert checkpoint(out, "checkpoint.prev.pt")["global_step"] == 8
    assert checkpoint(out)["step_in_epoch"] == 5
    assert cli("train", "--resume", out).returncode == 0
    assert_same_state(checkpoint(straight), checkpoint(out))


def test_torn_newest_checkpoint_falls_back_to_the_previous(npz, tmp_path, straight):
    out = tmp_path / "run"
    assert cli_with("sigterm", 9, *base_args(npz, out)).returncode == 143
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    resumed = cli("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "falling back to" in resumed.stderr and "checkpoint.prev.pt" in resumed.stderr
    assert "resuming" in resumed.stdout and "epoch 2 step 0" in resumed.stdout
    assert_same_state(checkpoint(straight), checkpoint(out))
    assert metrics(out, timing=False) == metrics(straight, timing=False)


def test_resume_refuses_a_different_config(npz, tmp_path):
    out = tmp_path / "run"
    assert cli_with("sigterm", 2, *base_args(npz, out)).returncode == 143
    asked = ("--batch-size", "16", "--epochs", "3")
    line = one_line_error(cli("train", "--resume", out, *asked))
    assert "batch_size: run has 32, command line asks 16" in line
    assert "epochs" not in line.split("(on resume only")[0]  # the same value is no difference
    assert cli("train", "--resume", out, "--epochs", "3").returncode == 0


@pytest.mark.parametrize("fused", [False, True], ids=["checked-each-step", "fused-sgd-on-device"])
def test_non_finite_loss_stops_before_the_update_and_keeps_the_checkpoint(npz, tmp_path, fused):
    out = tmp_path / "run"
    extra = ["--fused-sgd", "on"] if fused else []
    failed = cli_with("nan", STEPS_PER_EPOCH + 2, *base_args(npz, out, *extra))
    line = one_line_error(failed, code=1)
    failure = json.loads((out / "failure.json").read_text())
    if fused:  # the CUDA path: no host sync per step; found at the epoch's end
        assert "non-finite training loss in epoch 2" in line
        assert failure["epoch"] == 2 and failure["step"] is None
    else:
        assert "non-finite training loss at epoch 2 step 2" in line
        assert failure["epoch"] == 2 and failure["step"] == 2
    state = checkpoint(out)
    assert state["epoch"] == 1 and state["global_step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    assert not (out / "result.json").exists()
    # the run continues from its last good checkpoint
    assert cli("train", "--resume", out).returncode == 0
    assert checkpoint(out)["epoch"] == 3


def test_nesterov_and_weight_decay_reach_every_parameter(npz, tmp_path):
    trainer = make_trainer(tiny_config(npz), RunDir(tmp_path))
    (group,) = trainer.optimizer.param_groups
    assert (group["momentum"], group["dampening"], group["nesterov"]) == (0.9, 0, True)
    assert group["weight_decay"] == 5e-4
    model_params = {id(p) for p in trainer.model.parameters()}
    assert {id(p) for p in group["params"]} == model_params  # BN weights and biases included

    # one step equals the hand-written Nesterov update with weight decay, on every parameter
    before = [p.detach().clone() for p in trainer.model.parameters()]
    x, y = next(trainer.data.train.batches(1))
    trainer.model.train()
    steps.loss_fn(trainer.model(x), y).backward()
    grads = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.optimizer.step()
    for p, p0, g in zip(trainer.model.parameters(), before, grads):
        d = g + 5e-4 * p0
        expected = p0 - 0.1 * (d + 0.9 * d)  # first step: buffer = d; nesterov: d + m * buf
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)

    off = make_trainer(tiny_config(npz, nesterov=False), RunDir(tmp_path))  # --no-nesterov works
    assert off.optimizer.param_groups[0]["nesterov"] is False


def test_momentum_is_reset_at_each_lr_drop_and_only_then(npz, tmp_path):
    config = tiny_config(npz, milestones=(2,), epochs=2)
    trainer = make_trainer(config, RunDir(tmp_path))
    trainer.optimizer.state[next(trainer.model.parameters())]["momentum_buffer"] = torch.ones(1)
    begin_epoch(trainer.optimizer, config.optim, 1, fresh=True)
    assert len(trainer.optimizer.state) == 1
    begin_epoch(trainer.optimizer, config.optim, 2, fresh=True)
    assert len(trainer.optimizer.state) == 0
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
    kept = config.replace(reset_momentum=False)
    trainer = make_trainer(kept, RunDir(tmp_path))
    trainer.optimizer.state[next(trainer.model.parameters())]["momentum_buffer"] = torch.ones(1)
    begin_epoch(trainer.optimizer, kept.optim, 2, fresh=True)
    assert len(trainer.optimizer.state) == 1


def test_eval_reports_the_same_error_as_the_run(straight, npz):
    result = cli("eval", straight, "--json", "--flip")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    final = json.loads((straight / "result.json").read_text())
    assert report["test_error"] == pytest.approx(final["test_error"])
    assert report["images"] == 64 and report["classes"] == ["c0", "c1", "c2", "c3"]
    assert sum(map(sum, report["confusion"])) == 64
    assert len(report["per_class_error"]) == 4 and "flip_test_error" in report
    text = cli("eval", straight / "checkpoint.pt", "--dataset", "npz", "--data-dir", npz)
    assert text.returncode == 0 and "test error" in text.stdout and "c3" in text.stdout


def test_eval_whitens_with_the_runs_own_zca_fit(npz, tmp_path, isolated_cache):
    out = tmp_path / "run"
    zca = ("--preprocess", "zca", "--epochs", "1", "--val-size", "32", "--train-limit", "160")
    assert cli(*base_args(npz, out, *zca)).returncode == 0
    result = cli("eval", out, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 64
    # one fit: eval reused the run's (128 images: train_limit less val_size), not a new one
    assert len(list((isolated_cache / "zca").glob("*.npz"))) == 1


def test_non_empty_out_is_refused_unless_overwrite(npz, straight, tmp_path):
    line = one_line_error(cli(*base_args(npz, straight)))
    assert "not empty" in line and "--resume" in line
    assert (straight / "result.json").exists()  # nothing of the finished run was touched
    out = tmp_path / "again"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = cli(*base_args(npz, out, "--epochs", "1", "--overwrite"))
    assert result.returncode == 0, result.stderr
    assert (out / "notes.txt").read_text() == "keep me"  # only the run's own files are replaced


@pytest.mark.parametrize("case", ["truncated", "code", "garbage"])
def test_bad_checkpoints_are_one_line_errors(straight, tmp_path, case):
    path = tmp_path / "model.pt"
    marker = tmp_path / "code-ran"
    if case == "truncated":
        data = (straight / "checkpoint.pt").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "code":

        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        torch.save({"model": Payload(), "config": {}}, path)
    else:
        path.write_bytes(b"not a checkpoint at all")
    line = one_line_error(cli("eval", path))
    assert str(path) in line
    assert not marker.exists(), "unpickling ran code from the checkpoint"
    if case == "code":
        run = tmp_path / "run"
        run.mkdir()
        path.rename(run / "checkpoint.pt")
        one_line_error(cli("train", "--resume", run))
        assert not marker.exists()


def test_user_errors_are_one_line_and_exit_2(npz, straight, tmp_path):
    line = one_line_error(cli(*base_args(npz, tmp_path / "a", "--num-classes", "5")))
    assert "--num-classes 5" in line and "4 classes" in line
    line = one_line_error(cli(*base_args(tmp_path / "missing.npz", tmp_path / "b")))
    assert "missing.npz" in line
    line = one_line_error(cli(*base_args(npz, tmp_path / "c", "--epoch", "2")))
    assert "--epoch" in line and "did you mean --epochs" in line
    line = one_line_error(cli(*base_args(npz, tmp_path / "d", "--model", "wrn-17-2")))
    assert "wrn-17-2" in line
    line = one_line_error(cli(*base_args(npz, tmp_path / "e", "--lr", "fast")))
    assert "lr" in line
    line = one_line_error(cli("train", "--resume", tmp_path / "nothing-here"))
    assert "nothing-here" in line
    three = learnable_npz(tmp_path / "three.npz", classes=3)
    line = one_line_error(cli("eval", straight, "--dataset", "npz", "--data-dir", three))
    assert "3 classes" in line and "4" in line
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


def test_config_file_and_deterministic_flag(npz, tmp_path):
    config = tmp_path / "recipe.toml"
    config.write_text(
        'model = "wrn-10-1"\nepochs = 1\nbatch_size = 32\nnesterov = false\nprecision = "fp32"\n'
    )
    out = tmp_path / "run"
    options = "--dataset npz --deterministic --log-every 2".split()
    result = cli("train", "--config", config, *options, "--data-dir", npz, "--out", out)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["nesterov"] is False and saved["deterministic"] is True
    assert saved["epochs"] == 1 and saved["batch_size"] == 32
    assert "img/s" in result.stdout and "step 2/6" in result.stdout  # plain lines, not a tty
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 0.1}))
    line = one_line_error(
        cli(
            "train", "--config", bad, "--dataset", "npz", "--data-dir", npz, "--out", tmp_path / "x"
        )
    )
    assert "learning_rate" in line
