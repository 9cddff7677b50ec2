"""Fixtures: every test gets its own cache; slow real-data tests run last."""

from __future__ import annotations

import pytest
from helpers import SHARED_DATA


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-array / checksum cache."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("WRN_CACHE_DIR", str(cache))
    return cache


def pytest_collection_modifyitems(config, items):
    """Slow real-data tests run last (they may size themselves to the time left, see
    test_real_data.py); they need ../shared/data and are skipped, saying why, where it is absent."""
    items.sort(key=lambda item: "slow" in item.keywords)  # stable: the rest keep their order
    if (SHARED_DATA / "cifar10-jpeg").is_dir():
        return
    skip = pytest.mark.skip(reason=f"real CIFAR-10 copy not found at {SHARED_DATA}")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
