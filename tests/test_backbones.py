"""WRNs beyond classification: feature backbones in timm's convention (every family, against
hooks on the full model), torchvision's wide_resnet50_2 weights in the feature form, the
classifier interface, distillation (the step's loss against one written here by hand), and
group norm through training, resume, export and load."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    SHARED_DATA,
    assert_resumes_exactly,
    cli,
    cli_with,
    learnable_npz,
    metrics,
    one_line_error,
)

import wideresnet
from wideresnet import create_model
from wideresnet.train.distributed import World
from wideresnet.train.runtime import Runtime
from wideresnet.train.step import EpochSums, StepOptions, make_step

# one name per family, and the input size each is checked at
FAMILIES = {
    "wrn-10-2": 32,  # wrn-d-k
    "resnet-20": 32,  # the original post-activation CIFAR ResNet
    "preact-resnet-110": 32,  # pre-activation, basic blocks
    "preact-resnet-164": 32,  # pre-activation, bottlenecks
    "wrn-50-2": 64,  # the ImageNet bottleneck WRN (torchvision layout)
    "wrn-18-2-imagenet": 64,  # Table 7's basic-block ImageNet WRN
    "resnet-18": 64,  # the ImageNet ResNet
}


def stage_maps(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """The activations forward hooks see at each stage of the full model (the stems that
    end in a functional ReLU: their norm layer's output, ReLU'd here)."""
    seen = {}
    hooks = []
    for name in names:
        module_name = {"act0": "bn0", "act1": "bn1"}.get(name, name)
        module = getattr(model, module_name)
        hooks.append(module.register_forward_hook(lambda m, i, o, n=name: seen.setdefault(n, o)))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return [F.relu(seen[n]) if n in ("act0", "act1") else seen[n] for n in names]


@pytest.mark.parametrize("name", FAMILIES)
def test_feature_maps_equal_the_full_models_activations(name):
    torch.manual_seed(0)
    full = create_model(name, num_classes=10).eval()
    backbone = create_model(name, num_classes=10, features_only=True)
    backbone.load_state_dict(full.state_dict())  # the head's keys are left out
    backbone.eval()
    size = FAMILIES[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = backbone(x)
    info = backbone.feature_info
    assert len(maps) == len(info) == (5 if size == 64 else 4)
    expected = stage_maps(full, info.module_name(), x)
    for got, want, entry in zip(maps, expected, info):
        torch.testing.assert_close(got, want, msg=entry["module"])
        assert got.shape[1] == entry["num_chs"] and size // got.shape[-1] == entry["reduction"]
    assert info.channels() == [e["num_chs"] for e in info]
    chosen = create_model(name, features_only=True, out_indices=(1, -1))
    assert [e["module"] for e in chosen.feature_info] == [info[1]["module"], info[-1]["module"]]
    last_two = create_model(name, features_only=True, out_indices=2)  # timm: the last 2
    assert last_two.feature_info.module_name() == info.module_name()[-2:]
    with torch.no_grad():  # timm's forward_intermediates: the same maps, one pass
        final, intermediates = full.forward_intermediates(x)
        torch.testing.assert_close(final, full.forward_features(x))
        only = full.forward_intermediates(x, indices=2, intermediates_only=True, stop_early=True)
    for got, want in zip(intermediates, expected):
        torch.testing.assert_close(got, want)
    for got, want in zip(only, expected[-2:]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_has_timms_classifier_interface(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    size = FAMILIES[name]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), logits)
        pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features) and model.get_classifier() is model.fc
    assert model.num_classes == 10
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7
    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), pooled)
    model.reset_classifier(0, "")  # timm: no head and no pooling, the map comes out
    with torch.no_grad():
        torch.testing.assert_close(model(x), features)
    model.reset_classifier(3, "avg")
    assert model(x).shape == (2, 3)
    with pytest.raises(wideresnet.ModelNameError, match="only with num_classes 0"):
        model.reset_classifier(3, "")


def test_out_indices_out_of_range_are_refused_by_name():
    with pytest.raises(wideresnet.ModelNameError, match=r"out_indices \(4,\): each from 0"):
        create_model("wrn-16-2", features_only=True, out_indices=(4,))
    with pytest.raises(wideresnet.ModelNameError, match="out_indices 5: the last n stages"):
        create_model("wrn-16-2", features_only=True, out_indices=5)
    with pytest.raises(wideresnet.ModelNameError, match="features_only"):
        create_model("wrn-16-2", out_indices=(1,))


def test_torchvisions_wide_resnet50_2_weights_load_into_the_feature_form():
    from references import TorchvisionWideResNet50, randomise

    reference = randomise(TorchvisionWideResNet50(), 4).eval()
    backbone = create_model("wrn-50-2", features_only=True, out_indices=(2, 3))
    backbone.load_state_dict(reference.state_dict())  # torchvision's keys, fc.* left out
    backbone.eval()
    assert [e["module"] for e in backbone.feature_info] == ["layer2", "layer3"]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    layer2, layer3 = backbone(x)
    expected = stage_maps(reference, ["layer2", "layer3"], x)
    torch.testing.assert_close(layer2, expected[0])
    torch.testing.assert_close(layer3, expected[1])


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return learnable_npz(tmp_path_factory.mktemp("data") / "d.npz", n_train=64, n_test=16, size=32)


def train_args(npz: Path, out: Path, *extra: str, model: str = "wrn-10-1") -> list:
    options = f"--model {model} --dataset npz --epochs 2 --batch-size 16 --precision fp32"
    return ["train", *options.split(), "--data-dir", npz, "--out", out, *extra]


def test_a_run_and_its_export_load_as_backbones(npz, tmp_path):
    run = tmp_path / "run"
    assert cli(*train_args(npz, run, model="wrn-10-2")).returncode == 0
    export = tmp_path / "m.safetensors"
    assert cli("export", run, "--format", "safetensors", "--out", export).returncode == 0
    full = wideresnet.load_model(run)
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    x = full.input_transform(images)
    expected = stage_maps(full, ["group1", "group2"], x)
    for source in (run, export):
        backbone = wideresnet.load_model(source, features_only=True, out_indices=(2, 3))
        assert not backbone.training
        with torch.no_grad():
            maps = backbone(backbone.input_transform(images))
        for got, want in zip(maps, expected):
            torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixup", [0.0, 1.0], ids=["plain", "mixup"])
def test_the_steps_distillation_loss_is_hintons_written_by_hand(mixup):
    """(1 - alpha) CE + alpha T^2 KL from both networks' logits; with mixup, the teacher sees
    the mixed batch and CE is over both targets (the mixing drawn from the step's stream)."""
    from wideresnet.seeds import Stream, numpy_generator
    from wideresnet.train.step import mix_batch

    torch.manual_seed(0)
    student = create_model("wrn-10-1", num_classes=5)
    teacher = create_model("wrn-10-2", num_classes=5).eval().requires_grad_(False)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 5
    before = copy.deepcopy(student)  # train mode, as the step runs it
    t, alpha = 3.0, 0.7
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    options = StepOptions(kd_temperature=t, kd_alpha=alpha, mixup_alpha=mixup)
    runtime = Runtime.eager("cpu", "fp32")
    step = make_step(student, optimizer, runtime, world=World(), options=options, teacher=teacher)
    sums = EpochSums.start(torch.device("cpu"))
    step(x, y, sums, 0)
    targets = [(y, 1.0)]
    if mixup:  # the same draws as the step's own
        x, mix = mix_batch(x, options, numpy_generator(0, 0, Stream.MIXING, 0))
        targets = [(y, mix.lam), (y[mix.partner], 1 - mix.lam)]
    with torch.no_grad():
        s, z = before(x).double(), teacher(x).double()
    hard = sum(-(s.log_softmax(1)[torch.arange(8), c]).mean() * w for c, w in targets)
    p = (z / t).softmax(1)
    soft = (p * (p.log() - (s / t).log_softmax(1))).sum(1).mean() * t * t
    expected = (1 - alpha) * hard + alpha * soft
    assert sums.loss.item() / 8 == pytest.approx(expected.item(), rel=1e-5)
    assert not any(p.grad is not None for p in teacher.parameters())


def test_a_distilled_student_trains_and_records_its_teacher(npz, tmp_path):
    teacher = tmp_path / "teacher"
    assert cli(*train_args(npz, teacher, model="wrn-10-2")).returncode == 0
    student = tmp_path / "student"
    result = cli(*train_args(npz, student, "--teacher", teacher, "--kd-temperature", "2"))
    assert result.returncode == 0, result.stderr
    recorded = json.loads((student / "result.json").read_text())["teacher"]
    assert recorded["source"] == str(teacher) and recorded["model"] == "wrn-10-2"
    assert len(recorded["sha256"]) == 64 and recorded["classes"] == 4
    config = json.loads((student / "config.json").read_text())
    assert config["teacher"] == str(teacher) and config["kd_temperature"] == 2.0
    five = learnable_npz(tmp_path / "five.npz", n_train=32, n_test=8, size=32, classes=5)
    line = one_line_error(cli(*train_args(five, tmp_path / "s5", "--teacher", teacher)))
    assert "predicts 4 classes, this run's data has 5" in line
    zca = cli(*train_args(npz, tmp_path / "s6", "--teacher", teacher, "--preprocess", "zca"))
    line = one_line_error(zca)
    assert "trained on mean/std inputs and this run uses --preprocess zca" in line
    assert "--preprocess meanstd" in line
    line = one_line_error(cli(*train_args(npz, tmp_path / "s7", "--teacher", tmp_path / "no")))
    assert "--teacher" in line and "no such run directory" in line
    for own in (teacher, teacher / "checkpoint.pt"):  # the folder the run would replace
        line = one_line_error(cli(*train_args(npz, teacher, "--teacher", own, "--overwrite")))
        assert "inside this run's own folder" in line
    assert json.loads((teacher / "result.json").read_text())["model"] == "wrn-10-2"
    for recipe in (["--mixup-alpha", "0.2"], ["--cutmix-alpha", "1.0", "--sam-rho", "0.05"]):
        mixed = cli(*train_args(npz, tmp_path / "s8", "--teacher", teacher, *recipe, "--overwrite"))
        assert mixed.returncode == 0, mixed.stderr  # distils from the mixed batch


def test_the_teacher_is_checked_at_the_start_and_on_every_resume(npz, tmp_path):
    import shutil

    teacher, other = tmp_path / "teacher", tmp_path / "other"
    assert cli(*train_args(npz, teacher, model="wrn-10-2")).returncode == 0
    assert cli(*train_args(npz, other, "--seed", "7", model="wrn-10-2")).returncode == 0
    student = tmp_path / "student"
    stopped = cli_with("sigterm", 3, *train_args(npz, student, "--teacher", teacher))
    assert stopped.returncode == 143, stopped.stderr
    recorded = json.loads((student / "config.json").read_text())["resolved"]["teacher"]
    assert len(recorded["sha256"]) == 64
    shutil.move(teacher, tmp_path / "kept")  # another teacher in its place
    shutil.copytree(other, teacher)
    line = one_line_error(cli("train", "--resume", student))
    assert "not the ones this run started with" in line
    shutil.rmtree(teacher)
    shutil.move(tmp_path / "kept", teacher)  # the same teacher again: the run resumes
    assert cli("train", "--resume", student).returncode == 0
    (other / "result.json").unlink()  # a teacher still training (or stopped) is refused
    line = one_line_error(cli(*train_args(npz, tmp_path / "s2", "--teacher", other)))
    assert "a run that has not finished" in line
    renamed = learnable_npz(tmp_path / "renamed.npz", n_train=64, n_test=16, size=32)
    with np.load(renamed) as arrays:
        values = dict(arrays)
    values["classes"] = np.array(["c0", "c2", "c1", "c3"])  # the same count, another order
    np.savez(renamed, **values)
    line = one_line_error(cli(*train_args(renamed, tmp_path / "s3", "--teacher", teacher)))
    assert "its class 1 is 'c1', this run's is 'c2'" in line


def test_a_teacher_of_another_image_size_is_refused(tmp_path):
    from helpers import write_image_folder

    folder = tmp_path / "images"
    write_image_folder(folder, np.random.default_rng(3), per_class=4, size=32)
    base = "--model wrn-10-1 --dataset folder --epochs 1 --batch-size 4 --precision fp32".split()
    small = tmp_path / "small"
    trained = cli("train", *base, "--data-dir", folder, "--image-size", "16", "--out", small)
    assert trained.returncode == 0, trained.stderr
    for size in ("32", "24"):  # the student at 32 px (its images' own), and at 24
        args = ["--data-dir", folder, "--image-size", size, "--teacher", small]
        line = one_line_error(cli("train", *base, *args, "--out", tmp_path / f"s{size}"))
        assert f"trained on 16x16 images, this run's are {size}x{size}" in line
    student = tmp_path / "student"  # the same size: accepted
    args = ["--data-dir", folder, "--image-size", "16", "--teacher", small, "--out", student]
    assert cli("train", *base, *args).returncode == 0


RD_MEAN, RD_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # RepDistiller CIFAR-100


class Pickled:
    """A class no safe loader knows: a file holding one is refused, naming it."""


def test_a_repdistiller_checkpoint_imports_and_teaches_with_its_own_normalisation(npz, tmp_path):
    from references import ReferenceWRN, randomise

    from wideresnet.data.preprocess import normalisation
    from wideresnet.recipes import make_config
    from wideresnet.train.distill import load_teacher

    net = randomise(ReferenceWRN(16, 2, 4), 7).eval()  # RepDistiller's wrn.py: xternalz's keys
    options = argparse.Namespace(model="wrn_16_2", learning_rate=0.05, lr_decay_epochs=[150])
    sgd = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    path = tmp_path / "wrn_16_2_last.pth"  # as its train_teacher.py saves the last epoch
    torch.save({"opt": options, "model": net.state_dict(), "optimizer": sgd.state_dict()}, path)
    teacher = tmp_path / "teacher.pt"
    result = cli("import", "--from", "repdistiller", path, "--out", teacher)
    assert result.returncode == 0, result.stderr
    assert "pickled options ('opt')" in result.stdout and "CIFAR-100 mean/std" in result.stdout
    images = torch.randint(0, 256, (3, 32, 32, 3), generator=torch.Generator().manual_seed(2))
    theirs = (images.float() / 255 - torch.tensor(RD_MEAN)) / torch.tensor(RD_STD)
    with torch.no_grad():
        expected = net(theirs.permute(0, 3, 1, 2))
        imported = wideresnet.load_model(teacher)
        torch.testing.assert_close(imported(imported.input_transform(images)), expected)
        # as a teacher of a cifar100-kd student, whose batches are normalised with our mean/std
        config = make_config("cifar100-kd", {"teacher": str(teacher), "device": "cpu"})
        loaded = load_teacher(config, ["c0", "c1", "c2", "c3"], torch.device("cpu"))
        mean, std = (torch.tensor(v) for v in normalisation("meanstd"))
        ours = ((images.float() - mean) / std).permute(0, 3, 1, 2)
        torch.testing.assert_close(loaded.model(ours), expected, rtol=1e-4, atol=1e-4)
    student = tmp_path / "student"
    run = cli(*train_args(npz, student, "--preset", "cifar100-kd", "--teacher", teacher))
    assert run.returncode == 0, run.stderr
    recorded = json.loads((student / "result.json").read_text())["teacher"]
    assert "trained with mean (129.311, 124.10" in recorded["input_conversion"]
    torch.save({"model": net.state_dict(), "extra": Pickled()}, tmp_path / "odd.pth")
    line = one_line_error(
        cli("import", "--from", "repdistiller", tmp_path / "odd.pth", "--out", tmp_path / "o.pt")
    )
    assert "Unsupported global" in line and "Pickled" in line


@pytest.mark.slow
def test_distillation_on_real_cifar10_images(tmp_path, real_data_cache):
    data = SHARED_DATA / "cifar10-jpeg"
    env = {"WRN_CACHE_DIR": str(real_data_cache)}
    common = "--dataset folder --epochs 2 --batch-size 32 --train-limit 512 --eval-limit 256"
    common += " --precision fp32 --lr 0.05 --milestones 2"
    teacher = tmp_path / "teacher"
    args = ["train", "--model", "wrn-10-2", *common.split(), "--data-dir", data]
    assert cli(*args, "--out", teacher, env=env).returncode == 0
    student = tmp_path / "student"
    args = ["train", "--model", "wrn-10-1", *common.split(), "--data-dir", data]
    result = cli(*args, "--out", student, "--teacher", teacher, env=env)
    assert result.returncode == 0, result.stderr
    rows = metrics(student)
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)
    assert json.loads((student / "result.json").read_text())["teacher"]["model"] == "wrn-10-2"


