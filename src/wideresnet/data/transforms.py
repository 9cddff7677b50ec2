"""Per-image work of the streaming loader, and the batch operations that follow it on the
training device.

In the decoding workers, each image is cropped as its run asks: the paper's crop of the
4-pixel reflection-padded image (the resident loader's, pixel for pixel), fb.resnet.torch's
random-sized crop (its transforms.lua as of d4b9406, 2016-02-25, what the WRN authors had:
8-100% of the area, aspect 3/4-4/3, w = sqrt(area x aspect), h = sqrt(area / aspect), ten
tries, else scale and centre-crop; bicubic), or torchvision's RandomResizedCrop
(w = sqrt(area x aspect), log-uniform aspect; bilinear). A training crop's JPEG is decoded at
the smallest scale the crop still needs (Pillow's draft: 1/2, 1/4 or 1/8 of each side in the
DCT), then the crop box is resampled once to the output size. A test image is decoded whole and
its box is the peer's geometry exactly: each axis resized to an integer length (the shorter
side to eval_resize, the longer truncated), then the centre crop at the peer's offsets, so
that the pixels equal torchvision's Resize + CenterCrop (fb.resnet.torch's Scale + CenterCrop
with its ceil offsets and bicubic for --preset imagenet). Flips, colour jitter and PCA lighting run
afterwards on the device, on the whole batch; every draw of an image comes from its own
generator (seeds.py), a function of (seed, epoch, position) alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from wideresnet.data.folders import open_image, to_rgb
from wideresnet.errors import DataError

MIN_AREA, MAX_AREA = 0.08, 1.0  # of the image, for random-sized crops
MIN_ASPECT, MAX_ASPECT = 3 / 4, 4 / 3
ATTEMPTS = 10
# fb.resnet.torch's PCA of ImageNet's RGB (datasets/imagenet.lua), on the 0-1 scale
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)
GREY = torch.tensor([0.299, 0.587, 0.114])  # fb.resnet.torch's grayscale weights


def _round(value: float) -> int:
    """Lua's torch.round: halves away from zero."""
    return int(math.floor(value + 0.5))


def random_sized_box(width: int, height: int, draw: np.random.Generator):
    """fb.resnet.torch's RandomSizedCrop (datasets/transforms.lua at d4b9406, which fixed the
    first commit's w = sqrt(area) x aspect): (x, y, w, h), or None for its fallback. Its
    draws in its order: area, aspect, the swap, then torch.random(0, n) for y and x."""
    for _ in range(ATTEMPTS):
        target = draw.uniform(MIN_AREA, MAX_AREA) * width * height
        aspect = draw.uniform(MIN_ASPECT, MAX_ASPECT)
        w, h = _round(math.sqrt(target * aspect)), _round(math.sqrt(target / aspect))
        if draw.uniform() < 0.5:
            w, h = h, w
        if 0 < h <= height and 0 < w <= width:  # a side of 0 (a tiny image): fb would fail
            y = int(draw.integers(0, height - h + 1))
            x = int(draw.integers(0, width - w + 1))
            return x, y, w, h
    return None


