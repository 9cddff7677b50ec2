"""The modern recipes: augmentation operations against Pillow, the policies on batches,
Cutout, mixup and CutMix, label smoothing, SAM, weight averaging, cosine with warm-up, and an
exact resume with all of them on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_resumes_exactly, metrics, tiny_config
from PIL import Image, ImageEnhance, ImageOps

from wideresnet.config import OptimConfig
from wideresnet.data import BatchLoader, TrainAugment, ops
from wideresnet.data.policies import Policy
from wideresnet.recipes import PRESETS, make_config
from wideresnet.train.optim import lr_at
from wideresnet.train.run import make_trainer
from wideresnet.train.rundir import RunDir
from wideresnet.train.step import EpochSums, Mix, StepOptions, loss_fn, mix_batch, mixed_loss

rng = np.random.default_rng(0)
IMAGES = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
IMAGES[0] = np.linspace(0, 200, 32, dtype=np.uint8)[None, :, None]  # a gradient
IMAGES[1] //= 3  # a dark one
FILL = (128, 128, 128)


def pillow(function) -> np.ndarray:
    return np.stack([np.asarray(function(Image.fromarray(a))) for a in IMAGES]).astype(int)


def ours(function, value) -> np.ndarray:
    x = torch.from_numpy(IMAGES).float()
    level = torch.full((len(IMAGES),), float(value), dtype=torch.float64)
    return function(x, level).numpy().astype(int)


def transformed(*matrix):
    return lambda im: im.transform(im.size, Image.AFFINE, matrix, fillcolor=FILL)


def enhanced(kind, factor):
    return lambda im: kind(im).enhance(factor)


# our op, its value, Pillow's reference, the largest difference, the share of pixels that differ
CASES = {
    "shear_x": (ops.OPS["ShearX"], 0.37, transformed(1, 0.37, 0, 0, 1, 0), 0, 0),
    "shear_y": (ops.OPS["ShearY"], 0.99, transformed(1, 0, 0, 0.99, 1, 0), 0, 0),
    "translate_x": (ops.OPS["TranslateX"], 7, transformed(1, 0, 7, 0, 1, 0), 0, 0),
    "translate_y": (ops.OPS["TranslateY"], -11, transformed(1, 0, 0, 0, 1, -11), 0, 0),
    "shear_fixed_point": (ops.OPS["ShearY"], -0.6, transformed(1, 0, 0, -0.6, 1, 0), 0, 0),
    "rotate": (ops.OPS["Rotate"], 23, lambda im: im.rotate(23, fillcolor=FILL), 0, 0),
    "rotate_back": (ops.OPS["Rotate"], -117, lambda im: im.rotate(-117, fillcolor=FILL), 0, 0),
    "rotate_quarter": (ops.OPS["Rotate"], 90, lambda im: im.rotate(90, fillcolor=FILL), 0, 0),
    "autocontrast": (ops.OPS["AutoContrast"], 0, ImageOps.autocontrast, 0, 0),
    "equalize": (ops.OPS["Equalize"], 0, ImageOps.equalize, 0, 0),
    "invert": (ops.OPS["Invert"], 0, ImageOps.invert, 0, 0),
    "solarize": (ops.OPS["Solarize"], 100, lambda im: ImageOps.solarize(im, 100), 0, 0),
    "posterize": (ops.OPS["Posterize"], 3, lambda im: ImageOps.posterize(im, 3), 0, 0),
    # enhancements: float rounding at a whole number may truncate one level apart
    "contrast": (ops.OPS["Contrast"], 1.7, enhanced(ImageEnhance.Contrast, 1.7), 1, 0.01),
    "color": (ops.OPS["Color"], 0.3, enhanced(ImageEnhance.Color, 0.3), 1, 0.01),
    "brightness": (ops.OPS["Brightness"], 1.45, enhanced(ImageEnhance.Brightness, 1.45), 1, 0.01),
    "sharpness": (ops.OPS["Sharpness"], 1.9, enhanced(ImageEnhance.Sharpness, 1.9), 1, 0.01),
}


@pytest.mark.parametrize("name", CASES)
def test_each_operation_equals_pillows(name):
    function, value, reference, largest, share = CASES[name]
    difference = np.abs(ours(function, value) - pillow(reference))
    assert difference.max() <= largest, name
    assert (difference > 0).mean() <= share, name


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment:2:9", "trivialaugment"])
def test_policies_keep_labels_shapes_range_and_are_a_function_of_seed_and_epoch(policy):
    images = np.random.default_rng(1).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)

    def loader(**extra):
        augment = TrainAugment(**extra)
        return BatchLoader(images, np.arange(96) % 10, 32, shuffle=True, augment=augment, seed=4)

    plain = list(loader().batches(2))
    first = list(loader(policy=policy).batches(2))
    again = list(loader(policy=policy).batches(2))
    other = list(loader(policy=policy).batches(3))
    for (x, y), (px, py), (ax, _) in zip(first, plain, again):
        assert torch.equal(y, py) and x.shape == px.shape and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 255 and torch.equal(x, x.round())
        assert torch.equal(x, ax)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, plain))  # it does something
    assert not torch.equal(first[0][0], other[0][0])
    # resuming mid-epoch gives the same remaining batches
    assert torch.equal(next(loader(policy=policy).batches(2, start_batch=2))[0], first[2][0])


@pytest.mark.parametrize("spec", ["autoaugment", "randaugment:3:7", "trivialaugment"])
def test_the_gpu_way_of_applying_a_policy_gives_the_cpu_ways_images(spec):
    """On a GPU each slot is one affine, lookup and blend of the whole batch with per-image
    parameters (nothing waits for the device); on the CPU each operation runs on the images
    that chose it. Same images."""
    policy = Policy(spec)
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (128, 32, 32, 3)))
    images[:4] //= 5  # dark images: autocontrast and equalize stretch them
    draws = policy.draw(128, torch.Generator().manual_seed(3))
    assert draws.ops.unique().numel() > 5  # the batch holds many operations
    subsets = policy.apply(images.float(), draws, slice(0, 128), whole_batch=False)
    batched = policy.apply(images.float(), draws, slice(0, 128), whole_batch=True)
    assert torch.equal(subsets, batched)
    assert not torch.equal(subsets, images.float())


@pytest.mark.compiles
@pytest.mark.parametrize("spec", ["randaugment:3:7", "trivialaugment"])
def test_a_compiled_policy_gives_the_loader_the_same_batches(spec):
    """With torch.compile (`wrn train` compiles the policy with the model) each slot is one
    graph of every family: the batches are the eager ones, bit for bit."""
    images = np.random.default_rng(5).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    images[:8] //= 5  # dark images: autocontrast and equalize stretch them

    def loader(compile_policy: bool) -> BatchLoader:
        augment = TrainAugment(policy=spec, compile_policy=compile_policy)
        return BatchLoader(images, np.arange(256) % 10, 128, shuffle=True, augment=augment, seed=1)

    eager = list(loader(False).batches(1))
    loader = loader(True)
    assert loader.augment.policy.compiled is not None
    for (x, y), (cx, cy) in zip(eager, loader.batches(1), strict=True):
        assert torch.equal(x, cx) and torch.equal(y, cy)


def test_cutout_zeroes_one_square_and_nothing_else():
    images = np.random.default_rng(2).integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)
    kwargs = dict(shuffle=True, mean=(0, 0, 0), std=(1, 1, 1))
    plain = next(
        BatchLoader(images, np.arange(64), 64, augment=TrainAugment(), **kwargs).batches(1)
    )[0]
    cut_augment = TrainAugment(cutout=16)
    cut = next(BatchLoader(images, np.arange(64), 64, augment=cut_augment, **kwargs).batches(1))[0]
    zeroed = (cut == 0).all(1)  # (B, H, W): pixels set to zero in every channel
    assert torch.equal(cut[~zeroed[:, None].expand_as(cut)], plain[~zeroed[:, None].expand_as(cut)])
    for mask in zeroed:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert 1 <= len(rows) <= 16 and 1 <= len(cols) <= 16
        assert mask.sum() == len(rows) * len(cols)  # one rectangle


# --------------------------------------------------------------------------------------------
# Losses, mixing, schedules
# --------------------------------------------------------------------------------------------


def test_label_smoothing_is_the_formula():
    logits, labels = torch.randn(8, 10), torch.arange(8)
    log_p = logits.log_softmax(1)
    expected = (0.9 * -log_p[torch.arange(8), labels] + 0.1 * -log_p.mean(1)).mean()
    torch.testing.assert_close(loss_fn(logits, labels, 0.1), expected)


def test_mixup_and_cutmix_are_their_formulas():
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    mixed, mix = mix_batch(x, StepOptions(mixup_alpha=1.0), np.random.default_rng(0))
    torch.testing.assert_close(mixed, mix.lam * x + (1 - mix.lam) * x[mix.partner])
    logits = torch.randn(8, 10)
    expected = mix.lam * F.cross_entropy(logits, y) + (1 - mix.lam) * F.cross_entropy(
        logits, y[mix.partner]
    )
    torch.testing.assert_close(mixed_loss(logits, y, mix, 0.0), expected)
    cut, box = mix_batch(x, StepOptions(cutmix_alpha=1.0), np.random.default_rng(3))
    from_partner = (cut == x[box.partner]) & (cut != x)
    area = from_partner.all(1).float().mean((1, 2))  # the pasted share of each image
    assert torch.allclose(area[box.partner != torch.arange(8)], torch.tensor(1 - box.lam))
    assert mixed_loss(logits, y, Mix(box.partner, 1.0), 0.0) == F.cross_entropy(logits, y)


def test_cosine_with_warmup_is_the_formula():
    optim = OptimConfig(lr=0.2, epochs=10, lr_schedule="cosine", warmup_epochs=2)
    steps = 50
    assert lr_at(optim, 1, 0, steps) == pytest.approx(0.2 / 100)  # the first warm-up step
    assert lr_at(optim, 2, 49, steps) == pytest.approx(0.2)  # the last
    for epoch, step in [(3, 0), (5, 17), (10, 49)]:
        done = (epoch - 1) * steps + step
        progress = (done - 100) / (10 * steps - 100)
        assert lr_at(optim, epoch, step, steps) == pytest.approx(
            0.1 * (1 + math.cos(math.pi * progress))
        )
    per_epoch = OptimConfig(lr=0.2, epochs=10, lr_schedule="cosine-epoch")
    assert lr_at(per_epoch, 4, 30, steps) == lr_at(per_epoch, 4, 0, steps)
    assert lr_at(per_epoch, 4, 0, steps) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.3)))


# --------------------------------------------------------------------------------------------
# SAM and weight averaging, on a real trainer
# --------------------------------------------------------------------------------------------


def trainer_with(npz, tmp_path, **options):
    return make_trainer(tiny_config(npz, augment=False, **options), RunDir(tmp_path))


@pytest.mark.compiles
@pytest.mark.parametrize("compile", ["on", "off"])
def test_wrn_train_compiles_the_policy_when_it_compiles_the_model(npz, tmp_path, compile):
    trainer = trainer_with(npz, tmp_path, policy="trivialaugment", compile=compile)
    assert (trainer.data.train.augment.policy.compiled is not None) is (compile == "on")
    assert ("compile graph" in trainer.runtime.reasons.get("policy", "")) is (compile == "on")


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_one_sam_step_is_the_two_step_update_written_out(npz, tmp_path, adaptive):
    plain_sgd = {"momentum": 0.0, "nesterov": False, "weight_decay": 1e-3}
    trainer = trainer_with(npz, tmp_path, sam_rho=0.05, sam_adaptive=adaptive, **plain_sgd)
    model = trainer.model
    x, y = next(trainer.data.train.batches(1))
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.named_buffers()}
    # the update written out: gradient at w, move by rho along it, gradient there, come back
    model.train()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    scale = [w[n].abs() if adaptive else torch.ones_like(w[n]) for n, _ in model.named_parameters()]
    norm = torch.norm(torch.stack([(s * g).norm() for s, g in zip(scale, grads)]))
    moves = [s * s * g * 0.05 / (norm + 1e-12) for s, g in zip(scale, grads)]
    probe = trainer_with(npz, tmp_path / "probe").model
    probe.load_state_dict(
        {**{n: w[n] + m for (n, _), m in zip(model.named_parameters(), moves)}, **stats}
    )
    probe.train()
    grads2 = torch.autograd.grad(F.cross_entropy(probe(x), y), list(probe.parameters()))
    expected = {
        n: w[n] - 0.1 * (g + 1e-3 * w[n]) for (n, _), g in zip(model.named_parameters(), grads2)
    }
    after_one_forward = {n: b.clone() for n, b in model.named_buffers()}
    model.load_state_dict({**w, **stats})
    trainer.model.train()
    trainer.step(x, y, EpochSums.start(trainer.device), 0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6, msg=name)
    for name, b in model.named_buffers():  # batch norm saw the first pass only
        torch.testing.assert_close(b, after_one_forward[name], msg=name)


def test_weight_averaging_is_its_formula(npz, tmp_path):
    trainer = trainer_with(npz, tmp_path, ema_decay=0.9)
    tracked = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.model.train()
    for index, (x, y) in enumerate(list(trainer.data.train.batches(1))[:3]):
        trainer.step(x, y, EpochSums.start(trainer.device), index)
        trainer.ema.update(trainer.model)
        for n, p in trainer.model.named_parameters():
            tracked[n] = 0.9 * tracked[n] + 0.1 * p.detach()
    for n, p in trainer.ema.model.named_parameters():
        torch.testing.assert_close(p, tracked[n], msg=n)


# --------------------------------------------------------------------------------------------
# Every option on: training runs, resume stays exact, presets
# --------------------------------------------------------------------------------------------

EVERYTHING = (
    "--policy trivialaugment --cutout 8 --lr-schedule cosine --warmup-epochs 1 "
    "--label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --sam-rho 0.05 --ema-decay 0.9"
)


def test_resume_is_bit_exact_with_every_new_option_on(npz, tmp_path):
    options = "--model wrn-10-1 --dataset npz --epochs 3 --batch-size 32 --precision fp32 --seed 2"
    common = [*options.split(), *EVERYTHING.split(), "--data-dir", npz]

    def run(out):
        return ["train", *common, "--out", out]

    straight, stopped = assert_resumes_exactly(run, 8, tmp_path)
    assert "ema_test_error" in metrics(straight)[0]
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(stopped / "checkpoint.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key


@pytest.mark.parametrize(
    "preset", ["cifar-cutout", "cifar-autoaugment", "cifar-trivialaugment", "cifar-sam"]
)
def test_modern_presets_leave_the_papers_alone(preset):
    config = make_config(preset)
    assert config.optim.epochs == 200 and config.optim.batch_size == 128 and config.optim.lr == 0.1
    assert make_config("cifar") == make_config("cifar", {})  # the paper's recipe, unchanged
    assert PRESETS["cifar"] == {}
