"""The code's shape, held by tests: no import cycle, models/ built on torch alone, the private
torch APIs we depend on still there, one family per model name, one home for seeds, and the
typed run records with the one definition of where a run stands."""

from __future__ import annotations

import ast
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import learnable_npz, wait_for

import wideresnet
from wideresnet import models
from wideresnet.data.preprocess import InputTransform, fit_zca, gcn
from wideresnet.errors import ModelNameError, RunError
from wideresnet.models import create_model, list_models, parse_model_name, wrn_name
from wideresnet.seeds import DATA_STREAMS, Stream, generator, numpy_generator, torch_seed
from wideresnet.train.records import MetricsRow, Result
from wideresnet.train.rundir import RunDir, RunState

PACKAGE = Path(wideresnet.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules `path` imports, at module level and inside functions: for
    `from A import B`, A.B when it is a module, else A."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = import_graph()
    assert len(graph) > 50 and "wideresnet.train.loop" in graph["wideresnet.train.run"]
    visiting, done = [], set()

    def visit(module: str) -> None:
        if module in visiting:
            cycle = visiting[visiting.index(module) :] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_models_depend_on_torch_alone():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("wideresnet.models"):
            outside = {t for t in targets if not t.startswith("wideresnet.models")}
            assert outside <= {"wideresnet.errors"}, (module, outside)


def test_the_private_torch_apis_we_rely_on_are_still_there():
    """torch._dynamo.mark_static_address (the whole step's found_inf) and fused SGD's
    `found_inf` (a non-finite step skipped on the device): pinned by this test, which fails
    loudly on a torch release that drops either."""
    assert callable(torch._dynamo.mark_static_address)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1, fused=True)
    weight.grad = torch.ones(3)
    optimizer.found_inf = torch.ones(())
    optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(3))  # skipped
    optimizer.found_inf = torch.zeros(())
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.full((3,), 0.9))


def test_every_listed_name_belongs_to_exactly_one_family():
    families = set()
    for name in list_models() + ["wrn-50-2", "resnet-50", "wide_resnet50_2", "wrn-16-1.5"]:
        family, _ = parse_model_name(name)  # two families accepting it: an AssertionError
        families.add(family.description)
    assert families == set(models.model_name_patterns())  # and every family is listed
    assert parse_model_name("wrn-50-2")[0].short == "ImageNet bottleneck"
    assert parse_model_name("resnet-50")[0].short == "ImageNet"
    assert parse_model_name("resnet-110")[0].short == "resnet-d"


def test_wrn_names_round_trip():
    assert wrn_name(28, 10.0) == "wrn-28-10" and wrn_name(16, 1.5) == "wrn-16-1.5"
    assert create_model(wrn_name(16, 1.5)).widths == [24, 48, 96]


def test_a_model_refusing_its_arguments_is_a_user_error_and_a_bug_is_a_bug(monkeypatch):
    with pytest.raises(ModelNameError, match="wrn-17-2: depth must be 6N\\+4"):
        create_model("wrn-17-2")

    def broken(*args, **kwargs):
        raise TypeError("an internal invariant broke")

    monkeypatch.setattr(models, "WideResNet", broken)
    with pytest.raises(TypeError, match="internal invariant"):
        create_model("wrn-16-4")


def test_gcn_is_the_same_in_numpy_and_in_the_exported_transform():
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    images[0] = 7  # a flat image: the zero-norm guard
    mean, whiten = fit_zca(images)
    flat = images.reshape(len(images), -1).astype(np.float64)
    expected = ((gcn(flat) - mean) @ whiten).reshape(images.shape).transpose(0, 3, 1, 2)
    ours = InputTransform(zca_mean=mean, zca_whiten=whiten)(torch.from_numpy(images))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-3, atol=1e-3)


