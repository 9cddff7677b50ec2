"""Image operations for a whole batch on the device, defined as Pillow defines them.

The AutoAugment, RandAugment and TrivialAugment reference codes apply Pillow's ImageOps,
ImageEnhance and Image.transform to one image at a time; these are the same operations on a
batch x of shape (B, H, W, C), float32 holding whole numbers in [0, 255], with one magnitude
per image. Geometric ops follow Image.transform(AFFINE, NEAREST): the output pixel centre
(x + 0.5, y + 0.5) is mapped through the matrix and truncated, and pixels from outside take
`fill`. Enhancements blend with Pillow's degenerate image and truncate, as Image.blend does.
"""

from __future__ import annotations

import torch

FILL = 128.0  # the reference codes fill with grey (128, 128, 128)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1, 1, 1)


def affine(x: torch.Tensor, matrix: torch.Tensor, fill: float = FILL) -> torch.Tensor:
    """Image.transform(size, AFFINE, (a, b, c, d, e, f), NEAREST) for each image; matrix
    (B, 6), float64. As Pillow: output pixel (x, y) reads input (a x' + b y' + c, d x' + e y'
    + f) at the pixel centre x' = x + 0.5, y' = y + 0.5, in 16.16 fixed point (its
    affine_fixed) when the matrix shears or rotates, in floating point when it only shifts."""
    batch, height, width, channels = x.shape
    a, b, c, d, e, f = (m.reshape(-1, 1, 1) for m in matrix.to(x.device).double().unbind(1))
    ys = torch.arange(height, device=x.device).reshape(1, -1, 1)
    xs = torch.arange(width, device=x.device).reshape(1, 1, -1)

    def fix(v: torch.Tensor) -> torch.Tensor:
        return torch.floor(v * 65536.0 + 0.5).long()

    fixed_x = fix(c + a * 0.5 + b * 0.5) + ys * fix(b) + xs * fix(a)
    fixed_y = fix(f + d * 0.5 + e * 0.5) + ys * fix(e) + xs * fix(d)
    u = c + a * (xs + 0.5) + b * (ys + 0.5)  # the shift-only path, truncated (COORD)
    v = f + d * (xs + 0.5) + e * (ys + 0.5)
    shifts = (b == 0) & (d == 0)
    xi = torch.where(
        shifts, torch.where(u < 0, -1, u.long()), fixed_x.div(65536, rounding_mode="floor")
    )
    yi = torch.where(
        shifts, torch.where(v < 0, -1, v.long()), fixed_y.div(65536, rounding_mode="floor")
    )
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    index = (yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)).reshape(batch, -1, 1)
    taken = x.reshape(batch, height * width, channels).gather(1, index.expand(-1, -1, channels))
    return torch.where(inside[..., None], taken.reshape(x.shape), torch.full_like(x, fill))


def _affine_op(entry: int):
    """The op that puts its value at `entry` of the identity matrix (1, 0, 0, 0, 1, 0)."""

    def op(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        matrix = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64).repeat(len(value), 1)
        matrix[:, entry] = value.double().cpu()
        return affine(x, matrix)

    return op


