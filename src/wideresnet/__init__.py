"""Wide Residual Networks (Zagoruyko & Komodakis, BMVC 2016), faithful to the authors' code."""

from wideresnet import train  # the subpackage; calling it trains (train/__init__.py)
from wideresnet.config import Config
from wideresnet.data import BatchLoader, TrainAugment, load_dataset
from wideresnet.errors import ConfigError, DataError, ModelNameError, RunError
from wideresnet.export import load_model
from wideresnet.models import (
    CifarResNet,
    ImageNetResNet,
    PreActResNet,
    WideResNet,
    count_params,
    create_model,
    list_models,
    load_official_params,
    model_summary,
)
from wideresnet.presets import PRESETS
from wideresnet.recipes import make_config
from wideresnet.train import Runtime, evaluate, evaluate_run, load_trained
from wideresnet.train.run import resume
from wideresnet.version import __version__

__all__ = [
    "PRESETS",
    "BatchLoader",
    "CifarResNet",
    "Config",
    "ConfigError",
    "DataError",
    "ImageNetResNet",
    "ModelNameError",
    "PreActResNet",
    "RunError",
    "Runtime",
    "TrainAugment",
    "WideResNet",
    "__version__",
    "count_params",
    "create_model",
    "evaluate",
    "evaluate_run",
    "list_models",
    "load_dataset",
    "load_model",
    "load_official_params",
    "load_trained",
    "make_config",
    "model_summary",
    "resume",
    "train",
]
