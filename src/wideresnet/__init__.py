"""Wide Residual Networks (Zagoruyko & Komodakis, BMVC 2016), faithful to the authors' code."""

from wideresnet.data import BatchLoader, DataError, load_dataset
from wideresnet.models import (
    CifarResNet,
    ImageNetResNet,
    ModelNameError,
    PreActResNet,
    WideResNet,
    count_params,
    create_model,
    list_models,
    load_official_params,
    model_summary,
)
from wideresnet.recipes import PRESETS, ConfigError, Recipe, make_recipe
from wideresnet.train import RunError, evaluate

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "BatchLoader",
    "ConfigError",
    "DataError",
    "Recipe",
    "RunError",
    "evaluate",
    "load_dataset",
    "make_recipe",
    "CifarResNet",
    "ImageNetResNet",
    "ModelNameError",
    "PreActResNet",
    "WideResNet",
    "count_params",
    "create_model",
    "list_models",
    "load_official_params",
    "model_summary",
]
