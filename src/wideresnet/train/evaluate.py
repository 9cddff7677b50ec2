"""Evaluation: loss, top-1 / top-5 error and the confusion matrix over every test image."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.data.loader import BatchLoader
from wideresnet.progress import Progress
from wideresnet.train.distributed import World
from wideresnet.train.runtime import Runtime

TOP_K = 5  # the top-k error reported beside top-1 (all classes when there are fewer)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: BatchLoader,
    *,
    runtime: Runtime | None = None,
    num_classes: int | None = None,
    flip: bool = False,
    world: World = World(),
) -> dict[str, Any]:
    """Loss, top-1 and top-5 error (%) and the confusion matrix over every image of the
    loader (`flip`: also the error of flip-averaged predictions). `runtime` says how the model
    runs (default: eager fp32 on the loader's device); `num_classes` defaults to the model's
    outputs. On several processes each evaluates its share of every batch and the sums are
    added up."""
    runtime = runtime or Runtime.eager(loader.device)
    model.eval()
    sums = _zeros(num_classes or _outputs(model), flip, runtime.torch_device)
    with Progress("evaluating", loader.n, "images") as progress:
        for b, (x, y) in enumerate(loader.batches()):
            x = runtime.input(x)
            with runtime.autocast():
                logits = model(x).float()
            sums["loss"] += F.cross_entropy(logits, y, reduction="sum").double()
            sums["confusion"].index_put_((y, logits.argmax(1)), torch.ones_like(y), accumulate=True)
            k = min(TOP_K, logits.shape[1])
            sums["top5_wrong"] += (logits.topk(k, 1).indices != y[:, None]).all(1).sum()
            if flip:  # logits are used up first: a CUDA-graph replay may overwrite them
                probs = logits.softmax(1)
                with runtime.autocast():
                    probs += model(x.flip(3)).float().softmax(1)
                hits = (y, probs.argmax(1))
                sums["confusion_flip"].index_put_(hits, torch.ones_like(y), accumulate=True)
            progress.update(min((b + 1) * loader.batch_size, loader.n))
    confusion, loss_sum, top5_wrong = (sums[k] for k in ("confusion", "loss", "top5_wrong"))
    confusion_flip = sums.get("confusion_flip")
    for total in sums.values():
        world.sum_(total)
    result = _errors(confusion.cpu())
    result["loss"] = loss_sum.item() / max(1, loader.n)
    result["top5_error"] = 100.0 * top5_wrong.item() / max(1, loader.n)
    if flip:
        result["flip"] = _errors(confusion_flip.cpu())
    return result


def _outputs(model: nn.Module) -> int:
    """The number of classes of a model: the outputs of its last linear layer."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError("evaluate: a model without a linear head needs num_classes")
    return heads[-1].out_features


def _zeros(num_classes: int, flip: bool, device: torch.device) -> dict[str, torch.Tensor]:
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    sums = {
        "confusion": confusion,
        "loss": torch.zeros((), dtype=torch.float64, device=device),
        "top5_wrong": torch.zeros((), dtype=torch.int64, device=device),
    }
    return sums | ({"confusion_flip": confusion.clone()} if flip else {})


def _errors(confusion: torch.Tensor) -> dict[str, Any]:
    total = confusion.sum().item()
    correct = confusion.diag().sum().item()
    per_class = confusion.sum(1).clamp(min=1)
    return {
        "error": 100.0 * (total - correct) / max(1, total),
        "per_class_error": (100.0 * (1 - confusion.diag() / per_class)).tolist(),
        "confusion": confusion.tolist(),
        "images": total,
    }