def test_the_cifar100_kd_preset_is_repdistillers_recipe():
    from wideresnet.recipes import make_config

    optim = make_config("cifar100-kd").optim
    assert (optim.epochs, optim.lr, optim.milestones, optim.lr_decay) == (
        240,
        0.05,
        (150, 180, 210),
        0.1,
    )
    assert (optim.weight_decay, optim.batch_size, optim.momentum) == (5e-4, 64, 0.9)
    assert (optim.nesterov, optim.kd_temperature, optim.kd_alpha) == (False, 4.0, 0.9)
    shown = json.loads(cli("table", "show", "beyond", "--json").stdout)["rows"]
    published = {r["id"]: r["paper"]["cifar100"] for r in shown if r["id"].startswith("rd-")}
    assert published == {
        "rd-wrn-40-2": 24.39,
        "rd-wrn-16-2": 26.74,
        "rd-kd-wrn-16-2": 25.08,
        "rd-wrn-40-1": 28.02,
        "rd-kd-wrn-40-1": 26.46,
    }


# --------------------------------------------------------------------------------------------
# Group norm
# --------------------------------------------------------------------------------------------


@pytest.mark.exports
def test_group_norm_trains_resumes_exports_and_loads_back(npz, tmp_path):
    group = ["--norm", "group:4", "--epochs", "3", "--milestones", "2,3"]
    straight, _ = assert_resumes_exactly(lambda out: train_args(npz, out, *group), 6, tmp_path)
    model = wideresnet.load_model(straight)
    assert isinstance(model.group0.block0.bn0, torch.nn.GroupNorm)
    assert model.group0.block0.bn0.num_groups == 4
    onnx = cli("export", straight, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert onnx.returncode == 0, onnx.stderr
    export = tmp_path / "m.safetensors"
    assert cli("export", straight, "--format", "safetensors", "--out", export).returncode == 0
    again = wideresnet.load_model(export)
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(
            again(again.input_transform(images)), model(model.input_transform(images))
        )
    info = json.loads(cli("info", "wrn-16-4", "--norm", "group:16", "--json").stdout)
    assert info["params"] == wideresnet.count_params(create_model("wrn-16-4", norm="group:16"))
    line = one_line_error(cli("info", "wrn-16-4", "--norm", "group:7"))
    assert "16 channels do not split into 7 groups" in line
