"""`wrn import` against the peers' own published code (tests/peers/): each peer's model built
from its released file, random weights and batch-norm statistics, saved as the peer saves it,
imported, and our logits equal to the peer's (1e-5 relative) in eval and train mode, from
uint8 images through our input transform to theirs on [0, 1] with their normalisation.

- USB (semilearn) 0.1.4, 0.2.4 (its main branch's layout) and 0.3.2: wrn_28_2 and the same
  class at width 8 (wrn_28_8's), every naming its releases used (`fc`, `classifier`), and
  wrn_var_37_2 (four groups, STL-10).
- pytorchcv 0.0.74: CIFARWRN (its wrn16_10_cifar10 and the rest) at a small depth and width;
  its networks alone (its CIFAR mean/std live in imgclsmob's training code, not the wheel).
- RobustBench 1.1.1: every CIFAR-10 and CIFAR-100 entry of its zoo that is a WideResNet,
  BoostingWideResNet or DMWideResNet, built by the entry's own constructor (its lambda or its
  class, read from model_zoo/cifar10.py and cifar100.py) at a small depth and width; the
  table in the package checked against the same files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import cli, one_line_error
from peers import load, source, wheel
from references import randomise
from torch import nn

import wideresnet
from wideresnet.convert import import_checkpoint
from wideresnet.models import robustbench_zoo

SEMILEARN = ["0.1.4", "0.2.4", "0.3.2"]
ROBUSTBENCH = "robustbench-1.1.1-py3-none-any.whl"
ZOO = "robustbench/model_zoo"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("peers")


def images(n: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=generator)


def logits(output) -> torch.Tensor:
    return output["logits"] if isinstance(output, dict) else output


def assert_same_outputs(ours: nn.Module, theirs: nn.Module, their_input) -> None:
    """Ours from uint8 images through its input transform, theirs from `their_input(x01)`,
    in eval and then train mode (batch statistics)."""
    x = images()
    for mode in ("eval", "train"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        with torch.no_grad():
            expected = logits(theirs(their_input(x.permute(0, 3, 1, 2).float() / 255)))
            got = ours(ours.input_transform(x))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=mode)


def imported(tmp_path: Path, state: dict, layout: str, name="theirs.pt", **options):
    path = tmp_path / name
    torch.save(state, path)
    out = tmp_path / f"{path.stem}-ours.pt"
    import_checkpoint(layout, path, out, overwrite=True, **options)
    return wideresnet.load_model(out)


# --------------------------------------------------------------------------------------------
# USB (semilearn)
# --------------------------------------------------------------------------------------------


def semilearn(version: str, folder: Path, module: str = "wrn"):
    name = f"semilearn-{version}-py3-none-any.whl"
    return load(name, f"semilearn.nets.wrn.{module}", folder)


def usb_normalisation(version: str, classes: int):
    """The mean and std USB's own datasets/cv_datasets/cifar.py normalises with."""
    text = source(
        f"semilearn-{version}-py3-none-any.whl", "semilearn/datasets/cv_datasets/cifar.py"
    )
    found = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            target = node.targets[0]
            which, dataset = ast.unparse(target.value), ast.literal_eval(target.slice)
            found[which, dataset] = eval(compile(ast.Expression(node.value), "cifar.py", "eval"))
    dataset = "cifar10" if classes == 10 else "cifar100"
    mean, std = (torch.tensor(found[w, dataset]).view(1, 3, 1, 1) for w in ("mean", "std"))
    return lambda x: (x - mean) / std


@pytest.mark.parametrize("width, classes", [(2, 10), (8, 100)], ids=["wrn_28_2", "width-8"])
@pytest.mark.parametrize("version", SEMILEARN)
def test_every_usb_release_imports_with_its_own_logits(folder, tmp_path, version, width, classes):
    wrn = semilearn(version, folder)
    if width == 2:
        theirs = wrn.wrn_28_2(num_classes=classes)
    else:  # wrn_28_8's class and width, at depth 10 to keep the test small
        theirs = wrn.WideResNet(first_stride=1, num_classes=classes, depth=10, widen_factor=8)
    randomise(theirs, 11)
    ours = imported(tmp_path, {"model": theirs.state_dict()}, "usb")
    head = "classifier" if version == "0.3.2" else "fc"
    assert hasattr(theirs, head)
    assert_same_outputs(ours, theirs, usb_normalisation(version, classes))


