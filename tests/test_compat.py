"""Files written by wideresnet 0.2 still load, resume, evaluate, export and report unchanged.

The 0.2 files are written in the test by 0.2 itself: its package is taken from this
repository's history (commit V02) and run as `python -m wideresnet` in a process of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import authors_params, cli, metrics

import wideresnet

ROOT = Path(__file__).resolve().parents[1]
V02 = "4683630"  # the commit of wideresnet 0.2 (README "Version 0.2 landed")
OPTIONS = "--model wrn-10-1 --dataset npz --batch-size 32 --lr 0.05 --precision fp32 --seed 3"


@pytest.fixture(scope="module")
def v02_source(tmp_path_factory) -> Path:
    """0.2's package, from git; the test is skipped, saying why, where the history is absent."""
    target = tmp_path_factory.mktemp("v02")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", V02, "src"], capture_output=True, timeout=60
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {V02} (wideresnet 0.2) is not in this checkout's history")
    (target / "src.tar").write_bytes(archive.stdout)
    with tarfile.open(target / "src.tar") as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def v02(source: Path, *args) -> subprocess.CompletedProcess:
    """`wrn ARGS` as wideresnet 0.2 runs it."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, "-m", "wideresnet", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def v02_run(v02_source, npz, tmp_path_factory) -> Path:
    """A finished 1-epoch run, written by 0.2 (`--checkpoint-every 4`: a mid-epoch save too)."""
    out = tmp_path_factory.mktemp("v02runs") / "run"
    version = v02(v02_source, "--version").stdout
    assert "0.2.0" in version
    v02(
        v02_source,
        "train",
        *OPTIONS.split(),
        "--epochs",
        "1",
        "--milestones",
        "2",
        "--checkpoint-every",
        "4",
        "--data-dir",
        npz,
        "--out",
        out,
    )
    return out


def test_a_02_run_resumes_exactly_as_02_resumes_it(v02_source, v02_run, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(v02_run, ours)
    shutil.copytree(v02_run, theirs)
    assert cli("train", "--resume", ours, "--epochs", "3").returncode == 0
    v02(v02_source, "train", "--resume", theirs, "--epochs", "3")
    assert metrics(ours, timing=False) == metrics(theirs, timing=False)
    a = torch.load(ours / "checkpoint.pt", weights_only=True)
    b = torch.load(theirs / "checkpoint.pt", weights_only=True)
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("epoch", "step_in_epoch", "global_step", "data_order", "config_changes"):
        assert a[key] == b[key], key
    result, expected = (json.loads((r / "result.json").read_text()) for r in (ours, theirs))
    assert result["test_error"] == expected["test_error"] and result["flags"] == expected["flags"]


def test_a_02_checkpoint_from_mid_epoch_resumes_exactly(v02_source, v02_run, tmp_path):
    """checkpoint.prev.pt of the 0.2 run was saved after step 4 of 6: resumed from there."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for run in (ours, theirs):
        run.mkdir()
        shutil.copy(v02_run / "config.json", run / "config.json")
        shutil.copy(v02_run / "checkpoint.prev.pt", run / "checkpoint.pt")
    assert torch.load(ours / "checkpoint.pt", weights_only=True)["step_in_epoch"] == 4
    assert cli("train", "--resume", ours).returncode == 0
    v02(v02_source, "train", "--resume", theirs)
    assert metrics(ours, timing=False) == metrics(theirs, timing=False)
    assert metrics(ours, timing=False) == metrics(v02_run, timing=False)


def test_a_02_run_evaluates_exports_and_predicts(v02_source, v02_run, tmp_path):
    recorded = json.loads((v02_run / "result.json").read_text())
    report = json.loads(cli("eval", v02_run, "--json").stdout)
    assert report["test_error"] == recorded["test_error"] and report["finished"] is True
    ours = tmp_path / "ours.safetensors"
    assert cli("export", v02_run, "--format", "safetensors", "--out", ours).returncode == 0
    theirs = tmp_path / "theirs.safetensors"
    v02(v02_source, "export", v02_run, "--format", "safetensors", "--out", theirs)
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        logits = [m(m.input_transform(x)) for m in map(wideresnet.load_model, (ours, theirs))]
    assert torch.equal(logits[0], logits[1])  # a 0.2 export loads and gives the same logits


@pytest.mark.spawns
def test_a_02_table_run_reports_as_02_reports_it(v02_source, npz, tmp_path):
    out = tmp_path / "exp"
    table = ["table", "run", "table6", "--dataset", "npz", "--data-dir", npz]
    table += ["--paper-dataset", "cifar10", "--rows", "16-4", "--epochs", "1", "--out", out]
    v02(
        v02_source, *table, "--", "--model", "wrn-10-1", "--batch-size", "32", "--precision", "fp32"
    )
    theirs = json.loads(v02(v02_source, "report", out, "--format", "json").stdout)["cells"]
    ours = json.loads(cli("report", out, "--format", "json").stdout)["cells"]
    keys = ("table", "id", "dataset", "paper", "median", "min", "max", "runs", "finished")
    keys += ("epochs", "shortened", "official_data", "flags", "params")
    assert [{k: c[k] for k in keys} for c in ours] == [{k: c[k] for k in keys} for c in theirs]


def test_a_02_import_evaluates_and_exports(v02_source, npz, tmp_path):
    source = tmp_path / "model.pt7"
    torch.save({"params": authors_params(wideresnet.create_model("wrn-10-1", 4))}, source)
    imported = tmp_path / "imported.pt"
    v02(v02_source, "import-official", source, "--out", imported)
    report = json.loads(
        cli("eval", imported, "--dataset", "npz", "--data-dir", npz, "--json").stdout
    )
    assert report["images"] == 64
    assert (
        cli("export", imported, "--format", "safetensors", "--out", tmp_path / "m.st").returncode
        == 0
    )
