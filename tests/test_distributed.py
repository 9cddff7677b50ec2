"""One run on several processes (torchrun, gloo on the CPU): it follows the one-process run,
survives SIGTERM on any rank bit for bit, ends cleanly when a rank dies, and resumes on
another number of processes. Also the whole step compiled as one function, and `wrn bench`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cli, metrics, parent_pid, tiny_config, train_argv, wait_for

from wideresnet.errors import ConfigError
from wideresnet.train.checkpoint import load_checkpoint
from wideresnet.train.distributed import World
from wideresnet.train.run import make_trainer
from wideresnet.train.rundir import RunDir
from wideresnet.train.step import EpochSums

pytestmark = pytest.mark.spawns  # torchrun and its ranks


def metrics_of(run: Path) -> list[dict]:
    return metrics(run, timing=False)


def train_args(npz: Path, out: Path, *extra, epochs: int = 3) -> list[str]:
    """helpers.train_argv's tiny run on the CPU, as text for a command line."""
    return [str(a) for a in train_argv(npz, out, "--device", "cpu", *extra, epochs=epochs)]


def torchrun(*args, processes: int = 2) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", "-m", "wideresnet", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def ranks(parent: int) -> dict[int, int]:
    """rank -> pid of the worker processes torchrun started."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if parent_pid(int(entry)) != parent:
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry)
    return found


@pytest.fixture(scope="module")
def two_rank_run(npz, tmp_path_factory) -> Path:
    """An uninterrupted 2-process run (batch norm per process, as the authors' runs)."""
    out = tmp_path_factory.mktemp("ddp") / "straight"
    result = finish(torchrun(*train_args(npz, out)))
    assert result.returncode == 0, result.stderr
    return out


def test_two_processes_with_sync_bn_follow_one_process(npz, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(*train_args(npz, one, epochs=2)).returncode == 0
    result = finish(torchrun(*train_args(npz, two, "--sync-bn", epochs=2)))
    assert result.returncode == 0, result.stderr
    assert json.loads((two / "config.json").read_text())["resolved"]["processes"] == 2
    # the same global batch of 32, split 16 + 16: only the order of float sums differs
    for a, b in zip(metrics_of(one), metrics_of(two)):
        assert a["epoch"] == b["epoch"] and a["lr"] == b["lr"]
        for key in ("train_loss", "test_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    weights_one = load_checkpoint(one / "checkpoint.pt").model
    weights_two = load_checkpoint(two / "checkpoint.pt").model
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_sigterm_on_one_rank_then_resume_is_bit_identical(npz, two_rank_run, tmp_path):
    out = tmp_path / "stopped"
    process = torchrun(*train_args(npz, out))
    wait_for(out / "checkpoint.pt", process)  # the end of epoch 1
    os.kill(ranks(process.pid)[1], signal.SIGTERM)  # rank 1 only
    stopped = finish(process)
    assert stopped.returncode != 0 and "stopped by SIGTERM" in stopped.stderr
    state = load_checkpoint(out / "checkpoint.pt").training.state
    # stopped in epoch 2, or at its very start when the signal beat its first step
    assert state.global_step >= 6 and not (out / "result.json").exists()
    resumed = finish(torchrun("train", "--resume", out))
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_of(out) == metrics_of(two_rank_run)
    ours, theirs = (
        load_checkpoint(out / "checkpoint.pt"),
        load_checkpoint(two_rank_run / "checkpoint.pt"),
    )
    for key in theirs.model:
        assert torch.equal(ours.model[key], theirs.model[key]), key


def test_a_killed_rank_ends_the_run_with_a_clear_error_and_an_intact_checkpoint(npz, tmp_path):
    out = tmp_path / "killed"
    process = torchrun(*train_args(npz, out, epochs=50))
    wait_for(out / "checkpoint.pt", process)
    os.kill(ranks(process.pid)[1], signal.SIGKILL)
    ended = finish(process, timeout=120)  # ends, rather than hangs
    assert ended.returncode != 0
    assert load_checkpoint(out / "checkpoint.pt").training.state.epoch >= 1  # verifies: intact
    resumed = cli("train", "--resume", out, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr


def test_resume_on_another_number_of_processes_says_so(npz, tmp_path):
    out = tmp_path / "moved"
    process = torchrun(*train_args(npz, out))
    wait_for(out / "checkpoint.pt", process)
    process.send_signal(signal.SIGTERM)  # torchrun passes it to both ranks
    finish(process)
    resumed = cli("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming on 1 process(es); the run used 2" in resumed.stdout
    assert [r["epoch"] for r in metrics_of(out)] == [1, 2, 3]


def test_the_global_batch_must_split_evenly(npz, tmp_path):
    """Checked as the run is assembled for its world (here rank 0 of 2, as torchrun starts it),
    before any data or weights."""
    with pytest.raises(ConfigError, match="--batch-size 33 .* does not split evenly over 2"):
        make_trainer(tiny_config(npz, batch_size=33), RunDir(tmp_path / "odd"), world=World(0, 2))


# --------------------------------------------------------------------------------------------
# The whole step as one compiled function; wrn bench
# --------------------------------------------------------------------------------------------


@pytest.mark.compiles
@pytest.mark.parametrize("recipe", ["plain", "mixed-distilled"])
def test_the_whole_step_compiled_follows_the_eager_step(npz, tmp_path, recipe):
    """Five steps of the compiled whole step give the eager losses within rtol 1e-4 (the
    compiler may reorder float sums; the recipe itself must not change): the paper's step,
    and one with mixup and CutMix, label smoothing and a teacher (the same loss module)."""
    options = {}
    if recipe != "plain":
        teacher = tmp_path / "teacher"
        quick = ["--model", "wrn-10-1", "--dataset", "npz", "--epochs", "1", "--precision", "fp32"]
        assert cli("train", *quick, "--data-dir", npz, "--out", teacher).returncode == 0
        options = dict(mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
        options.update(teacher=str(teacher), kd_temperature=2.0, kd_alpha=0.5)
    losses = {}
    for mode in ("off", "step"):
        config = tiny_config(npz, compile=mode, **options)
        trainer = make_trainer(config, RunDir(tmp_path / mode))
        trainer.model.train()
        trace = []
        for index, (x, y) in enumerate(list(trainer.data.train.batches(1))[:5]):
            sums = EpochSums.start(trainer.device)
            trainer.step(x, y, sums, index)
            trace.append(sums.loss.item() / len(y))
        losses[mode] = trace
    assert losses["step"] == pytest.approx(losses["off"], rel=1e-4)


def test_wrn_bench_reports_ratios_against_eager_fp32_in_one_process():
    result = cli("bench", "wrn-10-1", "--batch-size", "16", "--steps", "2", "--json")
    assert result.returncode == 0, result.stderr
    bench = json.loads(result.stdout)
    assert bench["model"] == "wrn-10-1" and bench["device"] == "cpu"
    first = bench["rows"][0]
    assert first["setting"].startswith("eager fp32") and first["ratio"] == 1.0
    for row in bench["rows"]:
        assert row["images_per_second"] > 0 and row["inference_images_per_second"] > 0
        assert row["ratio"] == pytest.approx(row["images_per_second"] / first["images_per_second"])
    assert any(r["setting"].startswith("wrn train's default") for r in bench["rows"])
