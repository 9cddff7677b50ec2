"""AutoAugment, RandAugment and TrivialAugment on batches on the device.

Per image the policy draws its operations, their strength and sign, and whether each is
applied; the draws of an epoch are made at once from the (seed, epoch) generator and indexed
by an image's position in the epoch (data/augment.py, seeds.py), so a batch is the same
however it is reached. The operations are data/ops.py's, Pillow's definitions on tensors.

Magnitudes, as each paper's released code maps a level to a value (PARAMETER_MAX levels):
  - AutoAugment (Cubuk et al. 2019, augmentation_transforms.py, the 25 CIFAR-10 sub-policies
    of its appendix; levels 0-9 of 10): shear 0.3, translate 10 px, rotate 30 degrees,
    enhancements 0.1 + 1.8 level/10, posterize 4 - int(4 level/10) bits, solarize
    256 - int(256 level/10); fill 128.
  - RandAugment (Cubuk et al. 2020): N operations chosen uniformly per image from the 14
    below at level M of 10, with AutoAugment's mapping.
  - TrivialAugment (Mueller & Hutter 2021, aug_lib.py, the "wide" space; levels 0-30 of 30):
    one operation per image at a uniform level: shear 0.99, translate 32 px, rotate 135
    degrees, enhancements 0.01 + 1.99 level/30, posterize 8 - int(6 level/30) bits, solarize
    256 - int(256 level/30).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wideresnet.data.ops import (
    DEGENERATES,
    MATRICES,
    NEUTRAL,
    OPS,
    SIGNED,
    TABLES,
    affine,
    blend,
    identity_matrix,
    identity_table,
    lookup,
)

NAMES = list(OPS)  # operation ids are indexes into this list
# RandAugment's and TrivialAugment's 14 operations (Invert is AutoAugment's only)
RANDOM_OPS = torch.tensor([NAMES.index(n) for n in NAMES if n != "Invert"])

AUTOAUGMENT_CIFAR10 = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)


@dataclass(frozen=True)
class Space:
    """How a level (0..top) becomes an operation's value."""

    top: int
    shear: float
    translate: int
    rotate: int
    enhance_low: float
    enhance_span: float
    posterize_top: int
    posterize_span: int

    def value(self, name: str, level: torch.Tensor) -> torch.Tensor:
        level = level.double()

        def as_int(limit: int) -> torch.Tensor:  # the reference codes' int_parameter
            return torch.floor(level * limit / self.top)

        if name in ("ShearX", "ShearY"):
            return level * self.shear / self.top
        if name in ("TranslateX", "TranslateY"):
            return as_int(self.translate)
        if name == "Rotate":
            return as_int(self.rotate)
        if name in ("Color", "Contrast", "Brightness", "Sharpness"):
            return level * self.enhance_span / self.top + self.enhance_low
        if name == "Posterize":
            return self.posterize_top - as_int(self.posterize_span)
        if name == "Solarize":
            return 256 - as_int(256)
        return level


AUTOAUGMENT_SPACE = Space(10, 0.3, 10, 30, 0.1, 1.8, 4, 4)
WIDE_SPACE = Space(30, 0.99, 32, 135, 0.01, 1.99, 8, 6)


@dataclass
class PolicyDraws:
    """An epoch's draws: per image and slot, the operation, its value (from the level and the
    sign drawn, by the policy's space) and whether it runs."""

    ops: torch.Tensor  # (N, S) int64 index into NAMES
    values: torch.Tensor  # (N, S) float64
    applied: torch.Tensor  # (N, S) bool
    host_ops: torch.Tensor | None = None  # `ops` on the CPU, to plan a batch without a sync

    def to(self, device: torch.device) -> PolicyDraws:
        """The draws on `device` (one copy per epoch), keeping the operations on the host."""
        moved = (t.to(device) for t in (self.ops, self.values, self.applied))
        return PolicyDraws(*moved, host_ops=self.ops)


