"""Taking a trained WRN away: safetensors with the metadata that rebuilds it alone, ONNX
(checked against PyTorch with onnxruntime), and `load_model` for exported files, our
checkpoints and run directories.

A loaded model is a ready eval-mode nn.Module with three plain attributes: `classes` (names),
`input_size` (pixels) and `input_transform`, a module turning uint8 images (N, H, W, 3) into
the input the model was trained on (its run's mean/std, or GCN + ZCA).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wideresnet.config import Config
from wideresnet.data.prepare import load_split, training_split
from wideresnet.data.preprocess import (
    InputTransform,
    cached_zca,
    check_normalization,
    normalisation,
)
from wideresnet.errors import DataError, ModelNameError, RunError, WriteError
from wideresnet.extras import require
from wideresnet.files import atomic_write, check_regular, free_space
from wideresnet.models import FeatureNet, create_model
from wideresnet.train.checkpoint import nonfinite_tensor, weight_mismatch
from wideresnet.train.environment import git_commit
from wideresnet.train.trained import load_trained

FORMAT = "wideresnet-model/1"
ZCA_KEYS = ("input.zca_mean", "input.zca_whiten")
MAX_INPUT_SIZE = (
    2048  # pixels: a larger input_size in a file is refused before any image is resized
)


@dataclass
class Portable:
    """A trained model and everything it needs to be used alone."""

    model: nn.Module
    config: Config
    classes: list[str]
    normalization: dict[str, Any]  # {"mean": [...], "std": [...]} (0-255) or {"zca": True}
    transform: InputTransform
    input_size: int

    def finish(self) -> nn.Module:
        """The eval-mode model with classes, input_size and input_transform attached (as plain
        attributes, outside its state_dict)."""
        self.model.eval()
        self.transform.eval()
        for key, value in (
            ("classes", self.classes),
            ("input_size", self.input_size),
            ("input_transform", self.transform),
        ):
            object.__setattr__(self.model, key, value)
        return self.model


def _normalization(
    recorded: dict | None, config: Config, where: str
) -> tuple[dict, InputTransform]:
    if isinstance(recorded, dict):  # imported from another project
        mean, std = recorded.get("mean"), recorded.get("std")
    elif config.data.preprocess == "zca":
        try:
            (x_train, _), _, _ = training_split(config)
        except DataError as error:
            raise RunError(f"a ZCA run's whitening needs its training data: {error}") from None
        zca_mean, whiten = cached_zca(x_train, f"{config.data.dataset}|{config.data.data_dir}")
        return {"zca": True}, InputTransform(zca_mean=zca_mean, zca_whiten=whiten)
    else:
        mean, std = normalisation(config.data.preprocess)
    mean, std = check_normalization(mean or (), std or (), where)
    return {"mean": mean, "std": std}, InputTransform(mean, std)


def portable(source: str | Path) -> Portable:
    """From a run directory or one of our checkpoint files (refused when its weights hold
    NaN or infinite values, or its normalisation would make them)."""
    trained = load_trained(source)
    bad = nonfinite_tensor(trained.model.state_dict())
    if bad:
        raise RunError(f"{source}: {bad} holds NaN or infinite values; refusing to use it")
    recorded = trained.checkpoint.normalization
    normalization, transform = _normalization(recorded, trained.config, str(source))
    size = trained.config.data.image_size or getattr(trained.model, "input_size", 32)
    return Portable(trained.model, trained.config, trained.classes, normalization, transform, size)


def export_safetensors(source: str | Path, out: str | Path) -> str:
    """Weights and the metadata that rebuild the model (and its input) alone."""
    require("export", "--format safetensors", ("safetensors",))
    from safetensors.torch import save

    item = portable(source)
    tensors = {k: v.contiguous() for k, v in item.model.state_dict().items()}
    if item.transform.zca:
        tensors.update(dict(zip(ZCA_KEYS, (item.transform.zca_mean, item.transform.zca_whiten))))
    config = item.config.to_dict()
    metadata = {
        "format": FORMAT,
        "model": item.config.model.model,
        "model_options": json.dumps(item.config.given_model_options()),
        "classes": json.dumps(item.classes),
        "normalization": json.dumps(item.normalization),
        "input_size": str(item.input_size),
        "recipe_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "config": json.dumps(config),
        "commit": git_commit() or "unknown",
    }
    atomic_write(out, save(tensors, metadata=metadata))
    return f"{item.config.model.model}, {len(item.classes)} classes, {len(tensors)} tensors"


def _metadata(path: Path, data: bytes) -> tuple[list[str], dict, dict, int]:
    """(classes, model options, normalization, input size) of a safetensors export, each
    checked; ValueError saying what is wrong."""
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a wideresnet export (format {meta.get('format')!r})")
    classes = json.loads(meta["classes"])
    options = json.loads(meta["model_options"])
    normalization = json.loads(meta["normalization"])
    size = meta["input_size"]
    if not size.isdigit():
        raise ValueError(f"input_size {size!r} is not a whole number of pixels")
    size = int(size)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError("classes must be a list of class names")
    if not isinstance(options, dict) or not isinstance(normalization, dict):
        raise ValueError("model_options and normalization must be objects")
    if not 1 <= size <= MAX_INPUT_SIZE:
        raise ValueError(f"input_size {size} is outside 1..{MAX_INPUT_SIZE} pixels")
    return classes, options, normalization, size


def _from_safetensors(path: Path) -> Portable:
    require("export", f"{path} (a safetensors file)", ("safetensors",))
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = read_model_file(path)
        tensors = load(data)
        classes, options, normalization, size = _metadata(path, data)
        meta = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
        model = create_model(meta["model"], len(classes), **options)
    except (SafetensorError, ValueError, KeyError, TypeError, ModelNameError) as error:
        raise RunError(f"{path}: not a readable wideresnet safetensors file ({error})") from None
    zca = [tensors.pop(k) for k in ZCA_KEYS if k in tensors]
    problem = weight_mismatch(model.state_dict(), tensors)
    if problem:
        raise RunError(f"{path}: weights do not fit {meta['model']}: {problem}")
    bad = nonfinite_tensor(tensors)
    if bad:
        raise RunError(f"{path}: {bad} holds NaN or infinite values; refusing to use it")
    model.load_state_dict(tensors)
    if normalization.get("zca") and len(zca) == 2:
        transform = InputTransform(zca_mean=zca[0], zca_whiten=zca[1])
    else:
        mean, std = check_normalization(
            normalization.get("mean") or (), normalization.get("std") or (), str(path)
        )
        transform = InputTransform(mean, std)
    config = Config.from_dict(json.loads(meta.get("config", "{}")))
    return Portable(model, config, classes, normalization, transform, size)


def read_model_file(path: Path) -> bytes:
    """A model file's bytes: a regular file only (a FIFO or device is refused by name)."""
    check_regular(path, "model file")
    try:
        return path.read_bytes()
    except OSError as error:
        raise RunError(f"{path}: unreadable ({error.strerror})") from None


