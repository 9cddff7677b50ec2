"""The authors' checkpoints: the flat `params` dict their PyTorch code saves (model.pt7)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from wideresnet.models.wrn import WideResNet, wrn_name


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
    name = wrn_name(6 * blocks + 4, width / 64)
    return name, {
        "num_classes": int(num_classes),
        "block": tuple(kernels),
        "blocks_per_group": blocks,
    }
