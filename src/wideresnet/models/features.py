"""Every network as a backbone, in timm's conventions.

On every model: `forward_features(x)` (the last map, before pooling), `forward_head(x,
pre_logits=False)`, `reset_classifier(num_classes, global_pool=None)`, `get_classifier()`,
`num_features`, `num_classes`, and `forward_intermediates(x, indices)` (the stages' maps and
the final features in one pass).

`create_model(name, features_only=True, out_indices=(...))` (or an int n: the last n stages,
as timm reads it) gives a `FeatureNet`: its forward
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


def stage_indices(indices: int | Sequence[int] | None, stages: list[Stage]) -> tuple[int, ...]:
    """The stages chosen, sorted: every one (None), the last n (an int n, as timm), or the
    indices given (negative from the end); ModelNameError naming the valid range."""
    count = len(stages)
    names = ", ".join(s.module for s in stages)
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 1 <= indices <= count:
            raise ModelNameError(f"out_indices {indices}: the last n stages, n from 1 to {count}")
        return tuple(range(count - indices, count))
    chosen = range(count) if indices is None else indices
    found = []
    for index in chosen:
        if isinstance(index, bool) or not isinstance(index, int) or not -count <= index < count:
            raise ModelNameError(
                f"out_indices {tuple(chosen)}: each from 0 (the stem) to {count - 1} ({names})"
            )
        found.append(index % count)
    if not found:
        raise ModelNameError(f"out_indices {tuple(chosen)}: no stage chosen ({names})")
    return tuple(sorted(set(found)))


class Backbone:
    """timm's classifier interface, for a network with `fc`, `num_features`, `head_bias`,
    `forward_features` and `feature_stages` (and `finish_features`, what forward_features does
    after the last stage, where it does anything)."""

    head_bias = True
    global_pool = "avg"

    def finish_features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.fc(x)

    @property
    def num_classes(self) -> int:
        return 0 if isinstance(self.fc, nn.Identity) else self.fc.out_features

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's: (the final features, [the chosen stages' maps]) in one pass, or the maps
        alone with intermediates_only; `indices` as out_indices; `norm` also applies the final
        norm to the last stage's map (pre-activation networks)."""
        if output_fmt != "NCHW":
            raise ModelNameError(f"output_fmt {output_fmt!r}: only 'NCHW'")
        stages = self.feature_stages()
        chosen = stage_indices(indices, stages)
        maps = []
        for index, stage in enumerate(stages):
            if stop_early and intermediates_only and index > chosen[-1]:
                break
            x = stage.run(self, x)
            if index in chosen:
                last = norm and index == len(stages) - 1
                maps.append(self.finish_features(x) if last else x)
        return maps if intermediates_only else (self.finish_features(x), maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for num_classes classes (PyTorch's default init); 0: no head (the
        pooled features come out, as timm's). global_pool: 'avg', or '' (no pooling: the map
        comes out, so only without a head, as timm's)."""
        if num_classes < 0:
            raise ModelNameError(f"num_classes must be >= 0, got {num_classes}")
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ModelNameError(f"global_pool {global_pool!r}: 'avg' or '' (none)")
            if global_pool == "" and num_classes:
                raise ModelNameError("global_pool '' (no pooling) only with num_classes 0")
            self.global_pool = global_pool
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

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        stages = model.feature_stages()
        self.out_indices = stage_indices(out_indices, stages)
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