shear_x, translate_x = _affine_op(1), _affine_op(2)  # x' = x + v y, x' = x + v
shear_y, translate_y = _affine_op(3), _affine_op(5)  # y' = v x + y, y' = y + v


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Image.rotate(degrees) about the centre, counter-clockwise (Pillow's own matrix)."""
    height, width = x.shape[1:3]
    angle = -torch.deg2rad(degrees.double())
    cos = torch.round(torch.cos(angle) * 1e15) / 1e15  # Pillow rounds to 15 decimals
    sin = torch.round(torch.sin(angle) * 1e15) / 1e15
    cx, cy = width / 2, height / 2
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return affine(x, torch.stack([cos, sin, c, -sin, cos, f], 1))


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Image.blend(degenerate, image, factor): interpolate or extrapolate, clip, truncate."""
    out = degenerate + _per_image(factor).to(x.dtype) * (x - degenerate)
    return out.clamp(0, 255).floor()


def grey(x: torch.Tensor) -> torch.Tensor:
    """convert("L"): (19595 R + 38470 G + 7471 B + 2^15) >> 16, as Pillow computes it."""
    weights = torch.tensor([19595, 38470, 7471], device=x.device, dtype=torch.int64)
    return ((x.long() * weights).sum(-1, keepdim=True) + 32768).div(65536, rounding_mode="floor")


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, factor)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(grey(x).to(x.dtype).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean of the grey image, rounded (ImageEnhance.Contrast)."""
    mean = torch.floor(grey(x).double().mean((1, 2, 3)) + 0.5).to(x.dtype)
    return _blend(_per_image(mean).expand_as(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with ImageFilter.SMOOTH (3x3, centre 5, the rest 1, over 13; edges kept)."""
    channels_first = x.permute(0, 3, 1, 2)
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(x.shape[3], 1, 3, 3)
    smooth = torch.nn.functional.conv2d(channels_first, kernel, groups=x.shape[3])
    degenerate = channels_first.clone()
    degenerate[:, :, 1:-1, 1:-1] = (smooth + 0.5).floor().clamp(0, 255)
    return _blend(degenerate.permute(0, 2, 3, 1), x, factor)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = _per_image(2.0 ** (8 - bits.to(x.dtype)))
    return torch.floor(x / step) * step


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x < _per_image(threshold).to(x.dtype), x, 255.0 - x)


def invert(x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
    return 255.0 - x


def identity(x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
    return x


def _lookup(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Apply a per-image, per-channel table (B, C, 256) to x."""
    batch, height, width, channels = x.shape
    flat = x.long().permute(0, 3, 1, 2).reshape(batch, channels, -1)
    out = table.gather(2, flat).reshape(batch, channels, height, width)
    return out.permute(0, 2, 3, 1).to(x.dtype)


def autocontrast(x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
    """ImageOps.autocontrast: each channel's [min, max] stretched to [0, 255] (int())."""
    low = x.amin((1, 2)).double()  # (B, C)
    high = x.amax((1, 2)).double()
    span = (high - low).clamp(min=1)
    scale = torch.full_like(span, 255.0) / span  # a true division, as Python's 255.0 / n
    values = torch.arange(256, device=x.device, dtype=torch.float64)
    table = (values * scale[..., None] - (low * scale)[..., None]).long().clamp(0, 255)
    flat = (high <= low)[..., None]
    return _lookup(x, torch.where(flat, values.long(), table))


def equalize(x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
    """ImageOps.equalize, channel by channel, with Pillow's step and rounding."""
    batch, _, _, channels = x.shape
    flat = x.long().permute(0, 3, 1, 2).reshape(batch * channels, -1)
    histogram = torch.zeros(batch * channels, 256, device=x.device, dtype=torch.int64)
    histogram.scatter_add_(1, flat, torch.ones_like(flat))
    nonzero = histogram > 0
    last = 255 - nonzero.flip(1).long().argmax(1)  # the last bin in use
    last_count = histogram.gather(1, last[:, None]).squeeze(1)
    step = (histogram.sum(1) - last_count).div(255, rounding_mode="floor")
    before = histogram.cumsum(1) - histogram
    table = (step[:, None].div(2, rounding_mode="floor") + before).div(
        step.clamp(min=1)[:, None], rounding_mode="floor"
    )
    keep = (nonzero.sum(1) <= 1) | (step == 0)
    values = torch.arange(256, device=x.device)
    table = torch.where(keep[:, None], values, table.clamp(max=255))
    return _lookup(x, table.reshape(batch, channels, 256))


OPS = {
    "Identity": identity,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "AutoContrast": autocontrast,
    "Invert": invert,
    "Equalize": equalize,
    "Solarize": solarize,
    "Posterize": posterize,
    "Contrast": contrast,
    "Color": color,
    "Brightness": brightness,
    "Sharpness": sharpness,
}
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}  # a random sign per image
