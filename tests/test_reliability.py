"""The cases of the third attack (../shared/reviews/attack-3.md) that 0.2 failed, each by its
id: what a user gets wrong, or a hostile folder plants, gives one line naming the thing, a
non-zero exit, and nothing lost or written outside the run. Real mechanisms throughout: real
symlinks, FIFOs and devices, a real tmpfs (full or read-only), real SIGKILLs, real concurrent
processes, real files in each format."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    cli,
    learnable_npz,
    metrics,
    one_line_error,
    write_cifar10,
    write_image_folder,
    wrn,
    wrn_with,
)
from PIL import Image

from wideresnet import create_model
from wideresnet.train.checkpoint import content_checksum


def args(npz: Path, out: Path, *extra, epochs: int = 3, model: str = "wrn-10-1") -> list:
    options = f"--model {model} --dataset npz --epochs {epochs} --batch-size 32 --lr 0.05"
    options += " --milestones 2,3 --precision fp32 --seed 3"
    return ["train", *options.split(), "--data-dir", npz, "--out", out, *extra]


@pytest.fixture(scope="module")
def finished(npz, tmp_path_factory) -> Path:
    """A finished 3-epoch WRN-10-1 run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert cli(*args(npz, out)).returncode == 0
    return out


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    (to / ".lock").unlink(missing_ok=True)
    return to


