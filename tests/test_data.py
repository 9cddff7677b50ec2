"""Readers of the official formats, integrity checks, download, cache and the batch loader."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    FileServer,
    cifar_batch,
    cli,
    tar_gz,
    write_cifar10,
    write_cifar100,
    write_image_folder,
    write_svhn,
)

from wideresnet import data
from wideresnet.data import BatchLoader, DataError, TrainAugment, cache, load_dataset, official
from wideresnet.data.download import safe_extract

# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def test_cifar10_folder_reads_back_exactly(tmp_path):
    (x, y), (tx, ty) = write_cifar10(tmp_path, np.random.default_rng(0))
    images, labels, classes = load_dataset("cifar10", tmp_path, "train", verify=False)
    assert images.dtype == np.uint8 and images.shape == (100, 32, 32, 3)
    assert np.array_equal(images, x) and np.array_equal(labels, y)
    assert labels.dtype == np.int64 and classes[0] == "airplane" and len(classes) == 10
    test_images, test_labels, _ = load_dataset("cifar10", tmp_path, "test", verify=False)
    assert np.array_equal(test_images, tx) and np.array_equal(test_labels, ty)


def test_cifar10_archive_read_in_place(tmp_path):
    (x, y), _ = write_cifar10(tmp_path / "src", np.random.default_rng(1))
    root = tmp_path / "data"
    root.mkdir()
    tar_gz(
        tmp_path / "src" / "cifar-10-batches-py",
        "cifar-10-batches-py",
        root / "cifar-10-python.tar.gz",
    )
    images, labels, _ = load_dataset("cifar10", root, "train", verify=False)
    assert np.array_equal(images, x) and np.array_equal(labels, y)
    assert not (root / "cifar-10-batches-py").exists()  # read without unpacking


def test_cifar100_fine_and_coarse(tmp_path):
    written = write_cifar100(tmp_path, np.random.default_rng(2))
    x, fine, coarse = written["train"]
    images, labels, classes = load_dataset("cifar100", tmp_path, "train", verify=False)
    assert np.array_equal(images, x) and np.array_equal(labels, fine) and len(classes) == 100
    _, coarse_labels, coarse_classes = load_dataset(
        "cifar100", tmp_path, "test", verify=False, labels="coarse"
    )
    assert np.array_equal(coarse_labels, written["test"][2]) and len(coarse_classes) == 20


def test_official_md5_mismatch_names_the_file(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(0))
    with pytest.raises(DataError, match="batches.meta: md5 .* does not match the official"):
        load_dataset("cifar10", tmp_path, "train", verify=True)


def test_verified_file_is_not_rehashed(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    md5 = hashlib.md5(b"hello").hexdigest()
    official.verify_md5(path, md5)
    calls = []
    monkeypatch.setattr(cache, "file_digest", lambda p, algorithm: calls.append(p) or md5)
    official.verify_md5(path, md5)
    assert calls == []
    os.utime(path, ns=(1, 1))  # a changed mtime is checked again
    official.verify_md5(path, md5)
    assert calls == [path]


def test_truncated_and_corrupt_cifar_batches(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(0))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR batch"):
        load_dataset("cifar10", tmp_path, "train", verify=False)
    batch.write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, "train", verify=False)


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(0))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(
        pickle.dumps({b"data": Evil(), b"labels": []})
    )
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", tmp_path, "train", verify=False)
    assert not marker.exists()


def test_labels_out_of_range(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        cifar_batch(images, np.array([0, 1, 2, 3, 12]))
    )
    with pytest.raises(DataError, match="labels range over \\[0, 12\\]"):
        load_dataset("cifar10", tmp_path, "test", verify=False)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset("cifar10", tmp_path / "nope", "train")
    with pytest.raises(DataError, match="no cifar10 files found"):
        load_dataset("cifar10", tmp_path, "train")


# --------------------------------------------------------------------------------------------
# SVHN
# --------------------------------------------------------------------------------------------


def test_svhn_mat_files_with_label_10_for_zero(tmp_path):
    rng = np.random.default_rng(3)
    x, digits = write_svhn(tmp_path / "train_32x32.mat", rng, 40)
    ex, edigits = write_svhn(tmp_path / "extra_32x32.mat", rng, 25)
    write_svhn(tmp_path / "test_32x32.mat", rng, 10)
    images, labels, classes = load_dataset("svhn", tmp_path, "train", verify=False)
    assert np.array_equal(images, x) and np.array_equal(labels, digits)
    assert labels[0] == 0 and labels.max() <= 9 and classes == [str(d) for d in range(10)]
    both, both_labels, _ = load_dataset("svhn", tmp_path, "train+extra", verify=False)
    assert np.array_equal(both, np.concatenate([x, ex]))
    assert np.array_equal(both_labels, np.concatenate([digits, edigits]))


def test_svhn_decoded_cache_and_invalidation(tmp_path, isolated_cache):
    rng = np.random.default_rng(4)
    write_svhn(tmp_path / "test_32x32.mat", rng, 12)
    first = load_dataset("svhn", tmp_path, "test", verify=False)
    cached = list((isolated_cache / "decoded").glob("svhn-test_32x32.mat-*.npz"))
    assert len(cached) == 1
    again = load_dataset("svhn", tmp_path, "test", verify=False)
    assert np.array_equal(first[0], again[0])
    x, digits = write_svhn(tmp_path / "test_32x32.mat", rng, 7)  # the source changes
    changed, labels, _ = load_dataset("svhn", tmp_path, "test", verify=False)
    assert np.array_equal(changed, x) and np.array_equal(labels, digits)
    assert len(list((isolated_cache / "decoded").glob("svhn-test_32x32.mat-*.npz"))) == 1


def test_corrupt_svhn_file(tmp_path):
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 50)
    with pytest.raises(DataError, match="test_32x32.mat: not a readable SVHN"):
        load_dataset("svhn", tmp_path, "test", verify=False)


# --------------------------------------------------------------------------------------------
# Image folders and zip files
# --------------------------------------------------------------------------------------------


def test_image_folder_sorted_classes_interleaved_order(tmp_path):
    written = write_image_folder(tmp_path, np.random.default_rng(5))
    (tmp_path / "train" / ".hidden").mkdir()
    images, labels, classes = load_dataset("folder", tmp_path, "train")
    assert classes == ["cat", "dog", "emu"]
    assert labels.tolist() == [0, 1, 2] * 4  # classes interleaved: image i of each class
    assert np.array_equal(images[4], written[("train", "dog", 1)])  # PNG: exact pixels
    test_images, test_labels, _ = load_dataset("folder", tmp_path, "test")
    assert len(test_images) == 6 and sorted(test_labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_zip_of_the_same_layout_gives_identical_arrays(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, np.random.default_rng(6), fmt="JPEG")
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(root.rglob("*.jpeg")):
            z.write(path, path.relative_to(root).as_posix())
    for split in ("train", "test"):
        a = load_dataset("folder", root, split)
        b = load_dataset("folder", archive, split)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_val_folder_is_accepted_and_sizes_must_agree(tmp_path):
    write_image_folder(tmp_path, np.random.default_rng(7), per_class=2)
    os.rename(tmp_path / "test", tmp_path / "val")
    assert len(load_dataset("folder", tmp_path, "test")[0]) == 3
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "train" / "cat" / "9999.png")
    with pytest.raises(DataError, match="9999.png: image size differs"):
        load_dataset("folder", tmp_path, "train")
    resized, _, _ = load_dataset("folder", tmp_path, "train", image_size=32)
    assert resized.shape == (7, 32, 32, 3)


def test_unreadable_image_and_empty_class(tmp_path):
    write_image_folder(tmp_path, np.random.default_rng(8), per_class=2)
    (tmp_path / "train" / "dog" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="dog/0001.png: unreadable image"):
        load_dataset("folder", tmp_path, "train")
    (tmp_path / "train" / "dog" / "0001.png").unlink()
    (tmp_path / "train" / "dog" / "0000.png").unlink()
    with pytest.raises(DataError, match="train/dog: empty class"):
        load_dataset("folder", tmp_path, "train")


def test_folder_cache_reloads_and_notices_changes(tmp_path, isolated_cache):
    write_image_folder(tmp_path, np.random.default_rng(9), per_class=3)
    first = load_dataset("folder", tmp_path, "train")
    assert len(list((isolated_cache / "decoded").glob("folder-*-train-*.npz"))) == 1
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "train" / "emu" / "0099.png")
    second = load_dataset("folder", tmp_path, "train")
    assert len(second[0]) == len(first[0]) + 1
    assert np.array_equal(second[0][-1], np.full((32, 32, 3), (1, 2, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def test_npz_reader_and_errors(tmp_path):
    rng = np.random.default_rng(10)
    x = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    splits = {"x_train": x, "y_train": np.arange(6) % 3, "x_test": x[:2], "y_test": [0, 1]}
    np.savez(tmp_path / "d.npz", **splits, classes=np.array(["a", "b", "c"]))
    images, labels, classes = load_dataset("npz", tmp_path / "d.npz", "train")
    assert np.array_equal(images, x) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert classes == ["a", "b", "c"]
    np.savez(tmp_path / "bad.npz", x_train=x.astype(np.float32), y_train=np.arange(6))
    with pytest.raises(DataError, match="x_train must be uint8"):
        load_dataset("npz", tmp_path / "bad.npz", "train")
    with pytest.raises(DataError, match="missing array x_test"):
        load_dataset("npz", tmp_path / "bad.npz", "test")
    # without a classes array, both splits count the classes: a test split lacking the
    # highest label still has the training set's classes
    np.savez(tmp_path / "plain.npz", **splits)
    assert load_dataset("npz", tmp_path / "plain.npz", "test")[2] == ["0", "1", "2"]


# --------------------------------------------------------------------------------------------
# Download from a real HTTP server on 127.0.0.1
# --------------------------------------------------------------------------------------------


@pytest.fixture
def server():
    with FileServer() as running:
        yield running


def _archive_bytes(tmp_path: Path) -> tuple[bytes, np.ndarray]:
    (x, _), _ = write_cifar10(tmp_path / "src", np.random.default_rng(11))
    archive = tar_gz(
        tmp_path / "src" / "cifar-10-batches-py", "cifar-10-batches-py", tmp_path / "a.tar.gz"
    )
    return archive.read_bytes(), x


def test_download_good_archive_unpacks_and_loads(tmp_path, server):
    payload, x = _archive_bytes(tmp_path)
    server.files["cifar-10-python.tar.gz"] = payload
    url = server.url("cifar-10-python.tar.gz")
    target = tmp_path / "data"
    result = cli(
        "data",
        "download",
        "--dataset",
        "cifar10",
        "--data-dir",
        target,
        "--url",
        url,
        "--md5",
        hashlib.md5(payload).hexdigest(),
    )
    assert result.returncode == 0, result.stderr
    images, _, _ = load_dataset("cifar10", target, "train", verify=False)
    assert np.array_equal(images, x)
    assert not [p for p in target.iterdir() if p.name.startswith(".")]


def test_download_wrong_checksum_keeps_nothing(tmp_path, server):
    payload, _ = _archive_bytes(tmp_path)
    server.files["cifar-10-python.tar.gz"] = payload
    url = server.url("cifar-10-python.tar.gz")
    target = tmp_path / "data"
    result = cli("data", "download", "--dataset", "cifar10", "--data-dir", target, "--url", url)
    assert result.returncode == 2
    assert "md5" in result.stderr and "nothing was kept" in result.stderr
    assert result.stderr.count("\n") == 1
    assert list(target.iterdir()) == []


def test_download_cut_mid_file_keeps_nothing_and_can_rerun(tmp_path, server):
    payload, x = _archive_bytes(tmp_path)
    server.files["cifar-10-python.tar.gz"], server.cut_at = payload, len(payload) // 2
    url = server.url("cifar-10-python.tar.gz")
    target = tmp_path / "data"
    md5 = hashlib.md5(payload).hexdigest()
    with pytest.raises(DataError, match="nothing was kept|connection closed"):
        data.download("cifar10", target, url, md5)
    assert list(target.iterdir()) == []
    server.cut_at = None
    data.download("cifar10", target, url, md5)
    assert np.array_equal(load_dataset("cifar10", target, "train", verify=False)[0], x)


def test_archive_member_escaping_the_target_is_refused(tmp_path):
    import io
    import tarfile

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match="escape"):
        safe_extract(evil, tmp_path / "target")
    assert not (tmp_path / "outside.txt").exists()


def test_data_verify_reports_counts(tmp_path):
    write_image_folder(tmp_path, np.random.default_rng(12), per_class=2)
    result = cli("data", "verify", "--dataset", "folder", "--data-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train: 6 images 32x32x3, 3 classes" in result.stdout
    assert "test: 3 images" in result.stdout
    bad = cli("data", "verify", "--dataset", "folder", "--data-dir", tmp_path / "missing")
    assert bad.returncode == 2 and "no such file or directory" in bad.stderr


# --------------------------------------------------------------------------------------------
# The batch loader
# --------------------------------------------------------------------------------------------


def _distinct_images(n: int) -> np.ndarray:
    rng = np.random.default_rng(13)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_every_crop_is_a_window_of_the_reflection_padded_image():
    images = _distinct_images(64)
    loader = BatchLoader(images, np.arange(64), 16, shuffle=True, augment=TrainAugment(), seed=1)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    flips = offsets_seen = 0
    order = data.epoch_order(64, 1, 3)
    for b, (x, y) in enumerate(loader.batches(epoch=3)):
        assert y.tolist() == order[b * 16 : (b + 1) * 16].tolist()
        for crop, label in zip(x.permute(0, 2, 3, 1).numpy(), y.numpy()):
            source = padded[label]
            found = None
            for flipped, candidate in ((False, crop), (True, crop[:, ::-1])):
                for dy in range(9):
                    for dx in range(9):
                        if np.array_equal(source[dy : dy + 32, dx : dx + 32], candidate):
                            found = (flipped, dy, dx)
                            break
                    if found:
                        break
                if found:
                    break
            assert found is not None, "a crop is not a window of the padded image"
            flips += found[0]
            offsets_seen += found[1:] != (4, 4)
    assert 16 <= flips <= 48  # about half of 64
    assert offsets_seen > 32


def test_flip_rate_is_about_half():
    images = _distinct_images(2000)
    loader = BatchLoader(images, np.arange(2000), 500, shuffle=True, augment=TrainAugment(pad=0))
    x = torch.cat([b for b, _ in loader.batches(0)]).permute(0, 2, 3, 1).numpy()
    y = torch.cat([y for _, y in loader.batches(0)]).numpy()
    flipped = np.array([not np.array_equal(a, images[i]) for a, i in zip(x, y)])
    assert np.array_equal(x[flipped], images[y[flipped]][:, :, ::-1])
    assert 0.45 < flipped.mean() < 0.55


def test_same_seed_and_epoch_same_batches_different_epochs_differ():
    images = _distinct_images(100)

    def make(seed):
        return BatchLoader(
            images,
            np.arange(100),
            32,
            shuffle=True,
            augment=TrainAugment(),
            seed=seed,
            mean=(1, 2, 3),
            std=(4, 5, 6),
        )

    a = [x for x, _ in make(0).batches(2)]
    b = [x for x, _ in make(0).batches(2)]
    c = [x for x, _ in make(0).batches(3)]
    d = [x for x, _ in make(1).batches(2)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])
    # resuming mid-epoch gives the remaining batches exactly
    assert torch.equal(next(make(0).batches(2, start_batch=2))[0], a[2])


def test_epoch_covers_every_image_once_and_drops_last_partial_batch():
    loader = BatchLoader(
        _distinct_images(100), np.arange(100), 32, shuffle=True, augment=TrainAugment()
    )
    seen = torch.cat([y for _, y in loader.batches(5)])
    assert len(loader) == 3 and len(seen) == 96 and len(set(seen.tolist())) == 96
    evaluation = BatchLoader(_distinct_images(100), np.arange(100), 32)
    assert torch.cat([y for _, y in evaluation.batches()]).tolist() == list(range(100))


def test_normalisation_uses_the_papers_mean_and_std():
    images = _distinct_images(4)
    loader = BatchLoader(images, np.arange(4), 4, mean=data.CIFAR_MEAN, std=data.CIFAR_STD)
    x, _ = next(iter(loader))
    expected = (images.astype(np.float32) - np.array(data.CIFAR_MEAN)) / np.array(data.CIFAR_STD)
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_zca_whitens_the_training_set():
    rng = np.random.default_rng(14)
    base = rng.normal(0, 1, (600, 4, 4, 3))
    images = np.clip(128 + 40 * (base + base.mean(axis=(1, 2), keepdims=True)), 0, 255)
    images = images.astype(np.uint8)
    mean, whiten = data.fit_zca(images, filter_bias=1e-6)
    out = data.zca_transform(images, mean, whiten).reshape(600, -1).astype(np.float64)
    covariance = np.cov(out, rowvar=False, bias=True)
    off_diagonal = covariance - np.diag(np.diag(covariance))
    assert np.abs(off_diagonal).max() < 0.05
    assert np.allclose(whiten, whiten.T, atol=1e-4)  # ZCA: the symmetric whitening