class Policy:
    """One of autoaugment | randaugment:N:M | trivialaugment."""

    def __init__(self, spec: str, compiled: bool = False) -> None:
        """`compiled`: each slot runs as one torch.compile graph of every family on the whole
        batch (every_family), whatever the device; else as `apply` says."""
        self.compiled = (
            torch.compile(every_family, dynamic=False, fullgraph=True) if compiled else None
        )
        name, *numbers = spec.split(":")
        self.name = name
        if name == "autoaugment":
            self.space, self.slots = AUTOAUGMENT_SPACE, 2
        elif name == "randaugment":
            self.space = AUTOAUGMENT_SPACE
            self.slots, self.magnitude = (int(v) for v in (numbers or ["2", "9"]))
        elif name == "trivialaugment":
            self.space, self.slots = WIDE_SPACE, 1
        else:
            raise ValueError(f"unknown augmentation policy {spec!r}")

    def draw(self, n: int, generator: torch.Generator) -> PolicyDraws:
        shape = (n, self.slots)
        negative = torch.rand(shape, generator=generator) < 0.5
        if self.name == "autoaugment":
            chosen = torch.randint(0, len(AUTOAUGMENT_CIFAR10), (n,), generator=generator)
            table = torch.tensor(
                [
                    [[NAMES.index(op), p, level] for op, p, level in sub]
                    for sub in AUTOAUGMENT_CIFAR10
                ]
            )[chosen]  # (n, 2, 3)
            applied = torch.rand(shape, generator=generator) < table[..., 1]
            ops, levels = table[..., 0].long(), table[..., 2].long()
        else:
            ops = RANDOM_OPS[torch.randint(0, len(RANDOM_OPS), shape, generator=generator)]
            if self.name == "randaugment":
                levels = torch.full(shape, self.magnitude)
            else:
                levels = torch.randint(0, self.space.top + 1, shape, generator=generator)
            applied = torch.ones(shape, dtype=torch.bool)
        values = torch.zeros(shape, dtype=torch.float64)
        for index in ops.unique().tolist():
            name, chosen_mask = NAMES[index], ops == index
            value = self.space.value(name, levels[chosen_mask])
            if name in SIGNED:
                value = torch.where(negative[chosen_mask], -value, value)
            values[chosen_mask] = value
        return PolicyDraws(ops, values, applied)

    def apply(
        self,
        x: torch.Tensor,
        draws: PolicyDraws,
        positions: slice,
        whole_batch: bool | None = None,
    ) -> torch.Tensor:
        """x (B, H, W, C) float in [0, 255]: each image's operations, slot after slot.

        Which operations a batch holds is read from the host copy of the draws. On the CPU
        each runs on the images that chose it. With `whole_batch` (the default on a GPU) each
        slot is one affine, one lookup and one blend over the whole batch, with every image's
        own matrix, table and factor (data/ops.py) and the identity where it chose another
        family: half the kernels of one pass per operation, no index sent from the host and
        nothing that waits for the device. A compiled policy runs every_family instead, one
        graph per slot. All give the same images."""
        ops, values, applied = (t[positions] for t in (draws.ops, draws.values, draws.applied))
        if self.compiled is not None:
            for slot in range(self.slots):
                x = self.compiled(x, ops[:, slot], values[:, slot], applied[:, slot])
            return x
        whole_batch = x.device.type != "cpu" if whole_batch is None else whole_batch
        planned = (draws.ops if draws.host_ops is None else draws.host_ops)[positions]
        for slot in range(self.slots):
            present = [NAMES[i] for i in planned[:, slot].unique().tolist()]
            op, value, on = ops[:, slot], values[:, slot], applied[:, slot]
            if whole_batch:
                x = self._families(x, present, op, value, on)
                continue
            for name in present:
                rows = ((op == NAMES.index(name)) & on).nonzero().squeeze(1)
                if name != "Identity" and len(rows):
                    x[rows] = OPS[name](x[rows], value[rows])
        return x

    @staticmethod
    def _families(x, present, op, value, on) -> torch.Tensor:
        """One slot on the whole batch: an affine, a lookup and a blend."""

        def chose(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            """(images that chose `name`, their values there and the neutral value elsewhere)"""
            chosen_mask = (op == NAMES.index(name)) & on
            return chosen_mask, torch.where(chosen_mask, value, NEUTRAL[name])

        geometric = [n for n in present if n in MATRICES]
        if geometric:
            matrix = identity_matrix(len(x), x.device)
            for name in geometric:
                chosen_mask, values_or_neutral = chose(name)
                own = MATRICES[name](values_or_neutral, x.shape[1:3])
                matrix = torch.where(chosen_mask[:, None], own, matrix)
            x = affine(x, matrix)
        tonal = [n for n in present if n in TABLES]
        if tonal:
            table = identity_table(x)
            for name in tonal:
                chosen_mask, values_or_neutral = chose(name)
                own = TABLES[name](x, values_or_neutral)
                table = torch.where(chosen_mask[:, None, None], own, table)
            x = lookup(x, table)
        enhancements = [n for n in present if n in DEGENERATES]
        if enhancements:
            degenerate, factor = x, torch.ones_like(value)
            for name in enhancements:
                chosen_mask, _ = chose(name)
                degenerate = torch.where(
                    chosen_mask[:, None, None, None], DEGENERATES[name](x), degenerate
                )
                factor = torch.where(chosen_mask, value, factor)
            x = blend(degenerate, x, factor)  # factor 1 with itself: the image, exactly
        return x


def every_family(x, op, value, on) -> torch.Tensor:
    """One slot with every operation of every family computed for the whole batch, whichever
    the batch holds: Policy._families given every name, in a graph whose shape never
    changes, so torch.compile fuses it into a few kernels (about 400 eager ones for
    TrivialAugment, each a launch, against a GPU step of a few milliseconds)."""
    return Policy._families(x, NAMES, op, value, on)