def files_of(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


# --------------------------------------------------------------------------------------------
# The run directory: the lock (N43, N42, N41, 2.2)
# --------------------------------------------------------------------------------------------


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


def test_a_read_only_run_folder_is_one_line(finished, small_fs):
    fs = small_fs(4 << 20)
    run = fs.path / "run"
    shutil.copytree(finished, run)
    (run / "result.json").unlink()  # a stopped run, to resume
    fs.read_only()
    line = one_line_error(wrn("train", "--resume", run), code=1)
    assert f"cannot write {run / '.lock'}" in line and "Read-only file system" in line
    fs.resize(4 << 20)


def test_a_disk_already_full_at_start_is_one_line_naming_the_lock(npz, small_fs):
    fs = small_fs(4 << 20)
    fs.fill()
    out = fs.path / "run"
    line = one_line_error(wrn(*args(npz, out, epochs=1)), code=1)
    assert str(out) in line and "No space left on device" in line
    (fs.path / "filler").unlink()
    assert wrn(*args(npz, out, epochs=1)).returncode == 0  # no --overwrite needed


# --------------------------------------------------------------------------------------------
# A checkpoint carries its run's identity (N46, 1.11, 1.12)
# --------------------------------------------------------------------------------------------


def test_another_runs_checkpoint_with_the_same_seed_is_refused_by_resume_and_eval(
    npz, finished, tmp_path
):
    other = tmp_path / "other"
    assert cli(*args(npz, other, epochs=2)).returncode == 0
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
    assert cli(*args(npz, other, epochs=1, model="wrn-16-1")).returncode == 0
    run = copy_run(finished, tmp_path / "run")
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    line = one_line_error(cli("eval", run))
    assert "belongs to another run" in line and "wrn-16-1" in line and "wrn-10-1" in line


def write_with_checksum(path: Path, state: dict) -> None:
    torch.save({**state, "checksum": content_checksum(state)}, path)


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


# --------------------------------------------------------------------------------------------
# An interrupted --overwrite (N44) and the temporary files of a kill (N47)
# --------------------------------------------------------------------------------------------


def test_a_killed_overwrite_leaves_the_old_run_named_and_resume_restores_it(
    npz, finished, tmp_path
):
    run = copy_run(finished, tmp_path / "run")
    before = files_of(run)
    killed = wrn_with("sigkill", 2, *args(npz, run, "--overwrite", "--lr", "0.01", epochs=1))
    assert killed.returncode == -9, killed.stderr
    aside = [p for p in run.iterdir() if p.name.startswith(".replaced-")]
    assert len(aside) == 1 and files_of(aside[0]) == before
    line = one_line_error(cli("eval", run))
    assert aside[0].name in line and "--resume" in line
    line = one_line_error(cli(*args(npz, run, epochs=1)))
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


def test_a_later_overwrite_that_saves_removes_what_a_killed_one_left(npz, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    killed = wrn_with("sigkill", 2, *args(npz, run, "--overwrite", epochs=1))
    assert killed.returncode == -9
    done = cli(*args(npz, run, "--overwrite", "--lr", "0.02", epochs=1))
    assert done.returncode == 0, done.stderr
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced-")]
    assert json.loads((run / "config.json").read_text())["lr"] == 0.02


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
# Inputs: model files (N18, N19, N20), images (N21, N23, N24, N26), imports (N27, N33-N35)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(finished, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "good.safetensors"
    result = cli("export", finished, "--format", "safetensors", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def edited_export(exported: Path, to: Path, meta=None, tensors=None) -> Path:
    """The export with its metadata fields and tensors changed (None deletes one)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(exported), "pt") as f:
        metadata = f.metadata()
        weights = {k: f.get_tensor(k) for k in f.keys()}
    for fields, new in ((metadata, meta or {}), (weights, tensors or {})):
        for key, value in new.items():
            if value is None:
                fields.pop(key)
            else:
                fields[key] = value
    save_file(weights, str(to), metadata=metadata)
    return to


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"classes": "5"}, "classes must be a list"),
        ({"normalization": "{}"}, "mean"),
        ({"normalization": json.dumps({"mean": [1.0, 2.0, 3.0], "std": [0.0, 1.0, 1.0]})}, "std"),
        ({"input_size": "abc"}, "input_size 'abc' is not a whole number"),
        ({"input_size": "0"}, "input_size 0"),
        ({"input_size": "30000"}, "input_size 30000 is outside"),
        ({"model_options": "[1]"}, "model_options"),
        ({"format": None}, "not a wideresnet export"),
    ],
    ids=["classes", "no-mean", "std-0", "size-abc", "size-0", "size-30000", "options", "format"],
)
def test_bad_export_metadata_is_one_line_naming_the_file(
    exported, pictures, tmp_path, meta, message
):
    path = edited_export(exported, tmp_path / "bad.safetensors", meta=meta)
    onnx = ["export", path, "--format", "onnx", "--out", tmp_path / "m.onnx"]
    for command in (["predict", path, pictures / "a.jpg"], onnx):
        line = one_line_error(cli(*command))
        assert str(path) in line and message in line, line


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"fc.weight": torch.zeros(4, 3)}, "fc.weight"),
        ({"extra.weight": torch.zeros(2)}, "extra.weight"),
        ({"fc.bias": None}, "fc.bias"),
        ({"conv0.weight": torch.full((16, 3, 3, 3), float("nan"))}, "NaN"),
    ],
    ids=["shape", "extra", "missing", "nan"],
)
def test_weights_that_do_not_fit_are_one_line(exported, pictures, tmp_path, tensors, message):
    path = edited_export(exported, tmp_path / "bad.safetensors", tensors=tensors)
    line = one_line_error(cli("predict", path, pictures / "a.jpg"))
    assert str(path) in line and message in line, line


def test_an_export_whose_classes_do_not_fit_its_head_is_one_line(exported, tmp_path):
    path = edited_export(exported, tmp_path / "two.safetensors", meta={"classes": '["x", "y"]'})
    line = one_line_error(cli("export", path, "--format", "onnx", "--out", tmp_path / "m.onnx"))
    assert str(path) in line and "fc.weight" in line
    assert not (tmp_path / "m.onnx").exists()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (its data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_one_bad_image_never_stops_the_others(exported, pictures, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bomb.png").write_bytes(bomb_png(20000, 20000))
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "devzero.jpg").symlink_to("/dev/zero")
    os.mkfifo(bad / "fifo.jpg")
    good = pictures / "a.jpg"
    names = ["bomb.png", "zero.jpg", "devzero.jpg", "fifo.jpg"]
    result = wrn("predict", exported, good, *(bad / n for n in names), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stdout.startswith(f"{good}: ") and len(result.stdout.splitlines()) == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 4 and all(e.startswith("wrn: error: ") for e in errors)
    for name, line in zip(names, errors):
        assert name in line, line
    assert "not a regular file" in errors[2] and "not a regular file" in errors[3]
    assert "pixels" in errors[0]


def test_a_device_or_fifo_given_as_the_model_is_refused_by_name(pictures, tmp_path):
    (tmp_path / "m.safetensors").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.pt")
    for model in (tmp_path / "m.safetensors", tmp_path / "fifo.pt"):
        line = one_line_error(wrn("predict", model, pictures / "a.jpg", timeout=120))
        assert str(model) in line and "not a regular file" in line


def test_a_device_inside_a_training_folder_is_refused_by_name(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, np.random.default_rng(0), per_class=2)
    target = next((root / "train").iterdir()) / "zero.png"
    target.symlink_to("/dev/zero")
    line = one_line_error(cli("data", "verify", "--dataset", "folder", "--data-dir", root))
    assert "zero.png" in line and "not a regular file" in line


def test_no_images_is_one_line(exported, tmp_path):
    (tmp_path / "empty").mkdir()
    for given in (tmp_path / "empty", str(tmp_path / "nomatch*.jpg")):
        line = one_line_error(cli("predict", exported, given))
        assert "no images" in line and str(given) in line


def test_top_k_below_one_is_one_line_and_above_the_classes_is_clamped(exported, pictures):
    for k in ("-3", "0"):
        line = one_line_error(cli("predict", exported, pictures / "a.jpg", "--top-k", k))
        assert f"--top-k {k}" in line
    result = cli("predict", exported, pictures / "a.jpg", "--top-k", "100", "--json")
    assert result.returncode == 0 and len(json.loads(result.stdout)[0]["top"]) == 4


def test_a_non_ascii_path_on_an_ascii_terminal_prints(exported, pictures, tmp_path):
    folder = tmp_path / "dir with space ünïcødé 猫"
    folder.mkdir()
    shutil.copy(pictures / "a.jpg", folder / "a.jpg")
    result = wrn("predict", exported, folder, env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert "\\xfc" in result.stdout and "%" in result.stdout


def xternalz_file(path: Path, **changes) -> Path:
    """A checkpoint in xternalz's layout (its state_dict keys), of a WRN-16-2."""
    from test_handover import LAYOUTS, randomise

    state = randomise(LAYOUTS["xternalz"](), 1).state_dict()
    state.update(changes)
    torch.save({"state_dict": state}, path)
    return path


def test_imported_checkpoints_export_to_onnx_and_eval_asks_for_data(tmp_path):
    from helpers import authors_params

    official = tmp_path / "model.pt7"
    torch.save({"params": authors_params(create_model("wrn-16-2", 10))}, official)
    imports = {
        "xternalz": ["import", "--from", "xternalz", xternalz_file(tmp_path / "x.pt")],
        "official": ["import-official", official],
    }
    npz = learnable_npz(tmp_path / "d.npz", n_train=16, n_test=8, size=32, classes=10)
    for name, command in imports.items():
        out = tmp_path / f"{name}-ours.pt"
        assert cli(*command, "--out", out).returncode == 0
        onnx = cli("export", out, "--format", "onnx", "--out", tmp_path / f"{name}.onnx")
        assert onnx.returncode == 0 and "random images" in onnx.stdout, onnx.stderr
        line = one_line_error(cli("eval", out))
        assert "--data-dir" in line
        evaluated = cli("eval", out, "--dataset", "npz", "--data-dir", npz, "--json")
        assert evaluated.returncode == 0, evaluated.stderr


@pytest.mark.parametrize("layout", ["xternalz", "robustbench", "fixmatch"])
def test_a_value_that_is_not_a_tensor_is_one_line(tmp_path, layout):
    from test_handover import LAYOUTS, randomise

    state = randomise(LAYOUTS[layout](), 1).state_dict()
    state["fc.weight"] = 5
    torch.save({"state_dict": state}, tmp_path / "theirs.pt")
    line = one_line_error(
        cli("import", "--from", layout, tmp_path / "theirs.pt", "--out", tmp_path / "o.pt")
    )
    assert "fc.weight" in line
    assert not (tmp_path / "o.pt").exists()


def test_weights_that_are_nan_are_refused_at_import(tmp_path):
    from test_handover import LAYOUTS

    state = LAYOUTS["xternalz"]().state_dict()
    nan = {k: torch.full_like(v, float("nan")) for k, v in state.items() if v.is_floating_point()}
    source = xternalz_file(tmp_path / "x.pt", **nan)
    line = one_line_error(cli("import", "--from", "xternalz", source, "--out", tmp_path / "o.pt"))
    assert "NaN" in line and not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--mean", "1,2", "3 values"),
        ("--mean", "abc", "expected comma-separated numbers"),
        ("--std", "0,0,0", "std"),
        ("--std", "nan,nan,nan", "std"),
        ("--mean", "inf,0,0", "mean"),
    ],
)
def test_a_normalisation_that_would_give_nan_is_refused(tmp_path, option, value, message):
    source = xternalz_file(tmp_path / "x.pt")
    out = tmp_path / "o.pt"
    line = one_line_error(cli("import", "--from", "xternalz", source, "--out", out, option, value))
    assert option in line or message in line, line
    assert message in line, line
    assert not out.exists()


def test_hub_refuses_weights_of_another_model(finished):
    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ValueError, match="holds a wrn-10-1, not a wrn-28-10"):
        torch.hub.load(str(root), "wrn_28_10", source="local", weights=str(finished))


