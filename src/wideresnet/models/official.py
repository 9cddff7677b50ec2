"""The authors' checkpoints: the flat `params` dict their PyTorch code saves (model.pt7)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from wideresnet.errors import RunError
from wideresnet.models.wrn import WideResNet


def _listed(keys: list[str]) -> str:
    return f"{keys[:5]}{'...' if len(keys) > 5 else ''}"


def official_state_dict(model: nn.Module, params: Mapping[str, torch.Tensor]) -> dict:
    """Map the authors' flat `params` dict onto `model.state_dict()` keys.

    Their conv weights are stored under the module's name (`group0.block0.conv0`), everything
    else under the same dotted key as ours. Raises ValueError naming missing, unexpected or
    mis-shaped keys.
    """
    if not isinstance(model, WideResNet):
        raise ValueError("the authors' checkpoints are for WideResNet (wrn-d-k) models")
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in params.items():
        # conv weights: "group0.block0.conv0" -> "group0.block0.conv0.weight"
        target = key + ".weight" if key not in ours and key + ".weight" in ours else key
        mapped[target] = torch.as_tensor(value)
    wanted = {k for k in ours if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(wanted - mapped.keys()), sorted(mapped.keys() - wanted)
    if missing or unexpected:
        raise ValueError(
            "checkpoint does not fit the model: "
            + (f"missing {_listed(missing)} " if missing else "")
            + (f"unexpected {_listed(unexpected)}" if unexpected else "")
        )
    for key, value in mapped.items():
        if value.shape != ours[key].shape:
            raise ValueError(
                f"checkpoint does not fit the model: {key} has shape {tuple(value.shape)}, "
                f"the model wants {tuple(ours[key].shape)}"
            )
    return mapped


def load_official_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load the `params` dict saved by the authors' PyTorch code (model.pt7) into `model`."""
    mapped = official_state_dict(model, params)
    with torch.no_grad():
        for key, value in mapped.items():
            model.state_dict()[key].copy_(value)
    return model


def infer_official_model(params: Mapping[str, torch.Tensor]) -> tuple[str, dict]:
    """(model name, model options) of the WideResNet that wrote an authors' `params` dict,
    from its shapes alone."""
    try:
        num_classes, width = params["fc.weight"].shape
        blocks = sum(1 for k in params if re.fullmatch(r"group0\.block\d+\.bn0\.weight", k))
        kernels = []
        while f"group0.block0.conv{len(kernels)}" in params:
            kernels.append(int(params[f"group0.block0.conv{len(kernels)}"].shape[-1]))
        in_channels = int(params["conv0"].shape[1])
    except (KeyError, AttributeError, ValueError, TypeError) as error:
        raise ValueError(f"not a WRN params dict from the authors' code: {error}") from None
    if blocks < 1 or not kernels or in_channels != 3:
        raise ValueError("not a WRN params dict from the authors' code: no group0.block0")
    k = width / 64
    name = f"wrn-{6 * blocks + 4}-{int(k) if float(k).is_integer() else k}"
    return name, {
        "num_classes": int(num_classes),
        "block": tuple(kernels),
        "blocks_per_group": blocks,
    }


def import_official(source: str | Path, out: str | Path, overwrite: bool = False) -> str:
    """Convert an authors' model.pt7 into our checkpoint format at `out`; a one-line summary.
    An existing `out` is replaced only with overwrite."""
    from wideresnet.models import count_params, create_model
    from wideresnet.recipes import make_config
    from wideresnet.train.checkpoint import load_weights_file, model_checkpoint, write_checkpoint

    source, out = Path(source), Path(out)
    saved = load_weights_file(source, out, overwrite)
    params = saved.get("params", saved) if isinstance(saved, dict) else None
    if not isinstance(params, dict):
        raise RunError(f"{source}: no params dict inside")
    try:
        name, options = infer_official_model(params)
        model = create_model(name, **options)
        load_official_params(model, params)
    except ValueError as error:
        raise RunError(f"{source}: {error}") from None
    classes = options.pop("num_classes")
    config = make_config("cifar", {"model": name, **options})
    state = model_checkpoint(
        config.to_dict(), [str(i) for i in range(classes)], model.state_dict(), source=str(source)
    )
    write_checkpoint(Path(out), state)
    return f"{name}, block {model.block}, {count_params(model):,} parameters"
