"""What a user (or a hostile folder) hands in: images of odd modes, bombs and oversized zip
members, labels that are not class numbers, caches and records that are torn or changed,
downloads stopped by SIGTERM, model files, pictures and foreign checkpoints that do not fit.
Each is one line naming the thing and a non-zero exit, with nothing lost; real files
throughout (16-bit PNGs, FIFOs, devices, a real slow HTTP server)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
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
    learnable_npz,
    leftovers,
    one_line_error,
    png_bytes,
    spawn,
    write_cifar10,
    write_image_folder,
    wrn,
)
from PIL import Image

from wideresnet import create_model, load_dataset
from wideresnet.data.folders import MAX_IMAGE_BYTES
from wideresnet.errors import DataError

# --------------------------------------------------------------------------------------------
# Images, labels, bombs, oversized members
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


# --------------------------------------------------------------------------------------------
# Data: CIFAR labels, the decoded cache, WRN_DATA_DIR, downloads
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


@pytest.mark.spawns
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
# Model files, images to predict, imports
# --------------------------------------------------------------------------------------------


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


@pytest.mark.exports
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


@pytest.mark.exports
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


@pytest.mark.spawns
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


@pytest.mark.spawns
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


@pytest.mark.spawns
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


@pytest.mark.exports
def test_imported_checkpoints_export_to_onnx_and_eval_asks_for_data(tmp_path):

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
