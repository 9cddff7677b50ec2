"""The optional extras (pyproject.toml): a verb that needs one checks for it first, so that a
missing package is one line saying what to install, never a traceback."""

from __future__ import annotations

import importlib

from wideresnet.errors import ConfigError

EXTRAS = {
    "export": ("safetensors", "onnx", "onnxscript", "onnxruntime"),
    "plots": ("matplotlib",),
    "tensorboard": ("tensorboard",),
    "cluster": ("submitit",),
}


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """ConfigError naming `what` and the extra when one of its packages does not import."""
    for module in modules or EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                f'{what} needs the {module} package: pip install "wideresnet[{extra}]"'
            ) from None
