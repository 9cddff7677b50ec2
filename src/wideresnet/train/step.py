"""One training step: forward, loss, backward, update, and the epoch's running sums.

`make_step` builds the one step a run takes (the Trainer, `wrn bench`, the cost estimate and
bench/ all call it): `step(x, y, sums, index)`, eager or (`--compile step`) compiled whole.
The sums stay on the device, so a CUDA epoch needs no host sync. A non-finite loss stops the
run before its update: checked at once on the eager path, or (with fused SGD) handed to the
optimizer as `found_inf`, which skips that update on the device, and reported when the sums
are next read. On several processes the verdict is shared, so every rank skips or stops
together.

The modern recipes act here too (all off by default): label smoothing; mixup or CutMix of
the batch, drawn from the step's own generator (seeds.py); SAM's second forward-backward; a
distillation teacher's softened outputs (train/distill.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.config import OptimConfig
from wideresnet.seeds import Stream, numpy_generator
from wideresnet.train.distributed import World
from wideresnet.train.runtime import Runtime


class NonFiniteLoss(Exception):
    """A NaN or infinite loss: `before_update` when this step's update was not applied (the
    eager check), else some step since the last check had its update skipped on the device."""

    def __init__(self, before_update: bool) -> None:
        super().__init__("non-finite loss")
        self.before_update = before_update


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's term as RepDistiller's (train/distill.py): T^2 KL(the teacher's softened
    outputs || the student's), summed over classes, averaged over the batch."""
    t = temperature
    log_student = F.log_softmax(student.float() / t, dim=1)
    taught = F.softmax(teacher.float() / t, dim=1)
    return t * t * F.kl_div(log_student, taught, reduction="batchmean")


@dataclass(frozen=True)
class StepOptions:
    """The parts of the recipe a step applies (OptimConfig's loss, mixing and SAM fields)."""

    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    sam_rho: float = 0.0
    sam_adaptive: bool = False
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9

    @classmethod
    def of(cls, optim: OptimConfig) -> StepOptions:
        return cls(
            label_smoothing=optim.label_smoothing,
            mixup_alpha=optim.mixup_alpha,
            cutmix_alpha=optim.cutmix_alpha,
            sam_rho=optim.sam_rho,
            sam_adaptive=optim.sam_adaptive,
            kd_temperature=optim.kd_temperature,
            kd_alpha=optim.kd_alpha,
        )

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass
class Mix:
    """A mixed batch: each image blended with image `partner` with weight 1 - lam."""

    partner: torch.Tensor
    lam: float | torch.Tensor  # a tensor inside the compiled whole step


def mix_batch(
    x: torch.Tensor, options: StepOptions, draw: np.random.Generator
) -> tuple[torch.Tensor, Mix]:
    """mixup (x = lam x + (1 - lam) x[partner]) or CutMix (a box of x[partner] pasted in,
    lam = the area left); with both on, each batch picks one with probability 1/2."""
    use_cutmix = options.cutmix_alpha > 0 and (options.mixup_alpha == 0 or draw.random() < 0.5)
    alpha = options.cutmix_alpha if use_cutmix else options.mixup_alpha
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


def mixed_loss(
    logits: torch.Tensor, y: torch.Tensor, mix: Mix | None, smoothing: float
) -> torch.Tensor:
    if mix is None:
        return loss_fn(logits, y, smoothing)
    first, second = loss_fn(logits, y, smoothing), loss_fn(logits, y[mix.partner], smoothing)
    return mix.lam * first + (1 - mix.lam) * second


class Objective:
    """The recipe's loss, the steps' one call for it: cross-entropy with label smoothing (over
    both targets of a mixed batch), and with a `teacher` Hinton's distillation, (1 - alpha)
    that + alpha T^2 KL, the teacher seeing the step's own (mixed) batch in eval mode, without
    gradients."""

    def __init__(self, options: StepOptions, runtime: Runtime, teacher: nn.Module | None) -> None:
        self.options, self.runtime, self.teacher = options, runtime, teacher

    def __call__(
        self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mix: Mix | None = None
    ) -> torch.Tensor:
        options = self.options
        hard = mixed_loss(logits, y, mix, options.label_smoothing)
        if self.teacher is None:
            return hard
        with torch.no_grad(), self.runtime.autocast():  # on the batch the student saw
            taught = self.teacher(self.runtime.input(x))
        alpha = options.kd_alpha
        return (1 - alpha) * hard + alpha * soft_loss(logits, taught, options.kd_temperature)


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
        """Raise NonFiniteLoss if a step skipped on the device was non-finite (a host sync)."""
        if bool(self.nonfinite.item()):
            raise NonFiniteLoss(before_update=False)

    def totals(self, world: World) -> tuple[float, int]:
        """(loss sum, wrong) over every process (a host sync)."""
        both = torch.stack([self.loss, self.wrong.double()])
        world.sum_(both)
        return both[0].item(), int(both[1].item())


def _nonfinite(loss: torch.Tensor, world: World) -> torch.Tensor:
    """True where any process's loss is not finite (one shared verdict)."""
    bad = (~torch.isfinite(loss)).float()
    return world.sum_(bad) > 0


