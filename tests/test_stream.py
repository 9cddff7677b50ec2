"""Streaming past one device's memory: the streaming loader's batches are a function of (seed,
epoch, position) whatever the workers and processes, equal to the resident loader's for a set
both can hold, resumed mid-epoch bit for bit; ImageNet's layout, its oddities and its val/
folder sorted from a devkit; shards that round-trip and refuse damage; a bad file mid-run;
memory bounded by --data-memory; WRN-50-2 with the paper's ImageNet recipe."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    cli,
    learnable_npz,
    metrics,
    one_line_error,
    write_image_folder,
    write_imagenet_tree,
    wrn_with,
)

from wideresnet.data import BatchLoader, TrainAugment, load_dataset
from wideresnet.data.imagenet import listing
from wideresnet.data.stream import ArrayImages, FileImages, StreamLoader
from wideresnet.data.transforms import Crop
from wideresnet.errors import DataError

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_imagenet_tree(
        tmp_path_factory.mktemp("imagenet") / "ilsvrc", np.random.default_rng(0)
    )


def files_of(root: Path, split: str = "train") -> FileImages:
    paths, labels, _ = listing(root, split)
    return FileImages(root, paths, labels)


RANDOM_SIZED = dict(crop=Crop("random-sized", 32, 40, 32), jitter=0.4, lighting_std=0.1)


def epoch(loader, number: int = 1, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.batches(number, start))


def test_imagenet_layout_names_classes_and_loads_its_oddities(tree):
    paths, labels, classes = listing(tree, "train")
    assert classes[:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert len(paths) == 18 and sorted(set(labels.tolist())) == [0, 1, 2]
    assert labels[:3].tolist() == [0, 1, 2]  # classes interleaved, as folder datasets
    images = files_of(tree)
    loader = StreamLoader(images, 6, shuffle=False, crop=Crop("random-sized", 32, 40, 32))
    batches = epoch(loader, 0)
    assert sum(len(y) for _, y in batches) == 18  # CMYK, greyscale and a PNG named .JPEG
    assert all(x.shape[1:] == (3, 32, 32) and torch.isfinite(x).all() for x, _ in batches)
    val, _, _ = listing(tree, "test")  # test means val/
    assert len(val) == 6 and all(p.startswith("val/") for p in val)


@pytest.mark.parametrize("options", [RANDOM_SIZED, dict(crop=Crop("random-resized", 24, 28, 24))])
def test_stream_batches_are_the_same_with_0_1_and_2_workers(tree, options):
    def run(workers: int):
        loader = StreamLoader(files_of(tree), 4, shuffle=True, seed=3, workers=workers, **options)
        return epoch(loader, 2)

    reference = run(0)
    assert len(reference) == 4
    for workers in (1, 2):
        for (x, y), (rx, ry) in zip(run(workers), reference, strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry)
    other_epoch = StreamLoader(files_of(tree), 4, shuffle=True, seed=3, **options)
    assert not torch.equal(epoch(other_epoch, 3)[0][0], reference[0][0])


def test_each_process_takes_its_slice_of_every_global_batch(tree):
    def run(rank: int, world: int):
        images = files_of(tree)
        loader = StreamLoader(
            images, 6, shuffle=True, seed=1, rank=rank, world=world, **RANDOM_SIZED
        )
        return epoch(loader)

    whole = run(0, 1)
    halves = [run(0, 2), run(1, 2)]
    for b, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][b][0], halves[1][b][0]]), x)
        assert torch.equal(torch.cat([halves[0][b][1], halves[1][b][1]]), y)


def test_a_resumed_epoch_starts_at_its_next_batch_without_the_ones_before(tree, monkeypatch):
    loader = StreamLoader(files_of(tree), 4, shuffle=True, seed=2, **RANDOM_SIZED)
    full = epoch(loader)
    read = []
    original = FileImages.read
    monkeypatch.setattr(FileImages, "read", lambda self, i: read.append(i) or original(self, i))
    rest = epoch(loader, 1, start=2)
    assert len(read) == 8  # two batches of four: the first two were never decoded
    for (x, y), (fx, fy) in zip(rest, full[2:], strict=True):
        assert torch.equal(x, fx) and torch.equal(y, fy)


def test_the_resident_and_streaming_loaders_give_the_same_batches(tmp_path):
    """The paper's crop and flip, a policy and Cutout: the streaming loader (decoded arrays,
    or the image files themselves) gives the resident loader's batches bit for bit."""
    write_image_folder(tmp_path / "images", np.random.default_rng(4), per_class=12, fmt="PNG")
    images, labels, _ = load_dataset("folder", tmp_path / "images", "train")
    mean, std = (120.0, 110.0, 100.0), (60.0, 61.0, 62.0)
    augment = dict(policy="trivialaugment", cutout=8)
    common = dict(shuffle=True, seed=5, mean=mean, std=std)
    resident = BatchLoader(images, labels, 8, augment=TrainAugment(**augment), **common)
    sources = [
        ArrayImages(images, labels, "arrays"),
        files_of_folder(tmp_path / "images"),
    ]
    expected = epoch(resident, 2)
    for source in sources:
        streamed = StreamLoader(source, 8, augment=TrainAugment(**augment), workers=1, **common)
        for (x, y), (rx, ry) in zip(epoch(streamed, 2), expected, strict=True):
            assert torch.equal(y, ry) and torch.equal(x, rx)
    test = StreamLoader(sources[1], 7, mean=mean, std=std)
    plain = BatchLoader(images, labels, 7, mean=mean, std=std)
    for (x, _), (rx, _) in zip(epoch(test, 0), epoch(plain, 0), strict=True):
        assert torch.equal(x, rx)


