"""Evaluation: loss, top-1 / top-5 error and the confusion matrix over every test image."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.data.loader import BatchLoader
from wideresnet.progress import Progress
from wideresnet.train.distributed import World
from wideresnet.train.runtime import Speed

TOP_K = 5  # the top-k error reported beside top-1 (all classes when there are fewer)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: BatchLoader,
    speed: Speed,
    num_classes: int,
    flip: bool = False,
    world: World = World(),
) -> dict[str, Any]:
    """Loss, top-1 and top-5 error (%) and the confusion matrix over every image of the
    loader (`flip`: also the error of flip-averaged predictions). On several processes each
    evaluates its share of every batch and the sums are added up."""
    device = torch.device(speed.device)
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion_flip = confusion.clone() if flip else None
    top5_wrong = torch.zeros((), dtype=torch.int64, device=device)
    k = min(TOP_K, num_classes)
    with Progress("evaluating", loader.n, "images") as progress:
        for b, (x, y) in enumerate(loader.batches()):
            x = speed.input(x)
            with speed.autocast():
                logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            confusion.index_put_((y, logits.argmax(1)), torch.ones_like(y), accumulate=True)
            top5_wrong += (logits.topk(k, 1).indices != y[:, None]).all(1).sum()
            if flip:  # logits are used up first: a CUDA-graph replay may overwrite them
                probs = logits.softmax(1)
                with speed.autocast():
                    probs += model(x.flip(3)).float().softmax(1)
                confusion_flip.index_put_((y, probs.argmax(1)), torch.ones_like(y), accumulate=True)
            progress.update(min((b + 1) * loader.batch_size, loader.n))
    for total in (confusion, loss_sum, top5_wrong) + ((confusion_flip,) if flip else ()):
        world.sum_(total)
    result = _errors(confusion.cpu())
    result["loss"] = loss_sum.item() / max(1, loader.n)
    result["top5_error"] = 100.0 * top5_wrong.item() / max(1, loader.n)
    if flip:
        result["flip"] = _errors(confusion_flip.cpu())
    return result


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