class _Step:
    """What every step holds: the model it calls, its optimizer, runtime, processes, the
    recipe's options, the seed of its mixing draws, and a distillation teacher (or None)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        world: World,
        options: StepOptions,
        seed: int,
        teacher: nn.Module | None = None,
    ) -> None:
        self.model, self.optimizer, self.runtime = model, optimizer, runtime
        self.world, self.options, self.seed = world, options, seed
        self.objective = Objective(options, runtime, teacher)
        # fp16 (opt-in): the loss scaled so that small gradients do not underflow; a step
        # whose gradients overflow is skipped and the scale lowered (torch.amp.GradScaler)
        fp16 = runtime.precision == "fp16"
        self.scaler = torch.amp.GradScaler(runtime.torch_device.type) if fp16 else None


class EagerStep(_Step):
    """The eager step: mixing (from this step's own generator), forward, loss, the non-finite
    check, backward, SAM's second pass when asked, the update, the sums."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # fused SGD skips a non-finite update on the device (found_inf), with no host sync
        self.skip_on_device = self.runtime.fused_sgd and not self.options.sam_rho

    def __call__(self, x: torch.Tensor, y: torch.Tensor, sums: EpochSums, index: int) -> None:
        """One SGD step on (x, y); `index`, the global step number, seeds its mixing draws."""
        runtime, options = self.runtime, self.options
        if runtime.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        mix = None
        if options.mixing:
            draw = numpy_generator(self.seed, index, Stream.MIXING, self.world.rank)
            x, mix = mix_batch(x, options, draw)
        with runtime.autocast():
            logits = self.model(runtime.input(x))
        loss = self.objective(logits, x, y, mix)
        bad = _nonfinite(loss, self.world)
        if not self.skip_on_device and bool(bad.item()):
            raise NonFiniteLoss(before_update=True)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:  # Config.check: no SAM with fp16
            self.scaler.scale(loss).backward()
            if self.skip_on_device:  # the scaler skips its update (inf gradients)
                sums.nonfinite |= bad
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if options.sam_rho:
                sam_second_pass(self.model, self.optimizer, x, y, mix, options, self.objective)
            if self.skip_on_device:
                self.optimizer.found_inf = bad.float()  # read by fused SGD (torch >= 2.10)
                sums.nonfinite |= bad
            self.optimizer.step()
        sums.loss += loss.detach().double() * len(y)
        sums.wrong += (logits.detach().argmax(1) != y).sum()


def sam_second_pass(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    mix: Mix | None,
    options: StepOptions,
    objective: Objective,
) -> None:
    """SAM (Foret et al. 2021; ASAM, Kwon et al. 2021, when adaptive): move the weights by
    rho along the normalised gradient (scaled by |w| for ASAM), take the gradient there, and
    come back; the base SGD then steps with that gradient. As the SAM authors' code
    (davda54/sam) recommends, the second pass does not update batch-norm statistics."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    with torch.no_grad():
        scaled = [(p.abs() * p.grad) if options.sam_adaptive else p.grad for p in params]
        norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2)
        moves = [
            s * (p.abs() if options.sam_adaptive else 1) * (options.sam_rho / (norm + 1e-12))
            for p, s in zip(params, scaled)
        ]
        for p, e in zip(params, moves):
            p.add_(e)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running statistics stay as the first pass left them
    optimizer.zero_grad(set_to_none=True)
    runtime = objective.runtime
    with runtime.autocast():
        logits = model(runtime.input(x))
    objective(logits, x, y, mix).backward()
    for m, (momentum, tracked) in zip(norms, saved):
        m.momentum = momentum
        m.num_batches_tracked.copy_(tracked)
    with torch.no_grad():
        for p, e in zip(params, moves):
            p.sub_(e)


class WholeStep(_Step):
    """The eager step's forward, loss (the same Objective: smoothing, mixed targets, a teacher),
    backward, fused SGD update and sums compiled as one function (`--compile step`): graphs
    end only where torch.compile must break them, and on CUDA they replay as CUDA graphs. The
    batch is mixed before the call, from the same draws as the eager step's; the mixing weight
    goes in as a tensor, so a new draw is no new graph. Without SAM (Config.check)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        optimizer = self.optimizer
        # fused SGD reads optimizer.found_inf (torch >= 2.10); the graph writes into this one
        # tensor, as setting an attribute inside a compiled function is refused (torch 2.11);
        # mark_static_address keeps it out of the CUDA graphs' input copies
        params = optimizer.param_groups[0]["params"]
        self.found_inf = torch.zeros((), device=params[0].device)
        torch._dynamo.mark_static_address(self.found_inf)
        optimizer.found_inf = self.found_inf
        self.compiled = torch.compile(self._step, mode=self.runtime.torch_compile_mode)

    def _step(self, x, y, partner, lam):
        with self.runtime.autocast():
            logits = self.model(x)
        loss = self.objective(logits, x, y, None if partner is None else Mix(partner, lam))
        bad = _nonfinite(loss, self.world)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.found_inf.copy_(bad)
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) != y).sum(), bad

    def __call__(self, x: torch.Tensor, y: torch.Tensor, sums: EpochSums, index: int) -> None:
        if self.runtime.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        partner = lam = None
        if self.options.mixing:
            draw = numpy_generator(self.seed, index, Stream.MIXING, self.world.rank)
            x, mix = mix_batch(x, self.options, draw)
            partner, lam = mix.partner, torch.tensor(mix.lam, device=x.device)
        loss, wrong, bad = self.compiled(self.runtime.input(x), y, partner, lam)
        # the sums are added outside: a float64 input mutated inside the graph was lost
        sums.loss += loss.double() * len(y)
        sums.wrong += wrong
        sums.nonfinite |= bad


Step = EagerStep | WholeStep


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    *,
    world: World = World(),
    options: StepOptions = StepOptions(),
    seed: int = 0,
    teacher: nn.Module | None = None,
) -> Step:
    """The training step for `runtime`: `step(x, y, sums, index)`. `model` is what the step
    calls (the model, compiled or wrapped in DDP); `seed` seeds the mixing draws; `teacher`,
    an eval-mode model, distils into it (the eager step)."""
    kind = WholeStep if runtime.whole_step else EagerStep
    return kind(model, optimizer, runtime, world, options, seed, teacher)
