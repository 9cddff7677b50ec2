"""Fixtures: every test gets its own cache; slow real-data tests run last."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # three workers on two cores: one thread each (and in every process they start), so that
    # none waits on another's threads; the third takes up the time the others spend waiting
    # (on Slurm's jobs, a subprocess, a lock)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from helpers import SHARED_DATA, SmallFilesystem, cli, learnable_npz, train_argv


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-array / checksum cache."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("WRN_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def npz(tmp_path_factory) -> Path:
    """A small learnable .npz set (a module may define its own); never changed by a test."""
    return learnable_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.fixture(scope="session")
def finished(npz, tmp_path_factory) -> Path:
    """The finished tiny run of helpers.train_argv (3 epochs of WRN-10-1), trained once per
    session: copy it (helpers.copy_run) before changing it."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    result = cli(*train_argv(npz, out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def exported(finished, tmp_path_factory) -> Path:
    """The finished tiny run exported as safetensors."""
    out = tmp_path_factory.mktemp("export") / "good.safetensors"
    result = cli("export", finished, "--format", "safetensors", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def real_data_cache(tmp_path_factory):
    """One decoded cache for every test on the real CIFAR-10 copy, shared by the xdist
    workers: the first to come decodes the folder (20 s), under a lock the others wait on."""
    from wideresnet import load_dataset

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    cache = root / "real-cache"
    cache.mkdir(exist_ok=True)
    with open(root / "real-cache.lock", "w") as lock, pytest.MonkeyPatch.context() as patch:
        fcntl.flock(lock, fcntl.LOCK_EX)
        patch.setenv("WRN_CACHE_DIR", str(cache))
        for split in ("train", "test"):
            load_dataset("folder", SHARED_DATA / "cifar10-jpeg", split)
    return cache


# The order modules start in under xdist (--no-loadscope-reorder: a module to a worker, each
# worker given the next one while it has fewer than two queued): the real Slurm's first, whose
# tests mostly wait on Slurm while the other workers go on; then the heaviest, so that no long
# module starts last (one light module among them, as the second in a worker's queue).
FIRST = ("test_slurm.py", "test_cluster.py", "test_shape.py", "test_tables.py")
FIRST += ("test_front_door.py", "test_real_data.py", "test_stream.py", "test_distributed.py")
FIRST += ("test_backbones.py", "test_handover.py", "test_run_folder.py", "test_compat.py")


def pytest_collection_modifyitems(config, items):
    """Modules in the order of FIRST, then the others; slow real-data tests last in their
    module. These need ../shared/data and are skipped, saying why, where it is absent."""
    last = ("slow", "long")

    def order(item) -> tuple:
        name = item.path.name
        first = FIRST.index(name) if name in FIRST else len(FIRST)
        return first, any(k in item.keywords for k in last)

    items.sort(key=order)  # stable: the others keep their order
    for item in items:  # the limit of its kind, where the test sets none of its own
        kinds = ("spawns", "compiles", "exports")
        if item.get_closest_marker("timeout") is None and any(map(item.get_closest_marker, kinds)):
            item.add_marker(pytest.mark.timeout(300))
    if (SHARED_DATA / "cifar10-jpeg").is_dir():
        return
    skip = pytest.mark.skip(reason=f"real CIFAR-10 copy not found at {SHARED_DATA}")
    for item in items:
        if any(k in item.keywords for k in last):
            item.add_marker(skip)


@pytest.fixture
def small_fs(tmp_path):
    """small_fs(SIZE): a real tmpfs of SIZE bytes, unmounted after the test."""
    filesystems = []

    def make(size: int) -> SmallFilesystem:
        fs = SmallFilesystem(tmp_path / f"fs{len(filesystems)}", size)
        filesystems.append(fs)
        if not fs.available:
            pytest.skip("cannot mount a tmpfs here (not root?); the RLIMIT_FSIZE tests cover it")
        return fs

    yield make
    for fs in filesystems:
        fs.unmount()
