"""The peers' own published code, as the oracle of `wrn import`: their released files, taken
from the wheels .ci/run downloads into .peers/ (tests/peers.txt), SHA-256 checked, and loaded
module by module without their packages' own __init__ (which pull in timm, torchvision and the
rest): the model files need torch alone."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest

PEERS = Path(__file__).parents[2] / ".peers"
RELEASES = {  # the wheel, its SHA-256 as PyPI serves it
    "semilearn-0.1.4-py3-none-any.whl": (
        "cecc217f9ea808ec209275e5b610df0c2629bd839152148033cabb4e32002d09"
    ),
    "semilearn-0.2.4-py3-none-any.whl": (
        "a7c43c1b3cedc486dd27cfabb454b334184df6d9d62353c7ef8f73cb56d6f2ee"
    ),
    "semilearn-0.3.2-py3-none-any.whl": (
        "58813afc55c9f50b222a08da77c96b69b0e66b4967a8d36a591947e551201e72"
    ),
    "pytorchcv-0.0.74-py3-none-any.whl": (
        "9043ef0bd73870234361363522192be60a1938b836030415cc3dd85e254d3ac2"
    ),
    "robustbench-1.1.1-py3-none-any.whl": (
        "1286e83d04eb8f21d787d9d21f39f8d6ec7ed02e1755684dd6b931b976c2017c"
    ),
}


def wheel(name: str) -> Path:
    """A peer's release, checked; skipped where .ci/run has not fetched it (never in CI)."""
    path = PEERS / name
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the peers' tests, but {path} is missing")
        pytest.skip(f"{name} not in .peers/ (.ci/run downloads it: tests/peers.txt)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == RELEASES[name], f"{path}: not the published file (SHA-256 {digest})"
    return path


def load(name: str, module: str, folder: Path) -> types.ModuleType:
    """`module` (dotted, e.g. semilearn.nets.wrn.wrn) from release `name`, extracted into
    `folder`; its parent packages stand empty, so that only the files it imports run. Each
    release gets modules of its own (sys.modules is restored afterwards)."""
    root = folder / name
    if not root.exists():
        zipfile.ZipFile(wheel(name)).extractall(root)
    else:
        wheel(name)
    top = module.split(".")[0]
    saved = {k: v for k, v in sys.modules.items() if k == top or k.startswith(top + ".")}
    for key in saved:
        del sys.modules[key]
    try:
        parts = module.split(".")
        for depth in range(1, len(parts)):
            package = ".".join(parts[:depth])
            stub = types.ModuleType(package)
            stub.__path__ = [str(root.joinpath(*parts[:depth]))]
            sys.modules[package] = stub
        spec = importlib.util.spec_from_file_location(
            module, root.joinpath(*parts).with_suffix(".py")
        )
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[module] = loaded
        spec.loader.exec_module(loaded)
        return loaded
    finally:
        for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
            del sys.modules[key]
        sys.modules.update(saved)


def source(name: str, path: str) -> str:
    """The text of one file of a release."""
    return zipfile.ZipFile(wheel(name)).read(path).decode()
