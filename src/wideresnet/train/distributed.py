"""One run on several processes (GPUs, or CPU processes with gloo), launched by torchrun:

    torchrun --nproc-per-node N -m wideresnet train ...

The global batch is --batch-size, split across ranks; each rank takes its slice of the
(seed, epoch) order; gradients are averaged by DistributedDataParallel; batch norm is per
process as in the authors' runs, or over the global batch with --sync-bn; evaluation is
sharded and summed. Rank 0 alone writes the run directory; every rank restores from it.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from wideresnet.errors import RunError
from wideresnet.files import first_line

log = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(minutes=10)  # a silent peer ends the run instead of hanging it


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks in place (a no-op on one process)."""
        if self.distributed:
            collective(dist.all_reduce, tensor)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            collective(dist.barrier)

    def gather(self, value: object) -> list[object]:
        """Every rank's value, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[object] = [None] * self.size
        collective(dist.all_gather_object, values, value)
        return values


def collective(function, *args):
    """A collective call; a peer that died or left is one clear error, not a hang."""
    try:
        return function(*args)
    except (RuntimeError, dist.DistBackendError) as error:
        raise RunError(
            f"a process of this run ended or stopped answering ({first_line(error)}); "
            "the last checkpoint is intact, continue with `wrn train --resume RUN_DIR`",
            exit_code=1,
        ) from None


def world_from_environment(device_type: str) -> World:
    """The world torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); one process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)
    if rank != 0:  # one voice: the other ranks only warn
        logging.getLogger("wideresnet").setLevel(logging.WARNING)
    return World(rank, size, local_rank)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics cover the global batch of every process
    (--sync-bn). Works with gloo on CPU as with NCCL (torch's SyncBatchNorm is GPU-only):
    two differentiable all-reduces, for the mean and then the variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        shape = (1, -1, 1, 1)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum((0, 2, 3))) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape)


def use_global_batch_norm(model: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `model` replaced by a GlobalBatchNorm2d with the same state."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum)
            replacement.load_state_dict(child.state_dict())
            setattr(model, name, replacement)
        else:
            use_global_batch_norm(child)
    return model


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the model on several processes; the model itself on one."""
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # buffers (BN running statistics) follow rank 0's, so every rank tests the same network
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