# --------------------------------------------------------------------------------------------
# Reports: broken or foreign run folders (N9-N12), --into (N13, N14), --plots (N16)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experiment(npz, tmp_path_factory) -> Path:
    """Two finished runs of one table cell (table6 16-4 on cifar10, run on the npz)."""
    root = tmp_path_factory.mktemp("exp") / "exp"
    for seed in (0, 1):
        out = root / "table6" / "16-4" / f"seed{seed}"
        tag = ["--experiment", "table6/16-4@cifar10", "--seed", str(seed), "--out", out]
        options = "--model wrn-10-1 --dataset npz --epochs 1 --batch-size 32 --precision fp32"
        result = cli("train", *options.split(), "--data-dir", npz, *tag)
        assert result.returncode == 0, result.stderr
    return root


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    path.write_text(json.dumps(change(value)))


def without(key):
    return lambda record: {k: v for k, v in record.items() if k != key}


BROKEN = {
    "N9-no-test-error": ("result.json", without("test_error")),
    "N9-no-wall-seconds": ("result.json", without("wall_seconds")),
    "N9-test-error-abc": ("result.json", lambda r: {**r, "test_error": "abc"}),
    "N9-result-a-list": ("result.json", lambda r: []),
    "N11-no-epochs": ("config.json", without("epochs")),
    "N11-no-dataset": ("config.json", without("dataset")),
    "N11-config-a-list": ("config.json", lambda r: [1, 2]),
    "N11-column-imagenet": ("config.json", lambda r: {**r, "experiment": "table6/16-4@imagenet"}),
    "N12-unknown-table": ("config.json", lambda r: {**r, "experiment": "table99/16-4@cifar10"}),
    "N12-unknown-row": ("config.json", lambda r: {**r, "experiment": "table6/nope@cifar10"}),
    "N12-dropout-x": ("config.json", lambda r: {**r, "dropout": "x"}),
}


