"""Every network as a backbone, in timm's conventions.

On every model: `forward_features(x)` (the last map, before pooling), `forward_head(x,
pre_logits=False)`, `reset_classifier(num_classes)`, `get_classifier()`, `num_features`.

`create_model(name, features_only=True, out_indices=(...))` gives a `FeatureNet`: its forward
returns the maps of the chosen stages, and `feature_info` lists each one's module name,
channels (`num_chs`) and stride (`reduction`), as timm's does. Index 0 is the stem, then the
stages: group0..group2 of the CIFAR networks, layer1..layer4 of the ImageNet ones (whose
weights, torchvision's `wide_resnet50_2` included, load as they are). The maps are the
stages' own outputs, the activations a forward hook on that module sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.errors import ModelNameError


def run_module(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A stage that is one submodule of the model, called on the previous stage's map."""
    return getattr(model, name)(x)


@dataclass(frozen=True)
class Stage:
    """One stage of a network as a backbone: its name, the submodules it runs, how (a function
    of the model, or a FeatureNet holding the same submodules, and the input), its output
    channels and its stride."""

    module: str
    keeps: tuple[str, ...]
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    channels: int
    reduction: int


def module_stage(name: str, channels: int, reduction: int) -> Stage:
    return Stage(name, (name,), partial(run_module, name), channels, reduction)


class Backbone:
    """timm's classifier interface, for a network with `fc`, `num_features`, `head_bias`,
    `forward_features` and `feature_stages`."""

    head_bias = True

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new head for num_classes classes (PyTorch's default init); 0: no head (the
        pooled features come out, as timm's)."""
        if num_classes < 0:
            raise ModelNameError(f"num_classes must be >= 0, got {num_classes}")
        device = next(self.parameters()).device
        self.fc = (
            nn.Linear(self.num_features, num_classes, bias=self.head_bias).to(device)
            if num_classes
            else nn.Identity()
        )


class FeatureInfo(list):
    """[{"module", "num_chs", "reduction"}, ...] with timm's accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


class FeatureNet(nn.Module):
    """The stages of `model` up to the last of `out_indices`; forward returns their maps, in
    index order. The submodules keep the full model's names, so the model's state_dict (a
    run's, an export's, torchvision's) loads, its head's keys left out."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        stages = model.feature_stages()
        count = len(stages)
        chosen = range(count) if out_indices is None else out_indices
        indices = []
        for index in chosen:
            if not isinstance(index, int) or not -count <= index < count:
                raise ModelNameError(
                    f"out_indices {tuple(chosen)}: each from 0 (the stem) to {count - 1} "
                    f"({', '.join(s.module for s in stages)})"
                )
            indices.append(index % count)
        self.out_indices = tuple(sorted(set(indices)))
        self.stages = stages[: self.out_indices[-1] + 1]
        for stage in self.stages:
            for name in stage.keeps:
                self.add_module(name, getattr(model, name))
        self.feature_info = FeatureInfo(
            {"module": s.module, "num_chs": s.channels, "reduction": s.reduction}
            for i, s in enumerate(stages)
            if i in self.out_indices
        )
        self.input_size = getattr(model, "input_size", None)
        self.name = getattr(model, "name", type(model).__name__)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for index, stage in enumerate(self.stages):
            x = stage.run(self, x)
            if index in self.out_indices:
                maps.append(x)
        return maps

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A full model's state_dict loads: keys of modules this backbone does not hold (the
        head, later stages) are left out; the rest must fit (strict)."""
        kept = set(self._modules)
        own = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] in kept}
        return super().load_state_dict(own, strict=strict, assign=assign)
