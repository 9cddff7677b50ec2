"""One training step: forward, loss, backward, update, and the epoch's running sums.

The sums stay on the device, so a CUDA epoch needs no host sync. A non-finite loss stops the
run before its update: checked at once on the eager path, or (with fused SGD) handed to the
optimizer as `found_inf`, which skips that update on the device, and reported when the sums
are next read. On several processes the verdict is shared, so every rank skips or stops
together. `WholeStep` compiles all of it (forward to update) as one function.

The modern recipes act here too (all off by default): label smoothing; mixup or CutMix of
the batch, drawn from the step's own generator; SAM's second forward-backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.config import OptimConfig
from wideresnet.train.distributed import World
from wideresnet.train.runtime import Speed


class NonFiniteLoss(Exception):
    """The loss of step `step` (None: some step since the last check) was NaN or infinite."""

    def __init__(self, step: int | None) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


@dataclass(frozen=True)
class Recipe:
    """The parts of the recipe a step applies (OptimConfig's loss, mixing and SAM fields)."""

    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    sam_rho: float = 0.0
    sam_adaptive: bool = False

    @classmethod
    def of(cls, optim: OptimConfig) -> Recipe:
        return cls(
            optim.label_smoothing,
            optim.mixup_alpha,
            optim.cutmix_alpha,
            optim.sam_rho,
            optim.sam_adaptive,
        )

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


PLAIN = Recipe()


@dataclass
class Mix:
    """A mixed batch: each image blended with image `partner` with weight 1 - lam."""

    partner: torch.Tensor
    lam: float


def mix_batch(
    x: torch.Tensor, recipe: Recipe, draw: np.random.Generator
) -> tuple[torch.Tensor, Mix]:
    """mixup (x = lam x + (1 - lam) x[partner]) or CutMix (a box of x[partner] pasted in,
    lam = the area left); with both on, each batch picks one with probability 1/2."""
    use_cutmix = recipe.cutmix_alpha > 0 and (recipe.mixup_alpha == 0 or draw.random() < 0.5)
    alpha = recipe.cutmix_alpha if use_cutmix else recipe.mixup_alpha
    lam = float(draw.beta(alpha, alpha))
    partner = torch.from_numpy(draw.permutation(x.shape[0]))
    if x.is_cuda:  # from pinned memory, the copy does not wait for the queued step
        partner = partner.pin_memory().to(x.device, non_blocking=True)
    if not use_cutmix:
        return lam * x + (1 - lam) * x[partner], Mix(partner, lam)
    height, width = x.shape[2:]
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy, cx = int(draw.integers(height)), int(draw.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[partner][:, :, top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (height * width)
    return mixed, Mix(partner, lam)


def mixed_loss(logits: torch.Tensor, y: torch.Tensor, mix: Mix | None, smoothing: float):
    if mix is None:
        return loss_fn(logits, y, smoothing)
    first, second = loss_fn(logits, y, smoothing), loss_fn(logits, y[mix.partner], smoothing)
    return mix.lam * first + (1 - mix.lam) * second


@dataclass
class EpochSums:
    """Running sums of an epoch, on the device (this process's share)."""

    loss: torch.Tensor  # float64: sum of per-image losses
    wrong: torch.Tensor  # int64: misclassified training images
    nonfinite: torch.Tensor  # bool: a skipped non-finite step (fused SGD)

    @classmethod
    def start(cls, device: torch.device, loss: float = 0.0, wrong: int = 0) -> EpochSums:
        return cls(
            torch.tensor(loss, dtype=torch.float64, device=device),
            torch.tensor(wrong, dtype=torch.int64, device=device),
            torch.zeros((), dtype=torch.bool, device=device),
        )

    def check(self) -> None:
        """Raise NonFiniteLoss if a deferred step was non-finite (a host sync)."""
        if bool(self.nonfinite.item()):
            raise NonFiniteLoss(None)

    def totals(self, world: World) -> tuple[float, int]:
        """(loss sum, wrong) over every process (a host sync)."""
        both = torch.stack([self.loss, self.wrong.double()])
        world.sum_(both)
        return both[0].item(), int(both[1].item())


def _nonfinite(loss: torch.Tensor, world: World) -> torch.Tensor:
    """True where any process's loss is not finite (one shared verdict)."""
    bad = (~torch.isfinite(loss)).float()
    return world.sum_(bad) > 0


def train_step(
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    speed: Speed,
    sums: EpochSums,
    step: int = 0,
    world: World = World(),
    recipe: Recipe = PLAIN,
    draw: np.random.Generator | None = None,
) -> None:
    """One SGD step on (x, y); `step` (1-based, within the epoch) names a non-finite loss;
    `draw` is the step's own generator (mixup, CutMix)."""
    if speed.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    mix = None
    if recipe.mixing and draw is not None:
        x, mix = mix_batch(x, recipe, draw)
    with speed.autocast():
        logits = forward(speed.input(x))
    loss = mixed_loss(logits, y, mix, recipe.label_smoothing)
    bad = _nonfinite(loss, world)
    deferred = speed.fused_sgd and not recipe.sam_rho
    if not deferred and bool(bad.item()):
        raise NonFiniteLoss(step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.sam_rho:
        sam_second_pass(forward, optimizer, x, y, speed, mix, recipe)
    if deferred:
        optimizer.found_inf = bad.float()
        sums.nonfinite |= bad
    optimizer.step()
    sums.loss += loss.detach().double() * len(y)
    sums.wrong += (logits.detach().argmax(1) != y).sum()


def sam_second_pass(forward, optimizer, x, y, speed: Speed, mix: Mix | None, recipe: Recipe):
    """SAM (Foret et al. 2021; ASAM, Kwon et al. 2021, when adaptive): move the weights by
    rho along the normalised gradient (scaled by |w| for ASAM), take the gradient there, and
    come back; the base SGD then steps with that gradient. As the SAM authors' code
    (davda54/sam) recommends, the second pass does not update batch-norm statistics."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    with torch.no_grad():
        scaled = [(p.abs() * p.grad) if recipe.sam_adaptive else p.grad for p in params]
        norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2)
        moves = [
            s * (p.abs() if recipe.sam_adaptive else 1) * (recipe.sam_rho / (norm + 1e-12))
            for p, s in zip(params, scaled)
        ]
        for p, e in zip(params, moves):
            p.add_(e)
    norms = [m for m in forward.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running statistics stay as the first pass left them
    optimizer.zero_grad(set_to_none=True)
    with speed.autocast():
        logits = forward(speed.input(x))
    mixed_loss(logits, y, mix, recipe.label_smoothing).backward()
    for m, (momentum, tracked) in zip(norms, saved):
        m.momentum = momentum
        m.num_batches_tracked.copy_(tracked)
    with torch.no_grad():
        for p, e in zip(params, moves):
            p.sub_(e)


class WholeStep:
    """train_step with forward, loss, backward, the fused SGD update and the sums compiled as
    one function (`--compile step`): graphs end only where torch.compile must break them, and
    on CUDA they replay as CUDA graphs. The recipe is train_step's, step for step (without
    mixing or SAM, which stay on the eager path)."""

    def __init__(self, forward: nn.Module, optimizer, speed: Speed, world: World = World()):
        self.forward, self.optimizer, self.speed, self.world = forward, optimizer, speed, world
        # fused SGD reads optimizer.found_inf; the graph writes into this one tensor, as
        # setting an attribute inside a compiled function is refused (torch 2.11)
        params = optimizer.param_groups[0]["params"]
        self.found_inf = torch.zeros((), device=params[0].device)
        torch._dynamo.mark_static_address(self.found_inf)
        optimizer.found_inf = self.found_inf
        mode = "reduce-overhead" if speed.cuda_graphs else None
        self.compiled = torch.compile(self._step, mode=mode)
        self.smoothing = 0.0

    def _step(self, x, y):
        with self.speed.autocast():
            logits = self.forward(x)
        loss = loss_fn(logits, y, self.smoothing)
        bad = _nonfinite(loss, self.world)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.found_inf.copy_(bad)
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) != y).sum(), bad

    def __call__(self, x, y, speed: Speed, sums: EpochSums, step: int = 0) -> None:
        if speed.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, wrong, bad = self.compiled(speed.input(x), y)
        # the sums are added outside: a float64 input mutated inside the graph was lost
        sums.loss += loss.double() * len(y)
        sums.wrong += wrong
        sums.nonfinite |= bad
