"""Names and links read from files stay inside their folders, and a runner signals only the
processes it started: a wnid of a label CSV, a shard's file name, a run's `.replaced-*` folder,
a ledger's records, an experiment's plan.json keys, and the pid in a run's lock."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, one_line_error, packed
from PIL import Image

from wideresnet.data.transforms import Crop, decode_crop, random_sized_box
from wideresnet.experiments.cluster import descends_from


def flat_val(root: Path, names: list[str]) -> Path:
    """DIR/val/ with flat JPEGs (as ImageNet ships it) and DIR/train/ with one class."""
    for folder, files in ((root / "val", names), (root / "train" / "n01440764", ["t0"])):
        folder.mkdir(parents=True)
        for name in files:
            Image.new("RGB", (40, 30), (90, 20, 200)).save(folder / f"{name}.JPEG")
    return root


@pytest.mark.parametrize("wnid", ["../../escaped", "/absolute/escaped", ".."])
def test_a_wnid_that_is_not_a_folder_name_moves_nothing(tmp_path, wnid):
    root = flat_val(tmp_path / "inet", ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"])
    csv = "ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n"
    csv += f"ILSVRC2012_val_00000002,{wnid} 1 2 3 4\n"
    (root / "LOC_val_solution.csv").write_text(csv)
    line = one_line_error(cli("data", "prepare", "imagenet", "--data-dir", root))
    assert "is not a name inside its folder" in line and repr(wnid) in line
    assert sorted(p.name for p in (root / "val").iterdir()) == [
        "ILSVRC2012_val_00000001.JPEG",
        "ILSVRC2012_val_00000002.JPEG",
    ]
    assert not (tmp_path / "escaped").exists() and not Path("/absolute").exists()


def test_a_class_folder_that_is_a_link_is_refused(tmp_path):
    root = flat_val(tmp_path / "inet", ["ILSVRC2012_val_00000001"])
    victim = tmp_path / "victim"
    victim.mkdir()
    (root / "val" / "n01440764").symlink_to(victim)
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n"
    )
    line = one_line_error(cli("data", "prepare", "imagenet", "--data-dir", root))
    assert "not a class folder" in line and not list(victim.iterdir())
    os.mkfifo(root / "fifo.csv")  # a FIFO as the label file is refused, not waited on
    line = one_line_error(
        cli("data", "prepare", "imagenet", "--data-dir", root, "--val-labels", root / "fifo.csv")
    )
    assert "not a regular file" in line


def test_a_shard_named_outside_its_folder_is_refused(npz, tmp_path):
    shards = packed(npz, tmp_path / "shards")
    index = json.loads((shards / "index.json").read_text())
    first = index["splits"]["train"][0]
    (tmp_path / "elsewhere.bin").write_bytes((shards / first["file"]).read_bytes())
    first["file"] = "../elsewhere.bin"
    (shards / "index.json").write_text(json.dumps(index))
    options = "--model wrn-10-1 --dataset shards --epochs 1 --batch-size 32 --precision fp32"
    result = cli("train", *options.split(), "--data-dir", shards, "--out", tmp_path / "run")
    line = one_line_error(result)
    assert "shard file '../elsewhere.bin' is not a name inside its folder" in line


@pytest.fixture(scope="module")
def tagged_run(npz, tmp_path_factory) -> Path:
    """A finished tiny run of a table cell, as `wrn table run` makes one."""
    out = tmp_path_factory.mktemp("exp") / "exp" / "run"
    options = "--model wrn-10-1 --dataset npz --epochs 1 --batch-size 32 --precision fp32"
    tag = ("--experiment", "table6/16-4@cifar10")
    assert cli("train", *options.split(), *tag, "--data-dir", npz, "--out", out).returncode == 0
    return out


def test_the_ledger_copies_no_link_and_no_large_file(tagged_run, tmp_path):
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(tagged_run.parent, exp, ignore=shutil.ignore_patterns("*.pt"))
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-KEY-MATERIAL")
    (exp / "run" / "metrics.jsonl").unlink()
    (exp / "run" / "metrics.jsonl").symlink_to(secret)
    ledger = tmp_path / "ledger"
    line = one_line_error(cli("table", "save", exp, "--to", ledger))
    assert "metrics.jsonl: a link" in line and not ledger.exists()
    (exp / "run" / "metrics.jsonl").unlink()
    with open(exp / "run" / "metrics.jsonl", "wb") as f:
        f.truncate(300 << 20)  # sparse: 300 MB that take no disk
    line = one_line_error(cli("table", "save", exp, "--to", ledger))
    assert "314,572,800 bytes" in line and "small regular files only" in line
    assert not ledger.exists()


def test_a_plan_key_outside_the_experiment_is_not_one_of_its_runs(tagged_run, tmp_path):
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(tagged_run.parent, exp)
    elsewhere = {"tag": "table6/16-4@cifar10", "seed": 0}
    (exp / "plan.json").write_text(json.dumps({str(tagged_run): elsewhere, "../x": elsewhere}))
    result = cli("table", "status", exp, "--json")
    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in json.loads(result.stdout)["runs"]] == ["run"]
    assert "is not a folder inside it; left out" in result.stderr


def test_an_aside_folder_that_is_a_link_is_never_moved_into_the_run(tagged_run, tmp_path):
    import shutil

    victim = tmp_path / "victim"
    shutil.copytree(tagged_run, victim)
    (victim / "notes.txt").write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tagged_run / "config.json", run / "config.json")
    (run / ".replaced-99999").symlink_to(victim)
    result = cli("train", "--resume", run)
    assert result.returncode == 2 and "internal error" not in result.stderr
    assert (victim / "notes.txt").read_text() == "precious" and (victim / "checkpoint.pt").exists()
    assert not (run / "notes.txt").exists() and not (run / "checkpoint.pt").exists()


@pytest.mark.spawns
def test_only_a_descendant_of_the_runner_is_signalled():
    child = subprocess.Popen(["sleep", "30"])
    try:
        grandchild_code = "import subprocess, sys; subprocess.run(['sleep', '30'])"
        parent = subprocess.Popen(["python3", "-c", grandchild_code])
        assert descends_from(child.pid, os.getpid())
        assert not descends_from(os.getpid(), child.pid)  # its parent is not its child
        assert not descends_from(child.pid, parent.pid)  # a sibling's pid: not ours to stop
        assert not descends_from(1, os.getpid()) and not descends_from(2**22 + 7, os.getpid())
        parent.kill()
        parent.wait()
    finally:
        child.kill()
        child.wait()


def test_a_tiny_image_falls_back_instead_of_a_box_of_side_0():
    for seed in range(50):  # a box, when there is one, has sides of 1 pixel at least
        box = random_sized_box(1, 1, np.random.default_rng(seed))
        assert box is None or box == (0, 0, 1, 1)
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (10, 200, 30)).save(buffer, "JPEG")
    crop = Crop("random-sized", 8, 8, 8)
    out = decode_crop(buffer.getvalue(), "tiny.jpg", crop, np.random.default_rng(0))
    assert out.shape == (8, 8, 3)


def test_a_claims_or_lock_path_that_is_not_a_file_is_one_line(npz, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / ".claims").write_text("not a folder")
    where = ["--dataset", "npz", "--data-dir", npz, "--paper-dataset", "cifar10", "--rows", "16-4"]
    quick = ["--", "--model", "wrn-10-1", "--batch-size", "32", "--precision", "fp32"]
    run = ["table", "run", "table6", *where, "--epochs", "1", "--out", exp, *quick]
    line = one_line_error(cli(*run))
    assert ".claims" in line and "must be a folder of lock files" in line
    (exp / ".claims").unlink()
    (exp / ".plan.lock").unlink(missing_ok=True)
    (exp / ".plan.lock").symlink_to(tmp_path / "elsewhere")  # a link is never followed
    line = one_line_error(cli(*run))
    assert ".plan.lock is a symlink" in line and not (tmp_path / "elsewhere").exists()
    (exp / ".plan.lock").unlink()
    (exp / ".table-runs.lock").unlink(missing_ok=True)
    (exp / ".table-runs.lock").symlink_to(tmp_path / "elsewhere")  # said before any run
    line = one_line_error(cli(*run))
    assert ".table-runs.lock is a symlink" in line and not (exp / "table6").exists()


def test_data_verify_with_fewer_than_one_worker_is_one_line(tmp_path):
    line = one_line_error(
        cli("data", "verify", "--dataset", "imagenet", "--data-dir", tmp_path, "--workers", "-1")
    )
    assert "--workers -1: at least 1 process" in line