def files_of_folder(root: Path) -> FileImages:
    from wideresnet.data.folders import FolderSource, folder_files

    files, _, _ = folder_files(FolderSource(root), "train", stats=False)
    return FileImages(root, [f for f, _ in files], np.array([label for _, label in files]))


# --------------------------------------------------------------------------------------------
# wrn train streaming: resume bit for bit, a bad file, bounded memory
# --------------------------------------------------------------------------------------------

FOLDER_RUN = "--model wrn-10-1 --dataset folder --batch-size 8 --epochs 2 --milestones 2"
FOLDER_RUN += " --precision fp32 --seed 4 --loader stream --workers 2"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder") / "images"
    write_image_folder(root, np.random.default_rng(6), per_class=16, fmt="JPEG")
    return root


@pytest.mark.spawns
def test_a_streaming_run_stopped_mid_epoch_resumes_bit_for_bit(folder, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    common = ["train", *FOLDER_RUN.split(), "--data-dir", folder]
    assert cli(*common, "--out", straight).returncode == 0
    config = json.loads((straight / "config.json").read_text())
    assert config["resolved"]["loader"] == "stream"
    assert "asked for" in config["resolved"]["reasons"]["loader"]
    result = wrn_with("sigterm", 8, *common, "--out", stopped)  # epoch 2, step 2 of 6
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert cli("train", "--resume", stopped).returncode == 0
    assert metrics(stopped, timing=False) == metrics(straight, timing=False)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(stopped / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_file_that_fails_mid_run_stops_it_and_the_run_goes_on_once_excluded(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, np.random.default_rng(7), per_class=16, fmt="JPEG")
    out = tmp_path / "run"
    args = ["train", *FOLDER_RUN.split(), "--data-dir", root, "--out", out]
    assert cli(*args, "--epochs", "1").returncode == 0
    kept = (out / "checkpoint.pt").read_bytes()
    bad = root / "train" / "dog" / "0009.jpeg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated, after the first epoch
    line = one_line_error(cli("train", "--resume", out, "--epochs", "2"))
    assert "train/dog/0009.jpeg" in line and "unreadable image" in line
    assert "last checkpoint intact" in line and "wrn-exclude.txt" in line and "--resume" in line
    assert (out / "checkpoint.pt").read_bytes() == kept
    fresh = ["train", *FOLDER_RUN.split(), "--data-dir", root, "--out", tmp_path / "fresh"]
    line = one_line_error(cli(*fresh, "--epochs", "1"))  # no checkpoint yet: the advice works
    assert "before its first checkpoint" in line and "then start it again with --overwrite" in line
    (root / "wrn-exclude.txt").write_text("train/dog/0009.jpeg\n")
    assert cli(*fresh, "--epochs", "1", "--overwrite").returncode == 0
    resumed = cli("train", "--resume", out, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    flags = json.loads((out / "result.json").read_text())["flags"]
    assert any("1 image(s) excluded by wrn-exclude.txt" in flag for flag in flags)


def test_both_loaders_apply_one_set_of_split_rules(folder, tmp_path):
    """The limits, the held-out tail and the class checks are one set of rules
    (data/splits.py): each loader counts the same images and refuses the same data."""
    counts = {}
    for loader in ("resident", "stream"):
        out = tmp_path / loader
        limits = ["--train-limit", "40", "--val-size", "8", "--val-and-test", "--eval-limit", "10"]
        args = [*FOLDER_RUN.split(), "--data-dir", folder, "--epochs", "1", *limits]
        result = cli("train", *args, "--loader", loader, "--out", out)
        assert result.returncode == 0, result.stderr
        counts[loader] = result.stdout.split(" parameters, ")[1].split(" (")[0]
    assert counts["resident"] == counts["stream"] == "32 train / 10 test images", counts
    renamed = tmp_path / "renamed"
    shutil.copytree(folder, renamed)
    (renamed / "test" / "emu").rename(renamed / "test" / "owl")  # as many classes, not the same
    lines = set()
    for loader in ("resident", "stream"):
        args = [*FOLDER_RUN.split(), "--data-dir", renamed, "--loader", loader]
        lines.add(one_line_error(cli("train", *args, "--out", tmp_path / f"r-{loader}")))
    assert lines == {f"wrn: error: {renamed}: test has classes not in train: ['owl']"}


@pytest.mark.spawns
def test_memory_stays_under_the_budget_for_a_set_several_times_larger(tmp_path):
    """Decoded, the set is about 8 times --data-memory; the training process's own peak RSS
    stays under that of a run on a tiny set plus the budget (workers 0: every image is
    decoded in the process measured)."""
    big, tiny = tmp_path / "big", tmp_path / "tiny"
    write_image_folder(big, np.random.default_rng(8), per_class=200, size=160, fmt="JPEG")
    write_image_folder(tiny, np.random.default_rng(9), per_class=4, size=160, fmt="JPEG")
    decoded = 3 * 200 * 160 * 160 * 3 * 3 // 2  # train and test splits of 3 classes
    budget = 8 << 20
    assert decoded > 6 * budget

    def peak(data: Path, out: Path) -> int:
        options = "--model wrn-10-1 --dataset folder --batch-size 8 --epochs 1 --precision fp32"
        options += " --crop random-resized --crop-size 32 --eval-resize 36 --workers 0"
        options += " --eval-batch-size 8"  # the same batches in both runs: the same activations
        command = [sys.executable, str(HERE / "rss_child.py"), "train", *options.split()]
        command += ["--data-memory", "8M", "--data-dir", str(data), "--out", str(out)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        config = json.loads((out / "config.json").read_text())
        assert config["resolved"]["loader"] == "stream"
        return int(result.stdout.strip().splitlines()[-1].split()[-1])

    baseline = peak(tiny, tmp_path / "a")
    assert peak(big, tmp_path / "b") < baseline + budget


def test_auto_holds_a_small_set_and_streams_one_over_the_budget(folder, tmp_path):
    small = cli(
        "train",
        *FOLDER_RUN.replace("--loader stream", "--loader auto").split(),
        "--image-size",
        "32",
        "--data-dir",
        folder,
        "--out",
        tmp_path / "a",
    )
    assert small.returncode == 0, small.stderr
    resolved = json.loads((tmp_path / "a" / "config.json").read_text())["resolved"]
    assert resolved["loader"] == "resident" and "fits" in resolved["reasons"]["loader"]
    over = cli(
        "train",
        *FOLDER_RUN.replace("--loader stream", "--loader auto").split(),
        "--image-size",
        "32",
        "--data-memory",
        "10K",
        "--data-dir",
        folder,
        "--out",
        tmp_path / "b",
        "--epochs",
        "1",
    )
    assert over.returncode == 0, over.stderr
    resolved = json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]
    assert (
        resolved["loader"] == "stream"
        and "is over --data-memory 10K" in resolved["reasons"]["loader"]
    )


# --------------------------------------------------------------------------------------------
# ImageNet: prepare, verify, the paper's recipe on WRN-50-2
# --------------------------------------------------------------------------------------------


def flat_val(tmp_path: Path) -> tuple[Path, list[str]]:
    root = write_imagenet_tree(tmp_path / "ilsvrc", np.random.default_rng(1), oddities=False)
    wnids = []
    for number, path in enumerate(sorted((root / "val").rglob("*.JPEG")), 1):
        wnids.append(path.parent.name)
        path.rename(root / "val" / f"ILSVRC2012_val_{number:08d}.JPEG")
    for folder in (root / "val").iterdir():
        if folder.is_dir():
            folder.rmdir()
    return root, wnids


def fake_devkit(path: Path, wnids: list[str]) -> Path:
    """ILSVRC2012_devkit_t12.tar.gz as the official one: data/meta.mat (synsets with
    ILSVRC2012_ID and WNID) and data/ILSVRC2012_validation_ground_truth.txt."""
    import scipy.io

    order = sorted(set(wnids))
    synsets = np.zeros(len(order), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, wnid in enumerate(order):
        synsets[i] = (i + 1, wnid, f"words of {wnid}")
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    truth = "".join(f"{order.index(w) + 1}\n" for w in wnids).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (
            ("meta.mat", meta.getvalue()),
            ("ILSVRC2012_validation_ground_truth.txt", truth),
        ):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("labels", ["devkit", "csv"])
def test_prepare_imagenet_sorts_the_flat_val_folder(tmp_path, labels):
    root, wnids = flat_val(tmp_path)
    if labels == "devkit":
        source = fake_devkit(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", wnids)
    else:
        source = tmp_path / "LOC_val_solution.csv"
        rows = [f"ILSVRC2012_val_{n:08d},{w} 1 2 3 4" for n, w in enumerate(wnids, 1)]
        source.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    result = cli("data", "prepare", "imagenet", "--data-dir", root, "--val-labels", source)
    assert result.returncode == 0, result.stderr
    assert "6 files sorted into 3 class folders" in result.stdout
    for number, wnid in enumerate(wnids, 1):
        assert (root / "val" / wnid / f"ILSVRC2012_val_{number:08d}.JPEG").is_file()
    again = cli("data", "prepare", "imagenet", "--data-dir", root, "--val-labels", source)
    assert again.returncode == 0 and "0 files sorted" in again.stdout  # idempotent


def test_prepare_imagenet_moves_nothing_when_a_file_has_no_class(tmp_path):
    root, wnids = flat_val(tmp_path)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    line = one_line_error(
        cli("data", "prepare", "imagenet", "--data-dir", root, "--val-labels", csv)
    )
    assert "no class for 5 of the 6 files" in line and "nothing was moved" in line
    assert len(list((root / "val").glob("*.JPEG"))) == 6
    rows = [f"ILSVRC2012_val_{n:08d},{w} 1 2 3 4" for n, w in enumerate(wnids, 1)]
    twice = rows + ["ILSVRC2012_val_00000001,n09999999 1 2 3 4"]  # one image, two classes
    csv.write_text("ImageId,PredictionString\n" + "\n".join(twice) + "\n")
    line = one_line_error(
        cli("data", "prepare", "imagenet", "--data-dir", root, "--val-labels", csv)
    )
    assert f"ILSVRC2012_val_00000001 is listed twice, as {wnids[0]} and as n09999999" in line
    csv.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    shutil.rmtree(root / "train" / wnids[-1])  # train/ lacks one class of val's
    line = one_line_error(
        cli("data", "prepare", "imagenet", "--data-dir", root, "--val-labels", csv)
    )
    assert f"class(es) that {root / 'train'} does not have" in line and "nothing was moved" in line
    assert len(list((root / "val").glob("*.JPEG"))) == 6


def test_data_verify_decodes_every_file_and_lists_the_broken_ones(tmp_path):
    root = write_imagenet_tree(tmp_path / "ilsvrc", np.random.default_rng(2))
    assert (
        cli(
            "data", "verify", "--dataset", "imagenet", "--data-dir", root, "--workers", "2"
        ).returncode
        == 0
    )
    broken = root / "train" / "n01443537" / "n01443537_train_4.JPEG"
    broken.write_bytes(broken.read_bytes()[: len(broken.read_bytes()) // 2])
    (root / "val" / "n01440764" / "n01440764_val_0.JPEG").write_bytes(b"not an image")
    # over the pixel limit training refuses (a decompression bomb): verify says so too
    from PIL import Image

    Image.new("1", (9500, 9500)).save(root / "train" / "n01443537" / "bomb.png")
    result = cli("data", "verify", "--dataset", "imagenet", "--data-dir", root, "--workers", "2")
    assert result.returncode == 2
    assert "n01443537_train_4.JPEG" in result.stderr and "n01440764_val_0.JPEG" in result.stderr
    assert "bomb.png: 9500x9500 pixels, over the 89,478,485-pixel limit" in result.stderr
    assert "3 file(s) do not decode" in result.stderr and "Warning" not in result.stderr


IMAGENET_RUN = ["--preset", "imagenet", "--batch-size", "4", "--epochs", "1", "--train-limit", "8"]
IMAGENET_RUN += [
    "--eval-limit",
    "4",
    "--eval-batch-size",
    "4",
    "--precision",
    "fp32",
    "--workers",
    "1",
]


def test_wrn_50_2_trains_with_the_papers_imagenet_recipe(tree, tmp_path):
    out = tmp_path / "run"
    one_step = ["--train-limit", "4"]  # one step of 4 images at 224 px
    result = cli("train", *IMAGENET_RUN, *one_step, "--data-dir", tree, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "scaled linearly to batch 4: 0.0015625" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "wrn-50-2" and config["crop"] == "random-sized"
    assert config["resolved"]["loader"] == "stream"
    final = json.loads((out / "result.json").read_text())
    assert final["params"] == 68_883_240 - 1000 * 2049 + 3 * 2049  # a 3-class head
    assert final["train_images"] == 4 and final["test_images"] == 4
    assert metrics(out)[0]["lr"] == pytest.approx(0.1 * 4 / 256)


@pytest.mark.spawns
def test_wrn_50_2_trains_on_two_processes(tree, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += ["-m", "wideresnet", "train", *IMAGENET_RUN, "--device", "cpu"]
    command += ["--crop-size", "64", "--eval-resize", "72", "--eval-crop", "64"]  # not 224 px
    command += ["--data-dir", str(tree), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["resolved"]["processes"] == 2
    assert json.loads((out / "result.json").read_text())["train_images"] == 8


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def test_shards_round_trip_and_refuse_damage(tmp_path):
    npz = learnable_npz(tmp_path / "d.npz", n_train=96, n_test=32, size=16)
    out = tmp_path / "shards"
    packed = cli("data", "pack", "--dataset", "npz", "--data-dir", npz, "--out", out)
    assert packed.returncode == 0, packed.stderr
    for split in ("train", "test"):
        ours = load_dataset("shards", out, split)
        theirs = load_dataset("npz", npz, split)
        assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])
        assert ours[2] == theirs[2]
    shard = next(out.glob("train-*.bin"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{shard.name}: fails its SHA-256"):
        load_dataset("shards", out, "train")
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(DataError, match=f"{shard.name}: .* bytes, expected"):
        load_dataset("shards", out, "train")


def test_a_run_streams_from_shards_as_it_would_hold_them(tmp_path):
    npz = learnable_npz(tmp_path / "d.npz", n_train=96, n_test=32, size=16)
    out = tmp_path / "shards"
    assert cli("data", "pack", "--dataset", "npz", "--data-dir", npz, "--out", out).returncode == 0
    options = "--model wrn-10-1 --dataset shards --batch-size 32 --epochs 2 --precision fp32"
    runs = {}
    for loader in ("resident", "stream"):
        run = tmp_path / loader
        args = ["train", *options.split(), "--loader", loader, "--data-dir", out, "--out", run]
        assert cli(*args, "--workers", "1").returncode == 0
        runs[loader] = metrics(run, timing=False)
    assert runs["stream"] == runs["resident"]


@pytest.mark.spawns
def test_tables_7_and_8_run_imagenet_rows_with_the_papers_recipe(tree, tmp_path):
    shown = json.loads(cli("table", "show", "table8", "--json").stdout)
    assert shown["runnable"] and shown["cost"]["per_run_of_each_row"]["imagenet"]["gpu_hours"] > 0
    command = ["table", "run", "table7", "--dataset", "imagenet", "--data-dir", tree]
    printed = cli(*command, "--out", tmp_path / "exp", "--print-commands")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert len(lines) == 7 and all("--preset imagenet" in line for line in lines)
    assert (
        "--model wrn-18-1.5-imagenet" in lines[1]
        and "--experiment table7/wrn-18-1.5@imagenet" in lines[1]
    )