@pytest.mark.parametrize("case", [*BROKEN, "N10-metrics-lines"])
def test_a_broken_run_folder_is_left_out_by_name_and_the_rest_reported(experiment, tmp_path, case):
    copy = tmp_path / "exp"
    shutil.copytree(experiment, copy)
    broken = copy / "table6" / "16-4" / "seed1"
    if case == "N10-metrics-lines":
        (broken / "metrics.jsonl").write_text('5\n[1]\n"x"\n')
        name = "metrics.jsonl"
    else:
        name, change = BROKEN[case]
        edit_json(broken / name, change)
    result = cli("report", copy, "--format", "json")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and str(broken) in warnings[0], result.stderr
    cells = json.loads(result.stdout)["cells"]
    if case == "N10-metrics-lines":  # its result still counts; its curve is left out
        assert "line 1, 2, 3 not an epoch record" in warnings[0]
        assert [c["runs"] for c in cells] == [2]
    else:
        assert "left out" in warnings[0]
        assert [c["runs"] for c in cells] == [1]


def readme_with_section(path: Path) -> Path:
    path.write_text("# T\n<!-- results:start -->\nold\n<!-- results:end -->\nend\n")
    return path


@pytest.mark.parametrize("mode", [0o644, 0o444])
def test_report_into_keeps_the_mode_of_the_file(experiment, tmp_path, mode):
    readme = readme_with_section(tmp_path / "README.md")
    readme.chmod(mode)
    assert cli("report", experiment, "--into", readme).returncode == 0
    assert (readme.stat().st_mode & 0o777) == mode
    assert "old" not in readme.read_text() and readme.read_text().endswith("end\n")


