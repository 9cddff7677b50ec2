"""Fixtures: every test gets its own cache; slow real-data tests run last."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SHARED_DATA, SmallFilesystem, learnable_npz


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-array / checksum cache."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("WRN_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    """A small learnable .npz set, one per test module (a module may define its own)."""
    return learnable_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.fixture(scope="session")
def real_data_cache(tmp_path_factory):
    """One decoded cache for every test on the real CIFAR-10 copy: the folder is decoded once."""
    return tmp_path_factory.mktemp("real-cache")


def pytest_collection_modifyitems(config, items):
    """Slow real-data tests run last; they need ../shared/data and are skipped, saying why,
    where it is absent."""
    last = ("slow", "long")
    items.sort(key=lambda item: any(k in item.keywords for k in last))  # stable sort
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
