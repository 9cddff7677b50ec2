"""Tests on the real CIFAR-10 copy in ../shared/data (marker `slow`; they run last).

`test_short_training_learns` runs in every `python -m pytest`: WRN-10-1 for 2 epochs on the
first 10,000 training images must reach at most 65% error on the first 2,000 test images
(chance is 90%; measured 58.15% in bf16, 16 s on one thread of a 2-core EPYC). The
README's own 3-epoch command (all 50,000 images, at most 30%) is marked `long` and runs with
`python -m pytest -m long`: about 6 minutes on a 2-core CPU with AVX512-BF16, about 19 on a
2-core AVX2 CPU in fp32.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import SHARED_DATA, cli, metrics, wrn

from wideresnet import load_dataset

FOLDER = SHARED_DATA / "cifar10-jpeg"


@pytest.fixture(autouse=True)
def isolated_cache(real_data_cache, monkeypatch):
    """One decoded cache for the real data: the folder is decoded once per session."""
    monkeypatch.setenv("WRN_CACHE_DIR", str(real_data_cache))
    return real_data_cache


@pytest.mark.slow
def test_real_cifar10_jpeg_folder_and_zip():
    train, train_labels, classes = load_dataset("folder", FOLDER, "train")
    test, test_labels, _ = load_dataset("folder", FOLDER, "test")
    assert classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert train.shape == (50_000, 32, 32, 3) and test.shape == (10_000, 32, 32, 3)
    assert np.bincount(train_labels).tolist() == [5000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10
    means = train.reshape(-1, 3).mean(axis=0)
    assert np.all(np.abs(means - np.array([125.3, 122.9, 113.9])) < 1), means
    # the .zip of the same files gives the same arrays (its 10,000 test images: the train
    # split is the same code on five times the images)
    zipped = load_dataset("folder", SHARED_DATA / "cifar10-jpeg.zip", "test")
    assert np.array_equal(zipped[0], test) and np.array_equal(zipped[1], test_labels)
    assert zipped[2] == classes


@pytest.mark.slow
def test_short_training_learns(tmp_path):
    out = tmp_path / "run"
    schedule = "--epochs 2 --milestones 2 --train-limit 10000 --eval-limit 2000"
    model = "--model wrn-10-1 --dataset folder"
    result = cli("train", *f"{model} {schedule}".split(), "--data-dir", FOLDER, "--out", out)
    assert result.returncode == 0, result.stderr
    assert [r["lr"] for r in metrics(out)] == pytest.approx([0.1, 0.02])
    final = json.loads((out / "result.json").read_text())
    assert final["train_images"] == 10_000 and final["test_images"] == 2_000
    errors = [round(r["test_error"], 2) for r in metrics(out)]
    print(f"WRN-10-1, 2 short epochs on real CIFAR-10 (JPEG copy): test error by epoch {errors}")
    assert final["test_error"] <= 65.0, errors  # chance is 90%


@pytest.mark.spawns
@pytest.mark.long
@pytest.mark.timeout(3 * 3600)  # 19 minutes on a 2-core AVX2 CPU in fp32
def test_readme_command_three_epochs_reaches_30_percent(tmp_path):
    out = tmp_path / "run"
    result = wrn(
        *"train --model wrn-16-2 --dataset folder --data-dir".split(),
        FOLDER,
        *"--epochs 3 --lr 0.1 --milestones 2,3 --out".split(),
        out,
        timeout=3 * 3600,
    )
    assert result.returncode == 0, result.stderr
    assert [r["lr"] for r in metrics(out)] == pytest.approx([0.1, 0.02, 0.004])
    final = json.loads((out / "result.json").read_text())
    assert final["test_images"] == 10_000 and final["train_images"] == 50_000
    print(
        f"WRN-16-2, 3 epochs: test error {final['test_error']:.2f}% (last epoch), "
        f"{final['wall_seconds']['total']:.0f}s wall clock, {final['environment']['precision']}"
    )
    assert final["test_error"] <= 30.0, final["test_error"]