def load_model(
    path: str | os.PathLike,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
) -> nn.Module:
    """A ready eval-mode model from an exported .safetensors file, one of our checkpoints (an
    import's too), or a run directory; `model.classes`, `model.input_size` and
    `model.input_transform` come with it. `features_only=True`: its backbone, with those
    weights (models/features.py; `out_indices` as create_model's)."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such file or run directory")
    model = _portable_any(path).finish()
    if not features_only:
        return model
    backbone = FeatureNet(model, out_indices).eval()
    object.__setattr__(backbone, "input_transform", model.input_transform)
    return backbone


def _portable_any(path: Path) -> Portable:
    if not path.is_dir():
        check_regular(path, "model file")
        with open(path, "rb") as f:
            if f.read(2) != b"PK":  # our checkpoints are torch's zip files; the rest: safetensors
                return _from_safetensors(path)
    return portable(path)


class WithPreprocessing(nn.Module):
    """uint8 images (N, H, W, 3) in, class probabilities out (`--include-preprocessing`)."""

    def __init__(self, transform: InputTransform, model: nn.Module) -> None:
        super().__init__()
        self.transform, self.model = transform, model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(images)).softmax(1)


def _check_images(item: Portable) -> tuple[np.ndarray, str]:
    """Real images to check an export on: the run's test images when its data is here (16 at
    32 px, fewer when larger: 2 at 224 px)."""
    count = max(2, min(16, 16 * 32 * 32 // item.input_size**2))
    try:
        if item.config.data.data_dir is not None and item.config.data.dataset != "imagenet":
            images, _, _ = load_split(item.config, item.config.data.test_split)
            if images.shape[1:3] == (item.input_size, item.input_size):
                return images[:count], f"{count} test images of {item.config.data.data_dir}"
    except DataError:
        pass
    generator = np.random.default_rng(0)
    size = (count, item.input_size, item.input_size, 3)
    return generator.integers(0, 256, size, dtype=np.uint8), f"{count} random images (no data here)"


def export_onnx(source: str | Path, out: str | Path, include_preprocessing: bool = False):
    """The model as ONNX (dynamic batch), checked with onnxruntime against PyTorch on real
    images; returns (summary, largest absolute difference)."""
    require("export", "--format onnx")
    item = _portable_any(Path(source))
    item.finish()
    images, what = _check_images(item)
    module = WithPreprocessing(item.transform, item.model) if include_preprocessing else item.model
    module.eval()
    uint8 = torch.from_numpy(images)
    example = uint8 if include_preprocessing else item.transform(uint8)
    with torch.no_grad():
        expected = module(example).numpy()
    try:
        difference = _write_onnx(module, example, expected, out, include_preprocessing)
    except OSError as error:  # the temporary folder or the exporter's own writes
        raise WriteError(
            f"cannot write {out}: {error.strerror or error} ({free_space(Path(out).parent)}); "
            "nothing was left"
        ) from None
    if include_preprocessing:
        kind = "uint8 NHWC images -> probabilities"
    else:
        kind = "float NCHW normalised images -> logits"
    return f"{kind}; checked with onnxruntime on {what}", difference


def _write_onnx(module, example, expected, out, include_preprocessing: bool) -> float:
    import onnxruntime

    folder = Path(out).absolute().parent
    folder.mkdir(parents=True, exist_ok=True)
    # "torchvision is not installed. Skipping torchvision::nms": true, and not ours to say
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(dir=folder) as scratch, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        onnx_path = Path(scratch) / "model.onnx"
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        torch.onnx.export(
            module,
            (example[:2],),
            str(onnx_path),
            input_names=["images"],
            output_names=["probabilities" if include_preprocessing else "logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            verbose=False,  # no progress lines of its own
        )
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": example.numpy()})[0]
        difference = float(np.abs(got - expected).max())
        atomic_write(out, onnx_path.read_bytes())
    return difference
