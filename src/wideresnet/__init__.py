"""Wide Residual Networks (Zagoruyko & Komodakis, BMVC 2016), faithful to the authors' code."""

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

__version__ = "0.1.0"

__all__ = [
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
