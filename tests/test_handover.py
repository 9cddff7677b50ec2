"""Taking a trained WRN away: safetensors and load_model, ONNX under onnxruntime, predict,
torch.hub, and other projects' checkpoints against independent references written here from
those projects' published definitions (tests/references.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli, learnable_npz, one_line_error
from references import (
    Normalize,
    ReferenceWRN,
    TorchvisionWideResNet50,
    randomise,
)
from torch import nn

import wideresnet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A learnable image folder: each class a colour (PNG, 32x32)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    from PIL import Image

    for split, count in (("train", 48), ("test", 8)):
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (32, 32, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    options = "--model wrn-10-1 --dataset folder --epochs 2 --batch-size 16 --precision fp32"
    result = cli("train", *options.split(), "--data-dir", folder, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def images_of(folder: Path) -> torch.Tensor:
    from PIL import Image

    files = sorted((folder / "test").rglob("*.png"))
    return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))


def test_safetensors_round_trip_gives_identical_logits(run, folder, tmp_path):
    out = tmp_path / "model.safetensors"
    result = cli("export", run, "--format", "safetensors", "--out", out)
    assert result.returncode == 0, result.stderr
    exported, original = wideresnet.load_model(out), wideresnet.load_model(run)
    assert not exported.training and exported.classes == ["blue", "green", "red"]
    assert exported.input_size == 32 and "input_transform" not in exported.state_dict()
    x = exported.input_transform(images_of(folder))
    with torch.no_grad():
        assert torch.equal(exported(x), original(x))
    assert one_line_error(cli("export", run, "--format", "safetensors", "--out", out)).endswith(
        "pass --overwrite to replace it"
    )


@pytest.mark.exports
@pytest.mark.parametrize("preprocessing", [False, True], ids=["normalised-in", "uint8-in"])
def test_onnx_matches_pytorch_for_batches_of_1_and_7(run, folder, tmp_path, preprocessing):
    import onnxruntime

    out = tmp_path / "model.onnx"
    extra = ["--include-preprocessing"] if preprocessing else []
    result = cli("export", run, "--format", "onnx", "--out", out, *extra)
    assert result.returncode == 0, result.stderr
    assert "largest difference from PyTorch" in result.stdout and "test images of" in result.stdout
    model = wideresnet.load_model(run)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = images_of(folder)
    for batch in (1, 7):
        x = images[:batch] if preprocessing else model.input_transform(images[:batch])
        with torch.no_grad():
            expected = model(model.input_transform(images[:batch]))
            expected = expected.softmax(1) if preprocessing else expected
        got = session.run(None, {"images": x.numpy()})[0]
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)


def test_predict_gives_the_class_eval_gives_and_reports_a_bad_file(run, folder, tmp_path):
    from PIL import Image

    model = wideresnet.load_model(run)
    originals = sorted((folder / "test").rglob("*.png"))[::4]
    with torch.no_grad():
        batch = images_of(folder)[::4]
        expected = [model.classes[i] for i in model(model.input_transform(batch)).argmax(1)]
    variants = []
    for n, path in enumerate(originals):
        image = Image.open(path).convert("RGB")
        kinds = [
            ("png", image),
            ("jpg", image),
            ("rgba.png", image.convert("RGBA")),
            ("64px.png", image.resize((64, 64), Image.BILINEAR)),
            ("p.png", image.convert("P", palette=Image.ADAPTIVE)),
        ]
        kind, variant = kinds[n % len(kinds)]
        target = tmp_path / f"{n}.{kind}"
        variant.save(target, quality=100) if kind == "jpg" else variant.save(target)
        variants.append(target)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = cli("predict", run, *variants, tmp_path / "broken.png", "--json", "--top-k", "2")
    assert result.returncode == 2
    entries = json.loads(result.stdout)
    assert [e["file"] for e in entries] == [str(p) for p in variants] + [
        str(tmp_path / "broken.png")
    ]
    assert [e["top"][0]["class"] for e in entries[:-1]] == expected
    for entry in entries[:-1]:
        assert len(entry["top"]) == 2
        assert 0 <= entry["top"][1]["probability"] <= entry["top"][0]["probability"] <= 1
    assert "broken.png" in entries[-1]["error"]
    assert result.stderr.count("\n") == 1 and "broken.png" in result.stderr
    text = cli("predict", run, tmp_path)  # a folder: every image in it
    assert text.stdout.count("%") >= len(variants)


def test_torch_hub_builds_the_models_and_loads_weights(run, tmp_path):
    model = torch.hub.load(str(ROOT), "wrn_28_10", source="local", num_classes=100, dropout=0.3)
    assert wideresnet.count_params(model) == 36_536_884
    assert model.group0.block0.dropout == 0.3
    out = tmp_path / "w.safetensors"
    cli("export", run, "--format", "safetensors", "--out", out)
    hub = ROOT / "hubconf.py"
    assert "def wrn_50_2" in hub.read_text()
    with pytest.raises(ValueError, match="holds a wrn-10-1, not a wrn-16-4"):
        torch.hub.load(str(ROOT), "wrn_16_4", source="local", num_classes=3, weights=str(out))
    with pytest.raises(ValueError, match="cannot apply to weights"):
        torch.hub.load(str(ROOT), "wrn_16_4", source="local", weights=str(out), dropout=0.3)
    loaded = torch.hub.load(str(ROOT), "load", source="local", weights=str(out))
    assert loaded.classes == ["blue", "green", "red"] and loaded.name == "wrn-10-1"


@pytest.mark.parametrize("case", ["truncated", "garbage", "code"])
def test_corrupt_or_foreign_files_are_one_line(run, tmp_path, case):
    marker = tmp_path / "code-ran"
    path = tmp_path / "bad.pt"
    if case == "truncated":
        data = (run / "checkpoint.pt").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "garbage":
        path.write_bytes(b"\0" * 200)
    else:

        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        torch.save({"state_dict": Payload()}, path)
    for args in (
        ("export", path, "--format", "safetensors", "--out", tmp_path / "x.safetensors"),
        ("predict", path, tmp_path),
        ("import", "--from", "xternalz", path, "--out", tmp_path / "y.pt"),
    ):
        line = one_line_error(cli(*args))
        assert str(path) in line
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# References written here, for the projects not on PyPI (tests/references.py); USB and
# RobustBench: tests/test_peers.py, against their own released files
# --------------------------------------------------------------------------------------------


LAYOUTS = {
    "xternalz": lambda: ReferenceWRN(16, 2, 10),
    "robustbench": lambda: ReferenceWRN(16, 2, 10, robustbench=True),
    "fixmatch": lambda: ReferenceWRN(16, 2, 10, fixmatch=True),
    "torchssl": lambda: ReferenceWRN(16, 2, 10, torchssl=True),
}


@pytest.mark.exports
@pytest.mark.parametrize("prefix", ["", "module."], ids=["plain", "module-prefix"])
@pytest.mark.parametrize("layout", [*LAYOUTS, "torchvision"])
def test_foreign_checkpoints_give_the_originals_logits(tmp_path, layout, prefix):
    """Equal logits in eval and train mode; then eval works on the import, and ONNX export on
    the imports of a module type exported nowhere else: leaky ReLU (FixMatch) and the ImageNet
    bottleneck (the plain WideResNet: test_onnx_matches_pytorch_for_batches_of_1_and_7 and
    test_imported_checkpoints_export_to_onnx_and_eval_asks_for_data)."""
    reference = randomise(
        TorchvisionWideResNet50() if layout == "torchvision" else LAYOUTS[layout](), 1
    )
    state = {prefix + k: v for k, v in reference.state_dict().items()}
    source = tmp_path / "theirs.pt"
    torch.save({"state_dict": state, "epoch": 200}, source)
    out = tmp_path / "ours.pt"
    result = cli("import", "--from", layout, source, "--out", out)
    assert result.returncode == 0, result.stderr
    ours = wideresnet.load_model(out)
    size = 64 if layout == "torchvision" else 32
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(2))
    for mode in ("eval", "train"):
        reference.train(mode == "train")
        ours.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5, msg=mode)
    if prefix:
        return
    if layout in ("fixmatch", "torchvision"):  # leaky ReLU; ImageNet bottlenecks
        onnx = cli("export", out, "--format", "onnx", "--out", tmp_path / "m.onnx")
        assert onnx.returncode == 0, onnx.stderr
    classes = len(ours.classes)
    npz = learnable_npz(tmp_path / "d.npz", n_train=8, n_test=4, size=size, classes=classes)
    evaluated = cli("eval", out, "--dataset", "npz", "--data-dir", npz, "--json")
    assert evaluated.returncode == 0 and json.loads(evaluated.stdout)["images"] == 4


def test_a_robustbench_normalisation_wrapper_becomes_the_input_transform(tmp_path):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    wrapped = nn.Sequential()
    wrapped.add_module("normalize", Normalize(mean, std))
    wrapped.add_module("model", randomise(ReferenceWRN(16, 2, 10, robustbench=True), 3))
    source = tmp_path / "rb.pt"
    torch.save(wrapped.state_dict(), source)
    assert (
        cli("import", "--from", "robustbench", source, "--out", tmp_path / "o.pt").returncode == 0
    )
    ours = wideresnet.load_model(tmp_path / "o.pt")
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    wrapped.eval()  # as the loaded model is
    with torch.no_grad():
        expected = wrapped(images.permute(0, 3, 1, 2).float() / 255)
        torch.testing.assert_close(
            ours(ours.input_transform(images)), expected, rtol=1e-4, atol=1e-5
        )
    line = one_line_error(cli("eval", tmp_path / "o.pt"))
    assert "--data-dir" in line


def test_a_torchvision_file_with_a_value_that_is_not_a_float_tensor_is_one_line(tmp_path):
    state = randomise(TorchvisionWideResNet50(), 2).state_dict()
    for bad in (5, torch.zeros(3, dtype=torch.int32)):
        path = tmp_path / "tv.pth"
        torch.save({**state, "layer1.0.conv1.weight": bad}, path)
        line = one_line_error(
            cli("import", "--from", "torchvision", path, "--out", tmp_path / "o.pt")
        )
        assert "layer1.0.conv1.weight is a" in line and "not a floating-point tensor" in line
        assert not (tmp_path / "o.pt").exists()
