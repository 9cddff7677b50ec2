"""Every file the package reads whole goes through one reader (files.read_bounded): a FIFO, a
link to /dev/zero, a 2 GB sparse file or deep nesting in place of a config, a grid, a shards
index, a label CSV, the CPU-settings cache, a run's metrics or log, or an experiment's plan is
one line naming the file (or, for the project's own caches and records, ignored), never a
hang, an exhausted memory or an internal error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, one_line_error, packed


def fifo(path: Path) -> None:
    os.mkfifo(path)


def dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def sparse(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(2 << 30)  # 2 GB that take no disk


def deep(path: Path) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    path.write_text(f"x = {nested}\n" if path.suffix == ".toml" else nested)


BAD = {"fifo": fifo, "dev-zero": dev_zero, "sparse-2GB": sparse, "deep": deep}


pytestmark = pytest.mark.timeout(60)  # a read that hangs fails its test, not the suite


TINY = "--model wrn-10-1 --dataset npz --epochs 1 --batch-size 32 --precision fp32"


def on_shards(shards: Path, out: Path, *more: str):
    """The tiny run of TINY, on a shards folder."""
    options = TINY.replace("npz", "shards").split()
    return cli("train", *options, "--data-dir", shards, "--out", out, *more)


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_config_or_grid_file_is_one_line(tmp_path, bad):
    config, grid = tmp_path / "c.json", tmp_path / "g.toml"
    BAD[bad](config)
    BAD[bad](grid)
    line = one_line_error(cli("train", "--config", config, "--out", tmp_path / "run"))
    assert str(config) in line
    line = one_line_error(cli("table", "show", grid))
    assert str(grid) in line


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_shards_index_is_one_line(npz, tmp_path, bad):
    shards = packed(npz, tmp_path / "shards")
    (shards / "index.json").unlink()
    BAD[bad](shards / "index.json")
    result = on_shards(shards, tmp_path / "r")
    assert "index.json" in one_line_error(result)


@pytest.mark.parametrize("bad", ["fifo", "dev-zero", "sparse-2GB"])
def test_a_bad_label_csv_is_one_line(tmp_path, bad):
    (tmp_path / "inet" / "val").mkdir(parents=True)
    BAD[bad](tmp_path / "labels.csv")
    result = cli(
        "data",
        "prepare",
        "imagenet",
        "--data-dir",
        tmp_path / "inet",
        "--val-labels",
        tmp_path / "labels.csv",
    )
    assert "labels.csv" in one_line_error(result)


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_cpu_settings_cache_is_ignored(npz, tmp_path, isolated_cache, bad):
    BAD[bad](isolated_cache / "cpu-settings.json")
    result = cli(
        "train", *TINY.split(), "--train-limit", "64", "--data-dir", npz, "--out", tmp_path / "r"
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def experiment(npz, tmp_path_factory) -> Path:
    """An experiment folder with one finished run of a table cell."""
    exp = tmp_path_factory.mktemp("exp") / "exp"
    tag = ("--experiment", "table6/16-4@cifar10")
    out = exp / "run"
    assert cli("train", *TINY.split(), *tag, "--data-dir", npz, "--out", out).returncode == 0
    return exp


@pytest.mark.parametrize("bad", BAD)
def test_bad_records_of_an_experiment_are_said_and_the_rest_reported(experiment, tmp_path, bad):
    exp = tmp_path / "exp"
    shutil.copytree(experiment, exp, ignore=shutil.ignore_patterns("*.pt"))
    second = exp / "second"
    shutil.copytree(exp / "run", second)
    (second / "metrics.jsonl").unlink()
    BAD[bad](second / "metrics.jsonl")
    (exp / "logs").mkdir()
    BAD[bad](exp / "logs" / "second.log")
    BAD[bad](exp / "plan.json")
    status = cli("table", "status", exp, "--json")
    assert status.returncode == 0, status.stderr
    states = {r["path"]: r for r in json.loads(status.stdout)["runs"]}
    assert states["run"]["state"] == "finished"
    assert f"{exp / 'plan.json'}: " in status.stderr and "its entries are ignored" in status.stderr
    if bad != "deep":  # a deep line is no epoch record: the run reads, without its epochs
        assert (
            states["second"]["state"] == "failed" and "metrics.jsonl" in states["second"]["error"]
        )
    report = cli("report", exp, "--format", "json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["cells"][0]["runs"] >= 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i["splits"]["train"][0].update(images="abc"), "needs a count and a SHA-256"),
        (lambda i: i.pop("splits"), "splits must map each split"),
        (lambda i: i.update(classes=5), "classes must be a list of names"),
        (lambda i: i.update(shape=[32, 32]), "shape must be [height, width, channels]"),
    ],
    ids=["images-text", "no-splits", "classes-number", "shape-short"],
)
def test_a_shards_index_of_the_wrong_shape_is_one_line(npz, tmp_path, change, message):
    shards = packed(npz, tmp_path / "shards")
    index = json.loads((shards / "index.json").read_text())
    change(index)
    (shards / "index.json").write_text(json.dumps(index))
    result = on_shards(shards, tmp_path / "r")
    line = one_line_error(result)
    assert "index.json" in line and message in line


def test_shard_labels_outside_the_classes_are_one_line_for_either_loader(npz, tmp_path):
    import hashlib

    shards = packed(npz, tmp_path / "shards")
    index = json.loads((shards / "index.json").read_text())
    entry = index["splits"]["train"][0]
    data = bytearray((shards / entry["file"]).read_bytes())
    pixels = entry["images"] * int(np.prod(index["shape"]))
    header = len(data) - 8 * entry["images"] - pixels
    data[header : header + 8] = (99).to_bytes(8, "little")  # the first label: class 99 of 4
    (shards / entry["file"]).write_bytes(bytes(data))
    entry["sha256"] = hashlib.sha256(bytes(data)).hexdigest()  # consistent, but wrong
    (shards / "index.json").write_text(json.dumps(index))
    for loader in ("stream", "resident"):
        result = on_shards(shards, tmp_path / loader, "--loader", loader)
        assert "train labels from 0 to 99, but index.json names 4 classes" in one_line_error(result)


def test_pack_refuses_what_it_cannot_write_whole_and_leaves_nothing_half_written(npz, tmp_path):
    from helpers import write_image_folder
    from PIL import Image

    users = tmp_path / "users"
    users.mkdir()
    (users / "train-00000.bin").write_text("the user's own file")
    line = one_line_error(
        cli("data", "pack", "--dataset", "npz", "--data-dir", npz, "--out", users)
    )
    assert "not an empty folder" in line
    assert (users / "train-00000.bin").read_text() == "the user's own file"
    empty = tmp_path / "empty.npz"
    with np.load(npz) as arrays:
        values = {**arrays, "x_train": arrays["x_train"][:0], "y_train": arrays["y_train"][:0]}
    np.savez(empty, **values)
    line = one_line_error(
        cli("data", "pack", "--dataset", "npz", "--data-dir", empty, "--out", tmp_path / "e")
    )
    assert "the train split has no images" in line
    mixed = tmp_path / "mixed"
    write_image_folder(mixed, np.random.default_rng(0), size=32)
    for path in (mixed / "test").rglob("*.png"):
        Image.new("RGB", (64, 64)).save(path)
    out = tmp_path / "mixed-shards"
    line = one_line_error(
        cli("data", "pack", "--dataset", "folder", "--data-dir", mixed, "--out", out)
    )
    assert "test images are 64x64x3, train's 32x32x3" in line and "--image-size" in line
    assert not list(out.glob("*.bin")) and not (out / "index.json").exists()
