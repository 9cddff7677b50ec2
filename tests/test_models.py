"""Every network of the paper, exact: parameter counts, structure, and equality with an
independent functional reference written from PAPER.md (the style of the authors' code)."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import cli

import wideresnet
from wideresnet.experiments import TABLES
from wideresnet.models import ImageNetResNet, WideResNet, count_params, create_model

# PAPER.md "Exact parameter counts"
EXACT = {
    "wrn-16-4": (2_748_890, 2_772_020),
    "wrn-16-8": (10_961_370, 11_007_540),
    "wrn-28-10": (36_479_194, 36_536_884),
    "wrn-40-2": (2_243_546, 2_255_156),
    "wrn-40-4": (8_949_210, 8_972_340),
}


@pytest.fixture
def on_meta():
    """Modules built on the meta device: shapes and counts, no weights drawn."""
    with torch.device("meta"):
        yield


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("classes_index", [0, 1])
def test_exact_parameter_counts(name, classes_index, on_meta):
    num_classes = (10, 100)[classes_index]
    model = create_model(name, num_classes=num_classes)
    assert count_params(model) == EXACT[name][classes_index], name


def millions(n: int) -> float:
    return round(n / 1e6, 1)


def test_table2_blocks_per_group_is_d_minus_4_over_6_whatever_the_block(on_meta):
    """Table 2's convention (its parameter column, as every row's, is checked against the
    registry in tests/test_tables.py)."""
    for row in TABLES["table2"].rows:
        depth = int(row.model.split("-")[1])
        model = create_model(row.model, num_classes=10, **row.options)
        assert model.blocks_per_group == (depth - 4) // 6, row.id


@pytest.mark.parametrize("deepening", [1, 2, 3, 4])
def test_table3_deepening_factor_counts_real_conv_layers(deepening):
    model = create_model(
        "wrn-40-2", num_classes=10, block=(3,) * deepening, blocks_per_group=12 // deepening
    )
    convs = sum(
        1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    )
    assert convs == 1 + 36  # the stem and 3 groups x 12 / l blocks x l convs (l: deepening)


def test_table5_resnet1001_count_matches_he_et_al_convention(on_meta):
    """He et al. print 10.2M for pre-act ResNet-1001: that is the conv + linear weights; the
    BN parameters add 0.15M (10.33M learnable in all)."""
    model = create_model("preact-resnet-1001", num_classes=10)
    weights = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    assert millions(weights) == 10.2
    assert millions(count_params(model)) == 10.3
    bottlenecks = sum(1 for m in model.modules() if type(m).__name__ == "PreActBottleneck")
    assert bottlenecks == 3 * 111


def test_imagenet_counts_match_torchvision(on_meta):
    assert count_params(create_model("wrn-50-2")) == 68_883_240
    assert count_params(create_model("wrn-101-2")) == 126_886_696
    # k = 1 is the plain ResNet-50 / ResNet-18 (torchvision: 25,557,032 and 11,689,512)
    assert count_params(create_model("wrn-50-1-imagenet")) == 25_557_032
    assert count_params(create_model("wrn-18-1-imagenet")) == 11_689_512


def test_imagenet_state_dict_layout_is_torchvisions(on_meta):
    keys = set(create_model("wrn-50-2").state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv2.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys, key
    model = create_model("wrn-50-2")
    assert model.layer1[0].conv2.weight.shape == (128, 128, 3, 3)  # inner width doubled
    assert model.layer2[0].conv2.stride == (2, 2)  # stride on the 3x3, as torchvision


def kind(model: torch.nn.Module) -> tuple[str, ...]:
    """A network's class and the classes of its blocks."""
    blocks = {type(m).__name__ for m in model.modules()}
    return (type(model).__name__, *sorted(b for b in blocks if "Block" in b or "Bottleneck" in b))


BOUNDED = 20_000_000  # parameters: above it, a network's weights are not drawn here


@functools.cache
def run_for_real() -> set[str]:
    """The names run with real weights: every one up to BOUNDED parameters, and the smallest
    of each kind (class and blocks) however large."""
    sizes = {}
    for name in wideresnet.list_models():
        with torch.device("meta"):
            model = create_model(name, num_classes=7)
        sizes.setdefault(kind(model), []).append((count_params(model), name))
    smallest = {min(named)[1] for named in sizes.values()}
    bounded = {name for named in sizes.values() for count, name in named if count <= BOUNDED}
    return smallest | bounded


