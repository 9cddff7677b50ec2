"""The command line as a whole: every model family trains, options that do not fit a model,
help for every option, errors and bugs reported apart, and no process settings leaking."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli, learnable_npz, one_line_error

import wideresnet
from wideresnet.config import FIELDS
from wideresnet.recipes import make_config


@pytest.fixture(scope="module")
def npz32(tmp_path_factory):
    return learnable_npz(tmp_path_factory.mktemp("data") / "tiny32.npz", size=32, n_train=64)


FAMILIES = {
    "wrn-10-1": ["--dropout", "0.3", "--block", "3,1,3"],  # the paper's network, B(3,1,3)
    "resnet-8": [],  # Table 5's original post-activation ResNet (6n+2)
    "preact-resnet-8": [],  # pre-activation ResNet, basic blocks
    "preact-resnet-11": [],  # pre-activation ResNet, bottleneck blocks (9n+2)
    "resnet-18": [],  # the ImageNet layout (torchvision keys), here on 32 px images
}


@pytest.mark.parametrize("model", FAMILIES)
def test_every_model_family_trains_and_evaluates(npz32, tmp_path, model):
    out = tmp_path / "run"
    options = "--dataset npz --epochs 1 --batch-size 32 --precision fp32 --milestones 1".split()
    result = cli(
        "train", "--model", model, *options, *FAMILIES[model], "--data-dir", npz32, "--out", out
    )
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == model
    assert json.loads((out / "result.json").read_text())["epochs"] == 1
    evaluated = cli("eval", out, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["images"] == 64 and report["finished"] is True


@pytest.mark.parametrize(
    "model, option, value, owner",
    [
        ("resnet-8", "--block", "3,3", "wrn-d-k"),
        ("preact-resnet-110", "--dropout", "0.3", "wrn-d-k"),
        ("wrn-50-2", "--blocks-per-group", "2", "wrn-d-k"),
    ],
)
def test_an_option_the_model_does_not_take_is_refused(npz32, tmp_path, model, option, value, owner):
    args = ["train", "--model", model, option, value, "--dataset", "npz", "--data-dir", npz32]
    line = one_line_error(cli(*args, "--out", tmp_path / "run"))
    assert f"{option} applies to {owner} models only" in line and model in line
    assert not (tmp_path / "run").exists()


def test_a_presets_model_option_is_left_out_for_a_model_without_it():
    config = make_config("svhn", {"model": "resnet-110"})
    assert config.model.dropout is None and config.optim.lr == 0.01
    assert make_config("svhn").model.dropout == 0.4


def test_train_help_documents_every_option():
    result = cli("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for key, info in FIELDS.items():
        flag = "--" + key.replace("_", "-")
        assert flag in text, flag
        assert " ".join(info.help.split()) in text, key
    for section in ("model options", "data options", "optim options", "runtime options"):
        assert section in text


@pytest.mark.parametrize("error", [KeyError, ValueError])
def test_an_internal_bug_is_not_reported_as_a_user_error(monkeypatch, error):
    def broken(*args, **kwargs):
        raise error("an internal invariant broke")

    monkeypatch.setattr("wideresnet.models.model_summary", broken)
    run = cli("info", "wrn-16-4")
    assert run.returncode == 70, run.stderr
    assert "internal error" in run.stderr and error.__name__ in run.stderr
    assert "bug" in run.stderr and "Traceback" not in run.stderr


def test_wrn_debug_shows_the_traceback_behind_a_one_line_error():
    plain = cli("info", "wrn-banana")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = cli("info", "wrn-banana", env={"WRN_DEBUG": "1"})
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "wrn: error: unknown model" in debug.stderr


def test_a_run_in_process_leaves_the_process_settings_as_they_were(npz32, tmp_path):
    config = make_config(
        "cifar",
        {
            "model": "wrn-10-1",
            "dataset": "npz",
            "data_dir": str(npz32),
            "epochs": 1,
            "batch_size": 32,
            "precision": "fp32",
            "deterministic": True,
            "seed": 5,
        },
    )
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    benchmark_before = torch.backends.cudnn.benchmark
    wideresnet.train(config, tmp_path / "run")
    assert torch.are_deterministic_algorithms_enabled() is False
    assert torch.backends.cudnn.benchmark == benchmark_before
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert (tmp_path / "run" / "result.json").exists()


@pytest.mark.spawns
def test_every_verb_that_prints_json_prints_only_json(npz32, tmp_path):
    """stdout parses as one JSON document, whatever the verb logs, warns or writes beside it
    (its log, its warnings and what it says of its files go to stderr)."""
    from PIL import Image

    exp = tmp_path / "exp"
    where = ["--dataset", "npz", "--data-dir", npz32, "--paper-dataset", "cifar10"]
    quick = ["--", "--model", "wrn-10-1", "--batch-size", "32", "--precision", "fp32"]
    ran = cli(
        "table", "run", "table6", *where, "--rows", "16-4", "--epochs", "1", "--out", exp, *quick
    )
    assert ran.returncode == 0, ran.stderr
    run = exp / "table6" / "16-4" / "npz-as-cifar10" / "seed0"
    broken = run.parent / "seed1"  # a damaged record: the report warns and goes on
    broken.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (broken / name).write_bytes((run / name).read_bytes())
    (broken / "result.json").write_text("[]")
    model = tmp_path / "model.safetensors"
    assert cli("export", run, "--format", "safetensors", "--out", model).returncode == 0
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    (tmp_path / "notes.png").write_text("not an image")
    verbs = {
        "info": (["info", "wrn-10-1", "--json"], "params"),
        "eval": (["eval", run, "--json"], "test_error"),
        "table list": (["table", "list", "--json"], None),
        "table show": (["table", "show", "table6", "--json"], "rows"),
        "table status": (["table", "status", exp, "--json"], None),
        "report": (["report", exp, "--format", "json", "--plots", tmp_path / "plots"], "cells"),
        "bench": (["bench", "wrn-10-1", "--batch-size", "8", "--steps", "1", "--json"], None),
        "predict": (
            ["predict", model, tmp_path / "red.png", tmp_path / "notes.png", "--json"],
            None,
        ),
    }
    for verb, (argv, key) in verbs.items():
        result = cli(*argv)
        try:
            value = json.loads(result.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"wrn {verb}: stdout is not JSON alone: {result.stdout[-300:]!r}")
        assert value and (key is None or key in value), (verb, result.stdout[:300])
        if verb == "report":
            assert "left out of the report" in result.stderr and "plot files" in result.stderr
        if verb == "predict":
            assert result.returncode == 2 and "notes.png" in result.stderr
