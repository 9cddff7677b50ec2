"""Optional extras: every verb that needs one (tensorboard, matplotlib, safetensors, onnx,
submitit) says which to install, in one line, before any work."""

from __future__ import annotations

import sys

from helpers import (
    cli,
    one_line_error,
    train_argv,
)


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
        (("tensorboard",), "tensorboard", [*train_argv(npz, tmp_path / "run"), "--tensorboard"]),
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