def test_report_into_writes_through_a_symlink_and_keeps_hard_links(experiment, tmp_path):
    target = readme_with_section(tmp_path / "target.md")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    assert cli("report", experiment, "--into", link).returncode == 0
    assert link.is_symlink() and "old" not in target.read_text()
    hard = readme_with_section(tmp_path / "hard.md")
    other = tmp_path / "other-name.md"
    os.link(hard, other)
    assert cli("report", experiment, "--into", hard).returncode == 0
    assert other.read_text() == hard.read_text() and "old" not in other.read_text()


def test_report_into_a_missing_file_or_a_folder_is_one_line(experiment, tmp_path):
    for target in (tmp_path / "missing.md", tmp_path):
        line = one_line_error(cli("report", experiment, "--into", target))
        assert str(target) in line


def test_report_plots_into_a_file_a_read_only_or_full_disk_is_one_line(
    experiment, tmp_path, small_fs
):
    taken = tmp_path / "taken.md"
    taken.write_text("x")
    line = one_line_error(cli("report", experiment, "--plots", taken))
    assert str(taken) in line and taken.read_text() == "x"
    full = small_fs(64 << 10)
    full.fill()
    line = one_line_error(cli("report", experiment, "--plots", full.path / "plots"), code=1)
    assert "No space left on device" in line
    assert not (full.path / "plots").exists()
    ro = small_fs(64 << 10)
    ro.read_only()
    line = one_line_error(cli("report", experiment, "--plots", ro.path / "plots"), code=1)
    assert "Read-only file system" in line


# --------------------------------------------------------------------------------------------
# Two table runs into one experiment (N3)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Data: CIFAR labels (4.12, 1.12), the decoded cache (7.1, N54), WRN_DATA_DIR (N51)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, message", [(["a"] * 20, "labels"), ([2**70] + [0] * 19, "labels")], ids=["str", "big"]
)
def test_cifar_labels_that_are_not_class_numbers_are_one_line(tmp_path, labels, message):
    import pickle

    write_cifar10(tmp_path, np.random.default_rng(0))
    batch_path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch = pickle.loads(batch_path.read_bytes())
    batch[b"labels"] = labels
    batch_path.write_bytes(pickle.dumps(batch, protocol=2))
    verify = ["data", "verify", "--dataset", "cifar10", "--data-dir", tmp_path, "--no-verify"]
    result = cli(*verify)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    warning, line = result.stderr.splitlines()
    assert warning.startswith("warning: --no-verify")
    assert str(batch_path) in line and message in line


def cache_entries(cache: Path, split: str) -> list[Path]:
    return sorted(cache.rglob(f"*{split}*.npz"))


@pytest.mark.parametrize("case", ["no-labels", "other-contents", "changed-pixel", "old-entry"])
def test_an_odd_or_changed_cache_entry_is_decoded_again(tmp_path, isolated_cache, case):
    from wideresnet import load_dataset

    root = tmp_path / "images"
    write_image_folder(root, np.random.default_rng(0), per_class=4)
    verify = ["data", "verify", "--dataset", "folder", "--data-dir", root]
    first = cli(*verify)
    assert first.returncode == 0 and "train: 12 images" in first.stdout, first.stdout
    [entry] = cache_entries(isolated_cache, "train")
    with np.load(entry) as cached:
        stored = {name: cached[name] for name in cached.files}
    images = stored["images"].copy()
    if case == "no-labels":  # the right key, short of an array
        del stored["labels"]
    elif case == "other-contents":
        stored["images"], stored["labels"] = images[:5], stored["labels"][:5]
    elif case == "changed-pixel":  # one byte changed on disk, its key and digest kept
        stored["images"][3, 7, 7, 1] ^= 0x40
    else:  # an entry of 0.3, written without a digest
        del stored["__sha256__"]
    np.savez(entry, **stored)
    again = cli(*verify)
    assert again.returncode == 0, again.stderr
    assert "train: 12 images" in again.stdout and "rebuilding" in again.stderr
    assert np.array_equal(load_dataset("folder", root, split="train")[0], images)