@pytest.mark.parametrize("name", wideresnet.list_models())
def test_forward_backward_every_model(name):
    """Forward and backward with real weights, every parameter given a non-zero gradient, for
    every network up to 20M parameters and the smallest of each kind; the larger ones of the
    same code on the meta device (every parameter in the graph, the logits' shape): drawing
    and differentiating 50-190M weights is most of the time and checks nothing more."""
    real = name in run_for_real()
    torch.manual_seed(0)
    with torch.device("cpu" if real else "meta"):
        model = create_model(name, num_classes=7)
        size = 64 if isinstance(model, ImageNetResNet) else 32
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 7)
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    if real:
        missing += [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize(
    "name, size", [("wrn-16-4", 32), ("wrn-50-2", 224), ("wrn-18-2-imagenet", 224)]
)
def test_output_shapes(name, size):
    model = create_model(name, num_classes=13).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 13)


def test_structure_follows_the_paper():
    model = create_model("wrn-16-4", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    g1 = model.group1.block0
    assert g1.conv0.stride == (2, 2) and g1.conv1.stride == (1, 1)
    assert g1.convdim.stride == (2, 2) and g1.convdim.kernel_size == (1, 1)
    assert model.group1.block1.convdim is None
    assert len(model.group0) == 2
    # k = 1: identity shortcut in the first group, projections only in groups 2 and 3
    thin = create_model("wrn-16-1", num_classes=10)
    assert thin.group0.block0.convdim is None and thin.group1.block0.convdim is not None
    # fractional k
    assert create_model("wrn-16-1.5", num_classes=10).widths == [24, 48, 96]


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = create_model("wrn-10-2", num_classes=10, dropout=0.3)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    no_dropout = create_model("wrn-10-2", num_classes=10)
    no_dropout.load_state_dict(model.state_dict())
    no_dropout.train()
    torch.manual_seed(1)
    a = no_dropout(x)
    torch.manual_seed(1)
    assert torch.equal(a, no_dropout(x))


def test_authors_init_and_alternative():
    torch.manual_seed(0)
    authors = create_model("wrn-16-4", num_classes=10)
    gammas = torch.cat([m.weight for m in authors.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert 0 <= gammas.min() and gammas.max() < 1 and gammas.std() > 0.2  # U[0,1)
    conv = authors.group2.block1.conv1.weight
    fan_in = conv.shape[1] * 9
    assert abs(conv.std().item() - (2 / fan_in) ** 0.5) < 0.05 * (2 / fan_in) ** 0.5
    other = create_model("wrn-16-4", num_classes=10, init="he_fan_out")
    assert all(
        torch.all(m.weight == 1) for m in other.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    with pytest.raises(ValueError, match="unknown init"):
        create_model("wrn-16-4", init="xavier")


def test_names_are_case_insensitive_and_bad_names_fail():
    assert count_params(create_model("WRN-16-4", num_classes=10)) == EXACT["wrn-16-4"][0]
    with pytest.raises(wideresnet.ModelNameError, match="unknown model"):
        create_model("wrn-16", num_classes=10)
    with pytest.raises(ValueError, match="6N\\+4"):
        create_model("wrn-17-4", num_classes=10)
    with pytest.raises(ValueError):
        create_model("wrn-50-2", block=(3, 1))


# --------------------------------------------------------------------------------------------
# An independent reference, written from PAPER.md in the functional style of the authors' code
# --------------------------------------------------------------------------------------------


def reference_params(depth: int, width: float, num_classes: int, seed: int) -> dict:
    """Random parameters (and BN statistics) in the authors' key layout."""
    g = torch.Generator().manual_seed(seed)
    n = (depth - 4) // 6
    widths = [int(v * width) for v in (16, 32, 64)]

    def conv(ni, no, k):
        return torch.randn(no, ni, k, k, generator=g) * (2 / (ni * k * k)) ** 0.5

    def bn(name, c):
        return {
            f"{name}.weight": torch.rand(c, generator=g) + 0.5,
            f"{name}.bias": torch.randn(c, generator=g) * 0.1,
            f"{name}.running_mean": torch.randn(c, generator=g) * 0.1,
            f"{name}.running_var": torch.rand(c, generator=g) + 0.5,
        }

    params = {"conv0": conv(3, 16, 3)}
    ni = 16
    for gi, no in enumerate(widths):
        for i in range(n):
            base = f"group{gi}.block{i}"
            c_in = ni if i == 0 else no
            params[f"{base}.conv0"] = conv(c_in, no, 3)
            params[f"{base}.conv1"] = conv(no, no, 3)
            params.update(bn(f"{base}.bn0", c_in))
            params.update(bn(f"{base}.bn1", no))
            if c_in != no:
                params[f"{base}.convdim"] = conv(c_in, no, 1)
        ni = no
    params.update(bn("bn", ni))
    params["fc.weight"] = torch.randn(num_classes, ni, generator=g) * 0.05
    params["fc.bias"] = torch.randn(num_classes, generator=g) * 0.05
    return params


def reference_forward(x, params, depth, training):
    n = (depth - 4) // 6

    def batch_norm(x, base):
        return F.batch_norm(
            x,
            params[base + ".running_mean"],
            params[base + ".running_var"],
            params[base + ".weight"],
            params[base + ".bias"],
            training,
        )

    def block(x, base, stride):
        o1 = F.relu(batch_norm(x, base + ".bn0"))
        y = F.conv2d(o1, params[base + ".conv0"], stride=stride, padding=1)
        o2 = F.relu(batch_norm(y, base + ".bn1"))
        y = F.conv2d(o2, params[base + ".conv1"], stride=1, padding=1)
        if base + ".convdim" in params:
            return y + F.conv2d(o1, params[base + ".convdim"], stride=stride)
        return y + x

    x = F.conv2d(x, params["conv0"], padding=1)
    for g, stride in enumerate((1, 2, 2)):
        for i in range(n):
            x = block(x, f"group{g}.block{i}", stride if i == 0 else 1)
    x = F.relu(batch_norm(x, "bn"))
    x = F.avg_pool2d(x, 8, 1, 0).flatten(1)
    return F.linear(x, params["fc.weight"], params["fc.bias"])


@pytest.mark.parametrize("depth, width", [(10, 1), (16, 1), (16, 2), (22, 1.5), (28, 3)])
def test_matches_independent_reference(depth, width):
    params = reference_params(depth, width, 10, seed=depth)
    model = create_model(f"wrn-{depth}-{width}", num_classes=10)
    wideresnet.load_official_params(model, params)
    # float64 on both sides: any difference is a difference of structure, not of rounding
    model, params = model.double(), {k: v.double() for k, v in params.items()}
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), reference_forward(x, params, depth, False), rtol=1e-9, atol=1e-9
        )
    model.train()
    with torch.no_grad():
        reference = {k: v.clone() for k, v in params.items()}
        torch.testing.assert_close(
            model(x), reference_forward(x, reference, depth, True), rtol=1e-9, atol=1e-9
        )
        # the running statistics moved the same way
        torch.testing.assert_close(model.bn.running_mean, reference["bn.running_mean"])


def test_official_params_that_do_not_fit_are_refused():
    params = reference_params(16, 2, 10, seed=0)
    with pytest.raises(ValueError, match="shape"):
        wideresnet.load_official_params(create_model("wrn-16-4", num_classes=10), params)
    del params["fc.bias"]
    with pytest.raises(ValueError, match="missing"):
        wideresnet.load_official_params(create_model("wrn-16-2", num_classes=10), params)


def test_import_official_then_eval_gives_reference_logits(tmp_path):
    params = reference_params(16, 2, 10, seed=3)
    source = tmp_path / "model.pt7"
    torch.save({"params": params, "epoch": 200, "optimizer": {"state": {}}}, source)
    out = tmp_path / "converted.pt"
    result = cli("import-official", source, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "wrn-16-2" in result.stdout
    state = torch.load(out, weights_only=True)
    model = WideResNet(16, 2, 10)
    model.load_state_dict(state["model"])
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), reference_forward(x, params, 16, False), rtol=1e-5, atol=1e-5
        )


# --------------------------------------------------------------------------------------------
# wrn info
# --------------------------------------------------------------------------------------------


def test_info_json_reports_params_and_macs():
    result = cli("info", "wrn-28-10", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["params"] == 36_479_194
    assert round(info["macs"] / 1e9, 3) == 5.243  # PAPER.md
    assert [s["stage"] for s in info["stages"]] == ["conv0", "group0", "group1", "group2", "head"]
    assert info["stages"][3]["output"] == [640, 8, 8] and info["stages"][3]["blocks"] == 4


@pytest.mark.parametrize(
    "name, macs", [("wrn-16-8", 1.548), ("wrn-40-4", 1.299), ("wrn-16-4", 0.393)]
)
def test_macs_match_the_paper(name, macs):
    summary = wideresnet.model_summary(create_model(name, num_classes=10))
    assert round(summary["macs"] / 1e9, 3) == macs


def test_info_with_block_and_classes():
    result = cli("info", "wrn-40-2", "--block", "3,1,3", "--num-classes", "100", "--json")
    assert result.returncode == 0, result.stderr
    expected = count_params(create_model("wrn-40-2", num_classes=100, block=(3, 1, 3)))
    assert json.loads(result.stdout)["params"] == expected


def test_info_bad_name_is_one_line_exit_2():
    result = cli("info", "wrn-banana")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown model 'wrn-banana'" in result.stderr
    assert "Traceback" not in result.stderr