def test_seeds_come_from_one_function_with_the_streams_apart():
    seeds = {torch_seed(3, 5, stream) for stream in DATA_STREAMS}
    assert len(seeds) == len(DATA_STREAMS)  # each data stream its own generator
    for stream in DATA_STREAMS:  # the data is the same on every process
        assert torch_seed(3, 5, stream, rank=0) == torch_seed(3, 5, stream, rank=1)
    assert torch_seed(3, 1, Stream.DROPOUT, 0) != torch_seed(3, 1, Stream.DROPOUT, 1)
    a, b = generator(3, 5, Stream.ORDER), generator(3, 5, Stream.ORDER)
    assert torch.equal(torch.randperm(10, generator=a), torch.randperm(10, generator=b))
    mixing = [
        numpy_generator(3, step, Stream.MIXING, rank).random()
        for step, rank in ((1, 0), (2, 0), (1, 1))
    ]
    assert len(set(mixing)) == 3  # per step and per process
    assert numpy_generator(3, 1, Stream.MIXING, 0).random() == mixing[0]


# --------------------------------------------------------------------------------------------
# Typed records and where a run stands
# --------------------------------------------------------------------------------------------


def test_records_refuse_a_wrong_type_by_file_and_field(tmp_path):
    row = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_error": 50.0, "test_loss": None}
    row |= {"test_error": None, "epoch_seconds": 1.0}
    assert MetricsRow.from_dict(row, "m").to_dict()["test_error"] is None
    with pytest.raises(RunError, match="m: field epoch is a str"):
        MetricsRow.from_dict({**row, "epoch": "1"}, "m")
    with pytest.raises(RunError, match="r.json: field test_error is missing"):
        Result.from_dict({"epochs": 3}, "r.json")
    with pytest.raises(RunError, match="r.json: a list, not a record"):
        Result.from_dict([], "r.json")


@pytest.mark.spawns
def test_run_status_is_new_running_stopped_failed_or_finished(tmp_path):
    npz = learnable_npz(tmp_path / "tiny.npz")
    out = tmp_path / "run"
    run = RunDir(out)
    assert run.status() is RunState.NEW
    options = "--model wrn-10-1 --dataset npz --batch-size 32 --precision fp32 --epochs 200"
    command = [sys.executable, "-m", "wideresnet", "train", *options.split()]
    process = subprocess.Popen(
        [*command, "--data-dir", str(npz), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(out / "checkpoint.pt", process)
    assert run.status() is RunState.RUNNING  # its lock is held by that process
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 143
    assert run.status() is RunState.STOPPED and run.resumable
    (out / "failure.json").write_text(json.dumps({"error": "non-finite training loss"}))
    assert run.status() is RunState.FAILED
    (out / "failure.json").unlink()
    (out / "result.json").write_text("{not json")
    assert run.status() is RunState.STOPPED  # a torn result: resumed, it is written again
    with pytest.raises(RunError, match="result.json: not readable JSON"):
        run.result()
    result = {"test_error": 5.0, "epochs": 1, "model": "wrn-10-1", "dataset": "npz"}
    result |= {"params": 1, "wall_seconds": {"train": 1.0, "eval": 1.0, "total": 2.0}}
    (out / "result.json").write_text(json.dumps(result))
    assert run.status() is RunState.FINISHED and run.result().test_error == 5.0


@pytest.mark.spawns
def test_public_names_never_shadow_the_subpackages():
    """`import wideresnet.train.step` and `wideresnet.train.loop` work in a fresh interpreter,
    and `wideresnet.train(config, out)` (0.3's public function) is still callable."""
    code = (
        "import wideresnet, wideresnet.train.step, types\n"
        "assert isinstance(wideresnet.train, types.ModuleType) and callable(wideresnet.train)\n"
        "assert wideresnet.train.step.make_step and wideresnet.train.loop.Trainer\n"
        "import pkgutil\n"
        "for sub in pkgutil.iter_modules(wideresnet.__path__):\n"
        "    value = getattr(wideresnet, sub.name, None)\n"
        "    assert value is None or isinstance(value, types.ModuleType), sub.name\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
