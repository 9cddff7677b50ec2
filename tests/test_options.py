"""Options: strict types and numbers checked before any work, rules between fields checked
before any data is read, out of memory as one line with the batch size to try, and Ctrl-C
while starting as one line and exit 130."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import (
    cli,
    learnable_npz,
    one_line_error,
    train_argv,
    wrn,
)

# --------------------------------------------------------------------------------------------
# Types and numbers, checked before any work
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "toml, message",
    [
        ("epochs = true", "epochs: True is not a valid int"),
        ("milestones = [1.7]", "milestones: [1.7] is not comma-separated integers"),
        ("lr = true", "lr: True is not a valid float"),
        ("nesterov = 1", "nesterov: 1 is not a valid bool"),
    ],
)
def test_config_types_are_strict(npz, tmp_path, toml, message):
    config = tmp_path / "c.toml"
    config.write_text(toml + "\n")
    out = tmp_path / "r"
    line = one_line_error(cli("train", "--config", config, "--data-dir", npz, "--out", out))
    assert message in line


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--eval-batch-size", "0", "eval_batch_size must be > 0"),
        ("--seed", str(2**64), "seed must be in"),
        ("--lr", "-1", "lr must be > 0"),
        ("--milestones", "3,2", "milestones must be increasing"),
    ],
)
def test_numeric_options_are_checked_before_any_work(npz, tmp_path, option, value, message):
    out = tmp_path / "run"
    line = one_line_error(cli(*train_argv(npz, out, option, value)))
    assert message in line and not out.exists()


# --------------------------------------------------------------------------------------------
# Out of memory: one line with the batch size to try
# --------------------------------------------------------------------------------------------


def with_memory_limit(limit: int):
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


@pytest.mark.spawns
def test_out_of_memory_is_one_line_with_the_batch_size(tmp_path):
    data = learnable_npz(tmp_path / "big.npz", n_train=1024, n_test=64, size=32)
    out = tmp_path / "run"
    options = "--model wrn-16-4 --dataset npz --batch-size 1024 --precision fp32 --epochs 1"
    command = ["train", *options.split(), "--data-dir", data, "--out", out]
    result = wrn(*command, preexec_fn=with_memory_limit(2 << 30))
    line = one_line_error(result, code=1)
    assert "out of memory on cpu during training at batch size 1024" in line
    assert "--batch-size 512" in line


# --------------------------------------------------------------------------------------------
# Rules between fields, checked before any data is read
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--momentum", "0"], "--no-nesterov"),
        (["--lr-decay", "0"], "lr_decay"),
        (["--block", ""], "block: ''"),
        (["--warmup-epochs", "5"], "--warmup-epochs 5 is longer than the run"),
        (
            ["--crop", "random-sized", "--crop-size", "64", "--eval-resize", "56"],
            "--eval-crop 64 is larger than --eval-resize 56",
        ),
    ],
    ids=["momentum-0", "lr-decay-0", "block-empty", "warmup", "eval-crop-over-resize"],
)
def test_option_clashes_are_one_line_before_the_data_is_read(tmp_path, extra, message):
    missing = tmp_path / "not-there.npz"  # never reached: the options are refused first
    line = one_line_error(cli(*train_argv(missing, tmp_path / "run", *extra, epochs=3)))
    assert message in line, line
    assert not (tmp_path / "run").exists()


def test_momentum_0_without_nesterov_trains(npz, tmp_path):
    result = cli(*train_argv(npz, tmp_path / "run", "--momentum", "0", "--no-nesterov", epochs=1))
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["optimizer"]
    assert state["param_groups"][0]["momentum"] == 0 and not state["param_groups"][0]["nesterov"]


# --------------------------------------------------------------------------------------------
# Ctrl-C while starting
# --------------------------------------------------------------------------------------------


SIGINT_CHILD = """
import os, signal, sys

class SigintOnTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while torch is being imported
        return None

sys.meta_path.insert(0, SigintOnTorch())
import wrn_command
sys.exit(wrn_command.main())
"""


@pytest.mark.spawns
def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SIGINT_CHILD, "--version"], capture_output=True, text=True
    )
    line = one_line_error(result, code=130)
    assert "interrupted" in line
