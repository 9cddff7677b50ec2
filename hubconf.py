"""torch.hub entry points: `torch.hub.load(REPO, "wrn_28_10", num_classes=10, dropout=0.3)`.

Each builds the network exactly as `wideresnet.create_model` does; `weights=` takes a file
exported by `wrn export --format safetensors`, one of our checkpoints, or a run directory, of
that very network (another is refused, as are options beside weights); `load(weights)`
takes any trained model.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

dependencies = ["torch", "numpy"]


def _build(name: str, num_classes: int, weights: str | None, **options):
    import wideresnet

    if weights is None:
        return wideresnet.create_model(name, num_classes, **options)
    given = {k: v for k, v in options.items() if v}
    if given:
        raise ValueError(f"{given} cannot apply to weights={weights}: it holds a trained model")
    model = wideresnet.load_model(weights)
    if model.name != name:
        raise ValueError(f"{weights} holds a {model.name}, not a {name}")
    if model.fc.out_features != num_classes:
        raise ValueError(f"{weights} has {model.fc.out_features} classes, not {num_classes}")
    return model


def wrn_16_4(num_classes: int = 10, dropout: float = 0.0, weights: str | None = None):
    """WRN-16-4 (PAPER.md Table 6), for 32x32 images."""
    return _build("wrn-16-4", num_classes, weights, dropout=dropout)


def wrn_16_8(num_classes: int = 10, dropout: float = 0.0, weights: str | None = None):
    """WRN-16-8 (Tables 4-5), for 32x32 images."""
    return _build("wrn-16-8", num_classes, weights, dropout=dropout)


def wrn_28_2(num_classes: int = 10, dropout: float = 0.0, weights: str | None = None):
    """WRN-28-2 (the semi-supervised backbone), for 32x32 images."""
    return _build("wrn-28-2", num_classes, weights, dropout=dropout)


def wrn_28_10(num_classes: int = 10, dropout: float = 0.0, weights: str | None = None):
    """WRN-28-10 (Tables 4-6), for 32x32 images."""
    return _build("wrn-28-10", num_classes, weights, dropout=dropout)


def wrn_40_4(num_classes: int = 10, dropout: float = 0.0, weights: str | None = None):
    """WRN-40-4 (Tables 4-5), for 32x32 images."""
    return _build("wrn-40-4", num_classes, weights, dropout=dropout)


def wrn_50_2(num_classes: int = 1000, weights: str | None = None):
    """WRN-50-2 for ImageNet (torchvision's wide_resnet50_2 layout), 224x224 images."""
    return _build("wrn-50-2", num_classes, weights)


def load(weights: str):
    """Any trained model: a file of `wrn export --format safetensors`, one of our checkpoints,
    or a run directory, ready in eval mode with its classes and input transform."""
    import wideresnet

    return wideresnet.load_model(weights)
