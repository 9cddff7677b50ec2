"""Nothing lost, nothing silent: each fault a hostile user (or an unlucky machine) produces,
with the real mechanism: concurrent processes, a real small file system or a file-size limit,
real bit flips, real 16-bit PNGs, a real slow HTTP server, a real memory limit."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    FileServer,
    authors_params,
    cli,
    cli_with,
    learnable_npz,
    metrics,
    one_line_error,
    png_bytes,
    tiny_config,
    wait_for,
    with_file_size_limit,
    wrn,
)

from wideresnet import create_model, load_dataset
from wideresnet.data.folders import MAX_IMAGE_BYTES
from wideresnet.errors import DataError, RunError
from wideresnet.train.checkpoint import content_checksum, load_checkpoint
from wideresnet.train.run import make_trainer
from wideresnet.train.rundir import RunDir


def args(npz: Path, out: Path, *extra, epochs: int = 3) -> list:
    options = f"--model wrn-10-1 --dataset npz --epochs {epochs} --batch-size 32 --lr 0.05"
    options += " --milestones 2,3 --precision fp32 --seed 3"
    return ["train", *options.split(), "--data-dir", npz, "--out", out, *extra]


def rows(run: Path) -> list[dict]:
    return metrics(run, timing=False)


@pytest.fixture(scope="module")
def straight(npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert cli(*args(npz, out)).returncode == 0
    return out


def spawn(*arguments) -> subprocess.Popen:
    command = [sys.executable, "-m", "wideresnet", *map(str, arguments)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or ".part" in p.name)


# --------------------------------------------------------------------------------------------
# One writer per run directory
# --------------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_while_a_run_goes_on(npz, tmp_path):
    out = tmp_path / "run"
    first = spawn(*args(npz, out, epochs=200))
    wait_for(out / "checkpoint.pt", first)
    pid = str(first.pid)
    line = one_line_error(cli(*args(npz, out, "--overwrite")))
    assert "in use by another wrn process" in line and pid in line
    line = one_line_error(cli("train", "--resume", out))
    assert "in use by another wrn process" in line
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 143
    assert json.loads((out / "config.json").read_text())["epochs"] == 200  # run A's, untouched
    assert load_checkpoint(out / "checkpoint.pt").config["epochs"] == 200


def test_the_lock_of_a_killed_run_is_taken_over_and_said_so(npz, tmp_path, straight):
    out = tmp_path / "run"
    first = spawn(*args(npz, out, "--checkpoint-every", "2"))
    wait_for(out / "checkpoint.pt", first)
    first.kill()  # SIGKILL: no chance to clean up
    first.wait()
    resumed = cli("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over {out / '.lock'} from pid {first.pid}" in resumed.stderr
    assert rows(out) == rows(straight)


# --------------------------------------------------------------------------------------------
# --overwrite checks everything first and keeps the old run until the new one checkpoints
# --------------------------------------------------------------------------------------------


def test_overwrite_with_a_bad_option_leaves_the_old_run_intact(npz, straight, tmp_path):
    before = {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()}
    line = one_line_error(cli(*args(tmp_path / "typo.npz", straight, "--overwrite")))
    assert "typo.npz" in line
    line = one_line_error(cli(*args(npz, straight, "--overwrite", "--model", "wrn-11-1")))
    assert "wrn-11-1" in line
    after = {p.name: p.read_bytes() for p in straight.iterdir() if p.is_file()}
    assert after == before


def test_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(npz, tmp_path):
    out = tmp_path / "run"
    assert cli(*args(npz, out, epochs=1)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    failed = cli_with("nan", 2, *args(npz, out, "--overwrite", "--lr", "0.01"))
    assert failed.returncode == 1 and "no good checkpoint was saved yet" in failed.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
    assert not [p for p in out.iterdir() if p.name.startswith(".replaced")]
    replaced = cli(*args(npz, out, "--overwrite", "--lr", "0.01", epochs=1))
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "config.json").read_text())["lr"] == 0.01
    assert not [p for p in out.iterdir() if p.name.startswith(".replaced")]


# --------------------------------------------------------------------------------------------
# Full disks: a real small file system, else a real file-size limit
# --------------------------------------------------------------------------------------------


def test_disk_full_during_a_checkpoint_keeps_the_previous_and_resume_finishes(
    npz, straight, small_fs
):
    size = (straight / "checkpoint.pt").stat().st_size
    fs = small_fs(int(2.5 * size) // 4096 * 4096)  # room for two checkpoints, not three
    out = fs.path / "run"
    failed = cli(*args(npz, out))
    line = one_line_error(failed, code=1)
    assert f"cannot write {out / 'checkpoint.pt'}" in line and "No space left on device" in line
    assert "MiB free" in line
    assert leftovers(fs.path) == []
    kept = load_checkpoint(out / "checkpoint.pt")  # verifies: not torn
    assert (
        kept.epochs_trained == 2 and load_checkpoint(out / "checkpoint.prev.pt").epochs_trained == 1
    )
    fs.resize(16 << 20)  # space again
    resumed = cli("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert rows(out) == rows(straight)


def test_disk_full_before_config_json_is_one_line_and_leaves_nothing(npz, small_fs):
    fs = small_fs(64 << 10)
    (fs.path / "filler").write_bytes(b"\0" * ((64 << 10) - 4096))
    out = fs.path / "run"
    line = one_line_error(cli(*args(npz, out)), code=1)
    assert f"cannot write {out / 'config.json'}" in line
    assert leftovers(fs.path) == [] and not (out / "config.json").exists()


def test_a_file_size_limit_during_a_checkpoint_is_one_line(npz, tmp_path, straight):
    out = tmp_path / "run"
    limit = (straight / "checkpoint.pt").stat().st_size // 2
    result = wrn(*args(npz, out), preexec_fn=with_file_size_limit(limit))
    line = one_line_error(result, code=1)
    assert f"cannot write {out / 'checkpoint.pt'}: File too large" in line
    assert leftovers(out) == [] and not (out / "checkpoint.pt").exists()


def test_import_official_on_a_full_disk_and_over_an_existing_file(tmp_path, small_fs):
    source = tmp_path / "model.pt7"
    torch.save({"params": authors_params(create_model("wrn-16-2", 10))}, source)
    fs = small_fs(256 << 10)
    line = one_line_error(cli("import-official", source, "--out", fs.path / "ours.pt"), code=1)
    assert "cannot write" in line and "ours.pt" in line
    assert list(fs.path.iterdir()) == []
    existing = tmp_path / "ours.pt"
    existing.write_bytes(b"keep me")
    line = one_line_error(cli("import-official", source, "--out", existing))
    assert "exists" in line and "--overwrite" in line
    assert existing.read_bytes() == b"keep me"
    assert cli("import-official", source, "--out", existing, "--overwrite").returncode == 0


# --------------------------------------------------------------------------------------------
# Checkpoints: checksums, foreign files, crafted fields
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


def test_a_flipped_bit_is_caught_and_the_previous_checkpoint_used(npz, tmp_path, straight):
    out = tmp_path / "run"
    assert cli_with("sigterm", 9, *args(npz, out)).returncode == 143
    flip_a_bit_in_the_weights(out / "checkpoint.pt")
    resumed = cli("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "fails its checksum" in resumed.stderr and "falling back to" in resumed.stderr
    assert rows(out) == rows(straight)


def test_a_corrupt_newest_checkpoint_never_replaces_the_good_previous(npz, tmp_path):
    out = tmp_path / "run"
    assert cli_with("sigterm", 9, *args(npz, out)).returncode == 143
    good = (out / "checkpoint.prev.pt").read_bytes()  # end of epoch 1
    flip_a_bit_in_the_weights(out / "checkpoint.pt")
    # resumed from the previous one, stopped again at once: one save after the fallback
    assert cli_with("sigterm", 1, "train", "--resume", out).returncode == 143
    assert (out / "checkpoint.prev.pt").read_bytes() == good  # not the corrupt one
    (out / "checkpoint.pt").unlink()  # as if killed before the new one was renamed in
    assert cli("train", "--resume", out).returncode == 0


def test_a_checkpoint_of_another_run_is_refused(npz, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert cli_with("sigterm", 9, *args(npz, ours)).returncode == 143
    assert cli(*args(npz, theirs, "--seed", "5", epochs=1)).returncode == 0
    (ours / "checkpoint.pt").write_bytes((theirs / "checkpoint.pt").read_bytes())
    line = one_line_error(cli("train", "--resume", ours))
    assert "belongs to another run" in line and "seed 5" in line and "seed 3" in line
    assert len(rows(ours)) == 1  # its metrics were not rewritten


def write_with_checksum(path: Path, state: dict) -> None:
    """A checkpoint file of these fields, with the checksum they make (as a crafted file)."""
    torch.save({**state, "checksum": content_checksum(state)}, path)


def test_crafted_fields_with_a_valid_checksum_are_one_line(straight, tmp_path):
    state = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert content_checksum(state) == state["checksum"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes((straight / "config.json").read_bytes())
    write_with_checksum(run / "checkpoint.pt", {**state, "epoch": "3"})
    line = one_line_error(cli("train", "--resume", run))
    assert "field epoch is a str" in line
    write_with_checksum(run / "checkpoint.pt", {**state, "model": [1, 2]})
    line = one_line_error(cli("eval", run / "checkpoint.pt"))
    assert "field model is a list" in line


# --------------------------------------------------------------------------------------------
# Paths: stored absolute; a moved dataset named again on resume
# --------------------------------------------------------------------------------------------


def test_a_relative_data_dir_is_stored_absolute_and_resumes_from_anywhere(npz, tmp_path, straight):
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.npz").write_bytes(npz.read_bytes())
    relative = cli(*args(Path("tiny.npz"), Path("run"), epochs=1), cwd=work)
    assert relative.returncode == 0, relative.stderr
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["data_dir"] == str(work / "tiny.npz")
    elsewhere = cli("train", "--resume", work / "run", "--epochs", "2", cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr


def test_a_moved_dataset_is_accepted_on_resume_when_it_is_the_same_data(npz, tmp_path, straight):
    out = tmp_path / "run"
    assert cli_with("sigterm", 9, *args(npz, out)).returncode == 143
    moved = tmp_path / "moved" / "data.npz"
    moved.parent.mkdir()
    moved.write_bytes(npz.read_bytes())
    other = learnable_npz(tmp_path / "other.npz", seed=9)
    line = one_line_error(cli("train", "--resume", out, "--data-dir", other))
    assert "not the data this run trained on" in line
    resumed = cli("train", "--resume", out, "--data-dir", moved)
    assert resumed.returncode == 0, resumed.stderr
    assert rows(out) == rows(straight)
    result = json.loads((out / "result.json").read_text())
    assert [c["key"] for c in result["config_changes"]] == ["data_dir"]
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(moved)


# --------------------------------------------------------------------------------------------
# Inputs: image modes, labels, bombs, oversized members, strict types, numbers checked first
# --------------------------------------------------------------------------------------------


def image_folder(root: Path, files: dict[str, bytes]) -> Path:
    for split in ("train", "test"):
        for name, data in files.items():
            (root / split / "a").mkdir(parents=True, exist_ok=True)
            (root / split / "a" / name).write_bytes(data)
    return root


def test_16_bit_pngs_decode_to_the_right_8_bit_values(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")  # mode I;16: a real 16-bit greyscale PNG
    colour = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    root = image_folder(tmp_path, {"0.png": buffer.getvalue(), "1.png": png_bytes(colour, 2, 16)})
    images, _, _ = load_dataset("folder", root, "train")
    assert np.array_equal(images[0][..., 0], np.round(grey / 257).astype(np.uint8))
    assert np.abs(images[1].astype(int) - np.round(colour / 257)).max() <= 1
    assert images[0].max() < 255 or grey.max() >= 65408  # not all white


def test_a_32_bit_float_image_is_refused_by_name(tmp_path):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ones((8, 8), np.float32)).save(buffer, "TIFF")
    root = image_folder(tmp_path, {"float.tif": buffer.getvalue()})
    with pytest.raises(DataError, match="float.tif: a 32-bit float image"):
        load_dataset("folder", root, "train")


def test_a_decompression_bomb_is_refused_by_name(tmp_path):
    bomb = png_bytes(np.zeros((10_000, 10_000), bool), 0, 1)  # 100 Mpixels in a few KB
    assert len(bomb) < 100_000
    root = image_folder(tmp_path, {"bomb.png": bomb})
    with pytest.raises(DataError, match="bomb.png: 10000x10000 pixels, over the"):
        load_dataset("folder", root, "train")


def test_an_oversized_zip_member_is_refused_before_it_is_read(tmp_path):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for split in ("train", "test"):
            z.writestr(f"{split}/a/huge.png", b"\0" * (MAX_IMAGE_BYTES + 1))
    assert archive.stat().st_size < MAX_IMAGE_BYTES // 100
    with pytest.raises(DataError, match="huge.png: 67,108,865 bytes, over the"):
        load_dataset("folder", archive, "train")


@pytest.mark.parametrize(
    "labels, message",
    [(np.eye(4, dtype=np.int64)[np.arange(16) % 4], "one-hot"), (np.arange(16) % 4 * 1.0, "float")],
    ids=["one-hot", "float"],
)
def test_labels_must_be_1d_integers(tmp_path, labels, message):
    x = np.zeros((16, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=labels, x_test=x, y_test=np.arange(16) % 4)
    with pytest.raises(DataError, match=message):
        load_dataset("npz", tmp_path / "d.npz", "train")


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
    line = one_line_error(cli(*args(npz, out, option, value)))
    assert message in line and not out.exists()


# --------------------------------------------------------------------------------------------
# Non-finite values: the truly good checkpoint, never a non-finite save, a resume that works
# --------------------------------------------------------------------------------------------


def test_a_nan_before_any_checkpoint_says_none_exists(npz, tmp_path):
    out = tmp_path / "run"
    failed = cli_with("nan", 2, *args(npz, out))
    line = one_line_error(failed, code=1)
    assert "no good checkpoint was saved yet" in line and "lower --lr" in line
    assert not (out / "checkpoint.pt").exists()


def test_a_nan_names_the_good_checkpoint_and_its_advice_is_accepted(npz, tmp_path):
    out = tmp_path / "run"
    line = one_line_error(cli_with("nan", 8, *args(npz, out)), code=1)
    assert f"the last good checkpoint is {out / 'checkpoint.pt'} (epoch 1, step 0)" in line
    assert "--lr LOWER" in line
    resumed = cli("train", "--resume", out, "--lr", "0.02")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((out / "result.json").read_text())
    change = result["config_changes"][0]
    assert (change["key"], change["from"], change["to"], change["epoch"]) == ("lr", 0.05, 0.02, 2)
    assert any("changed on resume: lr 0.05 -> 0.02" in flag for flag in result["flags"])
    assert [r["lr"] for r in rows(out)] == pytest.approx([0.05, 0.004, 0.0008])
    extended = cli("train", "--resume", out, "--epochs", "4")  # a finished run, extended
    assert extended.returncode == 0, extended.stderr
    assert [r["epoch"] for r in rows(out)] == [1, 2, 3, 4]


def test_non_finite_weights_are_never_saved(npz, tmp_path):
    trainer = make_trainer(tiny_config(npz), RunDir(tmp_path))
    with torch.no_grad():
        trainer.model.bn.running_var[0] = float("inf")
    with pytest.raises(RunError, match="non-finite weights"):
        trainer.save()
    assert not (tmp_path / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------------
# Caches and records rebuild themselves; downloads clean up on SIGTERM; out of memory
# --------------------------------------------------------------------------------------------


def test_empty_or_malformed_caches_and_records_are_rebuilt(tmp_path, isolated_cache):
    from helpers import write_image_folder

    from wideresnet.data import official

    write_image_folder(tmp_path / "images", np.random.default_rng(1), per_class=2)
    first = load_dataset("folder", tmp_path / "images", "train")
    (entry,) = (isolated_cache / "decoded").glob("*train*.npz")
    entry.write_bytes(b"")  # a 0-byte entry, as a full disk once left
    again = load_dataset("folder", tmp_path / "images", "train")
    assert np.array_equal(first[0], again[0]) and entry.stat().st_size > 0
    (isolated_cache / "verified.json").write_text("null")
    blob = tmp_path / "blob"
    blob.write_bytes(b"hello")
    official.verify_md5(blob, "5d41402abc4b2a76b9719d911017c592")
    assert json.loads((isolated_cache / "verified.json").read_text())  # rebuilt, not a crash


def test_sigterm_during_a_download_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "data"
    with FileServer() as server:
        server.files["cifar-10-python.tar.gz"] = os.urandom(4 << 20)
        server.pause = 0.05  # about 5 s for the whole file
        command = ["data", "download", "--dataset", "cifar10", "--data-dir", target]
        process = spawn(*command, "--url", server.url("cifar-10-python.tar.gz"))
        deadline = time.monotonic() + 60
        while not (target.is_dir() and leftovers(target)):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "nothing half-downloaded was kept" in stderr
    assert list(target.iterdir()) == []


def with_memory_limit(limit: int):
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def test_out_of_memory_is_one_line_with_the_batch_size(tmp_path):
    data = learnable_npz(tmp_path / "big.npz", n_train=2048, n_test=64, size=32)
    out = tmp_path / "run"
    options = "--model wrn-16-8 --dataset npz --batch-size 2048 --precision fp32 --epochs 1"
    command = ["train", *options.split(), "--data-dir", data, "--out", out]
    result = wrn(*command, preexec_fn=with_memory_limit(6 << 30))
    line = one_line_error(result, code=1)
    assert "out of memory on cpu during training at batch size 2048" in line
    assert "--batch-size 1024" in line