def test_wrn_data_dir_that_is_a_file_is_one_line(tmp_path):
    not_a_folder = tmp_path / "passwd"
    not_a_folder.write_text("root:x:0:0\n")
    line = one_line_error(
        cli(
            "train",
            "--model",
            "wrn-10-1",
            "--dataset",
            "cifar10",
            "--epochs",
            "1",
            "--out",
            tmp_path / "run",
            env={"WRN_DATA_DIR": str(not_a_folder)},
        )
    )
    assert "WRN_DATA_DIR" in line and str(not_a_folder) in line
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# Options (6.3): rules between fields, checked before any data is read
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--momentum", "0"], "--no-nesterov"),
        (["--lr-decay", "0"], "lr_decay"),
        (["--block", ""], "block: ''"),
        (["--warmup-epochs", "5"], "--warmup-epochs 5 is longer than the run"),
    ],
    ids=["momentum-0", "lr-decay-0", "block-empty", "warmup"],
)
def test_option_clashes_are_one_line_before_the_data_is_read(tmp_path, extra, message):
    missing = tmp_path / "not-there.npz"  # never reached: the options are refused first
    line = one_line_error(cli(*args(missing, tmp_path / "run", *extra, epochs=3)))
    assert message in line, line
    assert not (tmp_path / "run").exists()


def test_momentum_0_without_nesterov_trains(npz, tmp_path):
    result = cli(*args(npz, tmp_path / "run", "--momentum", "0", "--no-nesterov", epochs=1))
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# ONNX to a full disk (N28); Ctrl-C while torch is imported (N53)
# --------------------------------------------------------------------------------------------


def test_onnx_export_to_a_full_disk_is_one_line_and_leaves_nothing(finished, small_fs):
    fs = small_fs(128 << 10)
    fs.fill()
    out = fs.path / "m.onnx"
    line = one_line_error(cli("export", finished, "--format", "onnx", "--out", out), code=1)
    assert f"cannot write {out}" in line and "No space left on device" in line
    assert sorted(p.name for p in fs.path.iterdir()) == ["filler"]


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


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SIGINT_CHILD, "--version"], capture_output=True, text=True
    )
    line = one_line_error(result, code=130)
    assert "interrupted" in line


# --------------------------------------------------------------------------------------------
# Optional extras: every verb that needs one says which, in one line, before any work
# --------------------------------------------------------------------------------------------


class Hidden:
    """A meta path finder under which `names` (and their submodules) raise the real
    ModuleNotFoundError of a package that is not installed."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def hide(monkeypatch, *names: str) -> None:
    monkeypatch.setattr(sys, "meta_path", [Hidden(names), *sys.meta_path])
    for module in list(sys.modules):
        if module.split(".")[0] in names:
            monkeypatch.delitem(sys.modules, module)


def verbs_with_extras(finished, exported, experiment, npz, tmp_path):
    """(the packages hidden, the extra, the command line) of every verb that needs an extra."""
    onnx = ["export", finished, "--format", "onnx", "--out", tmp_path / "m.onnx"]
    table = ["table", "run", "table6", "--dataset", "npz", "--data-dir", npz, "--rows", "16-4"]
    table += ["--paper-dataset", "cifar10", "--epochs", "1", "--out", tmp_path / "exp", "--"]
    table += ["--model", "wrn-10-1", "--tensorboard"]
    return [
        (
            ("safetensors",),
            "export",
            [*onnx[:2], "--format", "safetensors", "--out", tmp_path / "m.st"],
        ),
        (("safetensors",), "export", ["predict", exported, tmp_path]),
        (("onnx",), "export", onnx),
        (("onnxruntime",), "export", onnx),
        (("onnxscript",), "export", onnx),
        (("matplotlib",), "plots", ["report", experiment, "--plots", tmp_path / "plots"]),
        (("tensorboard",), "tensorboard", [*args(npz, tmp_path / "run"), "--tensorboard"]),
        (("tensorboard",), "tensorboard", table),
        (("submitit",), "cluster", [*table[:-4], "--launcher", "submitit-local"]),
    ]


def test_every_verb_with_its_extra_missing_says_what_to_install(
    finished, exported, experiment, npz, tmp_path, monkeypatch
):
    for names, extra, command in verbs_with_extras(finished, exported, experiment, npz, tmp_path):
        with monkeypatch.context() as patch:
            hide(patch, *names)
            line = one_line_error(cli(*command))
        assert f'pip install "wideresnet[{extra}]"' in line and names[0] in line, (command, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was written