@pytest.mark.parametrize("version", SEMILEARN[1:])
def test_usbs_four_group_network_for_stl10_imports_with_its_own_logits(folder, tmp_path, version):
    """wrn_var_37_2: four groups, the first with stride 2, for 96x96 images."""
    theirs = randomise(semilearn(version, folder, "wrn_var").wrn_var_37_2(num_classes=10), 12)
    ours = imported(tmp_path, theirs.state_dict(), "usb")
    assert (ours.name, ours.widths, ours.strides) == ("wrn-28-2", [32, 64, 128, 256], (2, 2, 2, 2))
    z = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    for mode in ("eval", "train"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(ours(z), logits(theirs(z)), rtol=1e-5, atol=1e-5)


def test_a_mix_of_usbs_layouts_is_refused_by_name(folder, tmp_path):
    state = semilearn("0.3.2", folder).wrn_28_2(num_classes=10).state_dict()
    state["block1.layer.0.conv1.bias"] = torch.zeros(32)  # a 0.3 head with 0.2's biases
    torch.save(state, tmp_path / "mixed.pt")
    args = [tmp_path / "mixed.pt", "--out", tmp_path / "o.pt"]
    assert "no USB release" in one_line_error(cli("import", "--from", "usb", *args))
    line = one_line_error(cli("import", "--from", "xternalz", *args))
    assert "USB 0.3's, not the xternalz layout" in line


# --------------------------------------------------------------------------------------------
# RobustBench
# --------------------------------------------------------------------------------------------


def architectures(folder: Path) -> dict:
    """RobustBench's own WideResNet, BoostingWideResNet, DMWideResNet and Swish classes."""
    arch = f"{ZOO.replace('/', '.')}.architectures"
    wide = load(ROBUSTBENCH, f"{arch}.wide_resnet", folder)
    boosting = load(ROBUSTBENCH, f"{arch}.boosting_wide_resnet", folder)
    dm = load(ROBUSTBENCH, f"{arch}.dm_wide_resnet", folder)
    return {
        "WideResNet": wide.WideResNet,
        "BoostingWideResNet": boosting.BoostingWideResNet,
        "DMWideResNet": dm.DMWideResNet,
        "Swish": dm.Swish,
        "nn": nn,
        "torch": torch,
        **{k: getattr(dm, k) for k in dir(dm) if k.startswith("CIFAR")},
    }


SMALL = {"depth": 10, "widen_factor": 2, "width": 2}


def entry_constructor(tree: ast.Module, model: ast.AST, names: dict):
    """The entry's own constructor, run at depth 10 and width 2: its lambda's call with those
    two arguments changed, or its class (from the zoo's file) called with them."""
    if isinstance(model, ast.Lambda):
        call = model.body
        keywords = {k.arg: k.value for k in call.keywords}
        function = eval(compile(ast.Expression(call.func), ZOO, "eval"), names)
        args = [eval(compile(ast.Expression(a), ZOO, "eval"), names) for a in call.args]
        kwargs = {
            k: eval(compile(ast.Expression(v), ZOO, "eval"), names) for k, v in keywords.items()
        }
        if function is names["WideResNet"]:
            args = args[1:2]  # WideResNet(34, 10, ...): depth, num_classes
            kwargs.update(depth=10, widen_factor=2)
            if len(call.args) > 1:
                kwargs["num_classes"] = args.pop()
        else:
            kwargs.update(depth=10, width=2)
        return lambda: function(*args, **kwargs)
    name = ast.unparse(model)
    if name in names:  # BoostingWideResNet, imported by the zoo
        return lambda: names[name](depth=10, widen_factor=2)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    namespace = {**names, "torch": torch, "nn": nn, "F": F}
    exec(compile(ast.Module([cls], []), ZOO, "exec"), namespace)
    return lambda: namespace[name](depth=10, widen_factor=2)


def zoo_entries(folder: Path) -> dict[str, object]:
    """key: a constructor of the entry's network, for every WRN entry of the two zoo files."""
    names = architectures(folder)
    found = {}
    for dataset in ("cifar10", "cifar100"):
        tree = ast.parse(source(ROBUSTBENCH, f"{ZOO}/{dataset}.py"))
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
                continue
            threat = {"linf": "Linf", "l2": "L2", "common_corruptions": "corruptions"}
            threat = threat.get(getattr(node.targets[0], "id", ""))
            if threat is None:
                continue
            for item in node.value.args[0].elts:
                key = f"{dataset}/{threat}/{ast.literal_eval(item.elts[0])}"
                if len(robustbench_zoo.ZOO[key]) == 1:
                    continue  # not one of these WRNs: refused, tested below
                spec = item.elts[1]
                model = spec.values[[ast.literal_eval(k) for k in spec.keys].index("model")]
                found[key] = entry_constructor(tree, model, names)
    return found


def test_the_zoo_table_is_what_the_release_says():
    from peers import robustbench_zoo as generator

    zoo = generator.Reader(wheel(ROBUSTBENCH)).zoo()
    table = {key: generator.row(entry) for key, entry in zoo.items()}
    assert table == robustbench_zoo.ZOO
    assert robustbench_zoo.RELEASE == "robustbench-1.1.1"
    assert len(table) == 164 and sum(len(row) > 1 for row in table.values()) == 100


def test_every_robustbench_wrn_entry_imports_with_its_own_logits(folder, tmp_path, monkeypatch):
    entries = zoo_entries(folder)
    assert len(entries) == 100
    for key, build in entries.items():
        theirs = randomise(build(), 7)
        for buffer in ("mu", "sigma"):  # the published normalisation, not random numbers
            if hasattr(theirs, buffer):
                getattr(theirs, buffer).copy_(getattr(build(), buffer))
        row = robustbench_zoo.ZOO[key]
        monkeypatch.setitem(robustbench_zoo.ZOO, key, (row[0], 10, 2, *row[3:]))
        ours = imported(tmp_path, theirs.state_dict(), "robustbench", entry=key)
        try:
            assert_same_outputs(ours, theirs, lambda x: x)
        except AssertionError as error:
            raise AssertionError(f"{key}: {error}") from None


def test_an_entry_named_by_the_file_or_the_option_decides_where_the_weights_cannot(
    folder, tmp_path
):
    names = architectures(folder)
    boosting = randomise(names["BoostingWideResNet"](depth=34, widen_factor=1), 3)
    boosting.mu.copy_(names["BoostingWideResNet"](depth=34, widen_factor=1).mu)
    boosting.sigma.copy_(names["BoostingWideResNet"](depth=34, widen_factor=1).sigma)
    path = tmp_path / "boosting.pt"
    torch.save(boosting.state_dict(), path)
    out = tmp_path / "o.pt"
    line = one_line_error(cli("import", "--from", "robustbench", path, "--out", out))
    assert "BoostingWideResNet (Pang2020Boosting)" in line and "--entry NAME" in line
    # the entry's depth and width (34-20) are not the file's (34-1): refused, never fitted
    line = one_line_error(
        cli("import", "--from", "robustbench", path, "--out", out, "--entry", "Pang2020Boosting")
    )
    assert "wrn-34-1" in line and "wrn-34-20" in line
    # the hypersphere head, as Pang2020Boosting's own at its depth (width cut to 1 here)
    (tmp_path / "zoo").mkdir()
    named = tmp_path / "zoo" / "Pang2020Boosting.pt"
    torch.save(boosting.state_dict(), named)
    row = robustbench_zoo.ZOO["cifar10/Linf/Pang2020Boosting"]
    robustbench_zoo.ZOO["cifar10/Linf/Pang2020Boosting"] = (row[0], 34, 1, *row[3:])
    try:
        result = cli("import", "--from", "robustbench", named, "--out", out)
    finally:
        robustbench_zoo.ZOO["cifar10/Linf/Pang2020Boosting"] = row
    assert result.returncode == 0, result.stderr
    assert "the entry from the file's name" in result.stdout
    assert_same_outputs(wideresnet.load_model(out), boosting, lambda x: x)
    out.unlink()
    dm = randomise(names["DMWideResNet"](num_classes=10, depth=10, width=1), 4)
    torch.save(dm.state_dict(), tmp_path / "dm.pt")
    line = one_line_error(cli("import", "--from", "robustbench", tmp_path / "dm.pt", "--out", out))
    assert "keeps its mean/std outside the state dict" in line
    torch.save(boosting.state_dict(), tmp_path / "Ding2020MMA.pt")  # named for an entry
    line = one_line_error(
        cli("import", "--from", "robustbench", tmp_path / "Ding2020MMA.pt", "--out", out)
    )
    assert "its own input transform" in line  # refused by the name, not guessed past it
    for entry, words in (
        ("Ding2020MMA", "its own input transform"),
        ("Rebuffi2021Fixing_R18_ddpm", "DMPreActResNet"),
        ("Nobody2099", "no CIFAR-10 or CIFAR-100 entry of robustbench-1.1.1"),
    ):
        line = one_line_error(
            cli("import", "--from", "robustbench", path, "--out", out, "--entry", entry)
        )
        assert words in line, line
    line = one_line_error(cli("import", "--from", "usb", path, "--out", out, "--entry", "Standard"))
    assert "--entry is RobustBench's" in line


def test_the_deepmind_layout_with_relu_and_given_scales(folder, tmp_path):
    """--from robustbench-dm --activation relu with --mean/--std (0-1 scale): RobustBench's
    DMWideResNet with ReLU, whose mean/std are not in its state dict."""
    names = architectures(folder)
    theirs = names["DMWideResNet"](
        num_classes=10, depth=16, width=2, activation_fn=nn.ReLU, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    randomise(theirs, 6)
    torch.save(theirs.state_dict(), tmp_path / "dm.pt")
    out = tmp_path / "ours.pt"
    args = ["import", "--from", "robustbench-dm", tmp_path / "dm.pt", "--out", out]
    result = cli(*args, "--activation", "relu", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert result.returncode == 0, result.stderr
    assert_same_outputs(wideresnet.load_model(out), theirs, lambda x: x)


@pytest.mark.parametrize("classes", [10, 100])
def test_pytorchcv_cifar_wrns_import_with_their_own_logits(folder, tmp_path, classes):
    wrn = load("pytorchcv-0.0.74-py3-none-any.whl", "pytorchcv.models.wrn_cifar", folder)
    theirs = randomise(wrn.get_wrn_cifar(num_classes=classes, blocks=16, width_factor=2), 8)
    ours = imported(tmp_path, theirs.state_dict(), "pytorchcv")
    assert ours.name == "wrn-16-2"
    z = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for mode in ("eval", "train"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(ours(z), theirs(z), rtol=1e-5, atol=1e-5, msg=mode)