def random_resized_box(width: int, height: int, draw: np.random.Generator):
    """torchvision's RandomResizedCrop.get_params, with its central fallback."""
    log_low, log_high = math.log(MIN_ASPECT), math.log(MAX_ASPECT)
    for _ in range(ATTEMPTS):
        target = width * height * draw.uniform(MIN_AREA, MAX_AREA)
        aspect = math.exp(draw.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            y, x = int(draw.integers(0, height - h + 1)), int(draw.integers(0, width - w + 1))
            return x, y, w, h
    ratio = width / height
    if ratio < MIN_ASPECT:
        w, h = width, round(width / MIN_ASPECT)
    elif ratio > MAX_ASPECT:
        w, h = round(height * MAX_ASPECT), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


@dataclass(frozen=True)
class Crop:
    """How the streaming loader crops: `mode` pad | random-sized | random-resized, the
    training crop's side, and the test images' shorter side and centre crop."""

    mode: str = "pad"
    size: int = 224
    eval_resize: int = 256
    eval_size: int = 224

    @property
    def fb(self) -> bool:
        """fb.resnet.torch's conventions (bicubic, ceil offsets), else torchvision's."""
        return self.mode == "random-sized"


def scaled_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """The image resized so that its shorter side is `shorter`, the longer one truncated to an
    integer (torchvision's Resize(int); fb.resnet.torch's Scale, whose image.scale truncates)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def centre_offsets(width: int, height: int, side: int, fb: bool) -> tuple[int, int]:
    """(left, top) of the centre `side` square: fb.resnet.torch's CenterCrop takes the ceil of
    half the margin, torchvision's CenterCrop int(round(...)) (halves to even)."""
    halves = ((width - side) / 2, (height - side) / 2)
    return tuple(math.ceil(h) if fb else int(round(h)) for h in halves)


def _scaled_centre(width: int, height: int, crop: Crop):
    """The box of the test crop in the image's own pixels, each axis by its own factor: the
    shorter side resized to eval_resize, then the centre eval_size square."""
    scaled = scaled_size(width, height, crop.eval_resize)
    x, y = centre_offsets(*scaled, crop.eval_size, crop.fb)
    fx, fy = width / scaled[0], height / scaled[1]
    return x * fx, y * fy, crop.eval_size * fx, crop.eval_size * fy


def draft_reduction(image, width: int, height: int, out: int, box) -> int:
    """Decode a JPEG at 1/1, 1/2, 1/4 or 1/8 of each side, the smallest that still gives the
    crop box `out` pixels; returns the divisor Pillow chose (1 for other formats)."""
    w, h = box[2:]
    image.draft("RGB", (math.ceil(width * out / w), math.ceil(height * out / h)))
    for divisor in (1, 2, 4, 8):  # Pillow's decoded size is the ceil of each side / divisor
        if image.size == (-(-width // divisor), -(-height // divisor)):
            return divisor
    raise AssertionError(f"draft decoded {image.size} from {width}x{height}")


def decode_crop(data: bytes, name: str, crop: Crop, draw: np.random.Generator | None):
    """uint8 (size, size, 3): the training crop of one image (`draw` its generator), or the
    test crop (`draw` None). DataError naming the file when it does not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_image(data, name) as image:
            width, height = image.size
            if draw is None:
                box, out = _scaled_centre(width, height, crop), crop.eval_size
            else:
                pick = random_sized_box if crop.fb else random_resized_box
                box, out = pick(width, height, draw), crop.size
                if box is None:  # fb's fallback: scale the shorter side, then centre-crop
                    box = _scaled_centre(width, height, Crop(crop.mode, out, out, out))
            x, y, w, h = box
            reduced = 1.0 if draw is None else 1 / draft_reduction(image, width, height, out, box)
            rgb = to_rgb(image, name)
            right = min((x + w) * reduced, rgb.width)  # a rounded reduction never overshoots
            region = (x * reduced, y * reduced, right, min((y + h) * reduced, rgb.height))
            resample = Image.BICUBIC if crop.fb else Image.BILINEAR
            return np.asarray(rgb.resize((out, out), resample, box=region), dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError as error:
        raise DataError(f"{name}: {error}; refusing to decode it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{name}: unreadable image ({error})") from None


def pad_crop(image: np.ndarray, pad: int, dy: int, dx: int) -> np.ndarray:
    """The paper's crop: an (H, W) window at (dy, dx) of the image reflection-padded by `pad`
    pixels (numpy's and torch's "reflect": the edge pixel is not repeated)."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return padded[dy : dy + height, dx : dx + width]


@dataclass
class ColourDraws:
    """Per image: a flip, colour jitter factors (brightness, contrast, saturation), their
    random order, and lighting's alphas."""

    flip: bool
    jitter: np.ndarray  # (3,) factors, 1 + U(-v, v)
    order: np.ndarray  # (3,) a permutation of 0, 1, 2
    alphas: np.ndarray  # (3,) N(0, lighting)


def colour_draws(draw: np.random.Generator, jitter: float, lighting: float) -> ColourDraws:
    """An image's draws after its crop, always in this order, so that they are the same
    whichever options are on."""
    flip = bool(draw.uniform() < 0.5)
    factors = 1.0 + draw.uniform(-jitter, jitter, 3) if jitter else np.ones(3)
    order = draw.permutation(3)
    alphas = draw.normal(0.0, lighting, 3) if lighting else np.zeros(3)
    return ColourDraws(flip, factors, order, alphas)


def flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """x (B, H, W, C): the images where `flips` is true, mirrored left to right."""
    return torch.where(flips[:, None, None, None], x.flip(2), x)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """fb.resnet.torch's ColorJitter on a batch (B, H, W, 3) of any scale: brightness (blend
    with black), contrast (with the mean grey) and saturation (with the grey image), each by
    its image's factor, in its image's order."""
    grey_weights = GREY.to(x.device, x.dtype)
    for slot in range(3):
        grey = (x * grey_weights).sum(-1, keepdim=True)
        targets = (
            torch.zeros_like(x),
            grey.mean((1, 2), keepdim=True).expand_as(x),
            grey.expand_as(x),
        )
        for op, target in enumerate(targets):
            alpha = factors[:, op].reshape(-1, 1, 1, 1).to(x.dtype)
            chosen = (order[:, slot] == op).reshape(-1, 1, 1, 1)
            x = torch.where(chosen, x * alpha + target * (1 - alpha), x)
    return x


def lighting(x: torch.Tensor, alphas: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """AlexNet's PCA lighting (fb.resnet.torch's Lighting) on (B, H, W, 3) images of the
    0-`scale` range: each image gets eigvec . (alpha x eigval), scaled."""
    vectors, values = EIGVEC.to(x.device, x.dtype), EIGVAL.to(x.device, x.dtype)
    rgb = (vectors[None] * (alphas.to(x.dtype) * values)[:, None, :]).sum(2)  # (B, 3)
    return x + scale * rgb[:, None, None, :]
