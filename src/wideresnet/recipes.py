"""A run's config from a named preset (presets.py) and the options given: `make_config`.

A model option the model does not take is refused by name when given, and left out (saying
so) when it comes from the preset.
"""

from __future__ import annotations

import logging
from typing import Any

from wideresnet.config import FIELDS, Config, ModelConfig
from wideresnet.errors import ConfigError
from wideresnet.models import model_options
from wideresnet.presets import PRESETS

__all__ = ["PRESETS", "make_config"]

log = logging.getLogger(__name__)

MODEL_OPTIONS = [k for k, info in FIELDS.items() if info.section == "model"]


def make_config(preset: str = "cifar", overrides: dict[str, Any] | None = None) -> Config:
    """The preset with `overrides` (flat keys) applied.

    A model option given in `overrides` that the model does not take is an error ("--block
    applies to wrn-d-k models only"); one that comes from the preset is left out, saying so.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    given = {k.replace("-", "_"): v for k, v in (overrides or {}).items()}
    values = {**PRESETS[preset], **given}
    name = values.get("model", ModelConfig.model)
    accepted, owner = model_options(str(name))
    for key in MODEL_OPTIONS:
        if key in ModelConfig.NOT_ARCHITECTURE or key in accepted or values.get(key) is None:
            continue
        if key in given:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} applies to {owner(key)} models only, not {name}")
        log.info(f"the {preset} preset's {key} = {values[key]} does not apply to {name}; left out")
        del values[key]
    return Config.from_dict(values)
