"""The streaming loader at 224 px against plain Pillow in the same process, and its cost in
training.

Images: --images JPEGs at ImageNet's most common size, 500 x 375 (--size), made from the
real CIFAR-10 copy (../shared/data, upscaled bicubic, with noise so that they compress like
photos, quality 90): the copy holds no large images, so the absolute rates are those of these
files. Rows, each
over the same files after a warm-up pass:
  - plain Pillow: per image, Image.open, a full decode, torchvision's RandomResizedCrop box,
    crop and bilinear resize to 224, flip, float tensor, mean/std (what torchvision's
    transforms do, written out), in this one process;
  - ours, in this process (--workers 0): the streaming loader with --crop random-resized
    (draft decode at the smallest scale the crop needs, one resample of the crop box),
    uint8 batches, flip and mean/std on the device: the per-core comparison;
  - ours with N worker processes;
  - simplejpeg (if installed): its DCT-scaled decode, then the same crop and resample, per
    image, to judge whether a JPEG library would be worth a dependency;
  - in training: the loader feeding --model's step against the step on one held batch.

    python bench/stream.py [--images 256] [--workers 2] [--model wrn-50-2] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wideresnet.bench import build_for_bench
from wideresnet.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from wideresnet.data.stream import FileImages, StreamLoader
from wideresnet.data.transforms import Crop, random_resized_box
from wideresnet.train.runtime import Runtime
from wideresnet.train.step import EpochSums

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    """`count` JPEGs of `size` from the CIFAR-10 copy's test images."""
    sources = sorted((Path(os.environ.get("WRN_REAL_DATA", SHARED)) / "test").rglob("*.jpg"))
    if not sources:
        sys.exit(f"no CIFAR-10 copy at {SHARED} (or $WRN_REAL_DATA)")
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        small = Image.open(sources[i * 37 % len(sources)]).convert("RGB")
        big = np.asarray(small.resize(size, Image.BICUBIC), dtype=np.float32)
        noisy = np.clip(big + rng.normal(0, 12, big.shape), 0, 255).astype(np.uint8)
        name = f"train/c{i % 10}/{i:05d}.JPEG"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(folder / name, "JPEG", quality=90)
        names.append(name)
    return names


def plain_pillow(folder: Path, names: list[str]) -> float:
    """Images/s of the plain per-image pipeline in this process."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / 255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) / 255
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for name in names:
        with Image.open(io.BytesIO((folder / name).read_bytes())) as image:
            rgb = image.convert("RGB")  # the full decode
            x, y, w, h = random_resized_box(*rgb.size, rng)
            crop = rgb.resize((224, 224), Image.BILINEAR, box=(x, y, x + w, y + h))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            tensor = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255
            (tensor - mean) / std
    return len(names) / (time.perf_counter() - start)


def simplejpeg_rate(folder: Path, names: list[str]) -> float | None:
    try:
        import simplejpeg
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for name in names:
        data = (folder / name).read_bytes()
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        x, y, w, h = random_resized_box(width, height, rng)
        factor = max(1, min(8, 2 ** int(math.log2(max(1, min(w, h) // 224)))))
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=width // factor, min_height=height // factor
        )
        image, reduced = Image.fromarray(pixels), pixels.shape[1] / width
        right, bottom = min((x + w) * reduced, image.width), min((y + h) * reduced, image.height)
        box = (x * reduced, y * reduced, right, bottom)
        np.asarray(image.resize((224, 224), Image.BILINEAR, box=box))
    return len(names) / (time.perf_counter() - start)


def ours(folder: Path, names: list[str], batch: int, workers: int) -> tuple[float, StreamLoader]:
    labels = np.arange(len(names)) % 10
    loader = StreamLoader(
        FileImages(folder, names, labels),
        batch,
        shuffle=True,
        crop=Crop("random-resized", 224, 256, 224),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        workers=workers,
    )
    for _ in loader.batches(0):  # warm-up: the files in the page cache, workers started
        pass
    start = time.perf_counter()
    count = sum(len(y) for _, y in loader.batches(1))
    return count / (time.perf_counter() - start), loader


def in_training(model: str, loader: StreamLoader, steps: int) -> tuple[float, float]:
    """(seconds per step fed by the loader, seconds per step on one held batch)."""
    runtime = Runtime.eager("cpu")
    net, step = build_for_bench(model, runtime)
    net.train()
    sums = EpochSums.start(torch.device("cpu"))
    batches = loader.batches(2)
    x, y = next(batches)
    step(x, y, sums, 0)  # warm-up
    start = time.perf_counter()
    for index in range(steps):
        x, y = next(batches)
        step(x, y, sums, index + 1)
    fed = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for index in range(steps):
        step(x, y, sums, index + steps + 1)
    return fed, (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="wrn-50-2")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", default="500x375", help="the JPEGs' width x height")
    parser.add_argument("--folder", default="/tmp/wrn-bench-stream")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    folder = Path(args.folder) / args.size
    names = make_images(folder, args.images, (width, height))
    plain = plain_pillow(folder, names)  # twice: the first pass warms the page cache
    plain = plain_pillow(folder, names)
    one, _ = ours(folder, names, args.batch_size, 0)
    many, _ = ours(folder, names, args.batch_size, args.workers)
    print(
        f"{args.images} JPEGs of {args.size} (from the CIFAR-10 copy), 224 px crops, CPU, "
        f"{os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(f"{'pipeline':<52} {'img/s':>8} {'x plain':>8}")
    print(f"{'plain Pillow (full decode, crop, resize), 1 process':<52} {plain:>8.0f} {1:>7.2f}x")
    print(f"{'ours, 1 process (draft decode, uint8 batches)':<52} {one:>8.0f} {one / plain:>7.2f}x")
    label = f"ours, {args.workers} worker processes"
    print(f"{label:<52} {many:>8.0f} {many / plain:>7.2f}x")
    rate = simplejpeg_rate(folder, names)
    if rate is not None:
        label = "simplejpeg (DCT-scaled decode) + resample, 1 process"
        print(f"{label:<52} {rate:>8.0f} {rate / plain:>7.2f}x")
    else:
        print("simplejpeg: not installed (pip install simplejpeg to measure it)")
    _, loader = ours(folder, names, args.train_batch, args.workers)
    fed, held = in_training(args.model, loader, args.steps)
    print(
        f"in training ({args.model}, batch {args.train_batch}, eager fp32): "
        f"{fed * 1000:.0f} ms a step fed by the loader against {held * 1000:.0f} ms on a held "
        f"batch ({fed / held - 1:+.1%})"
    )


if __name__ == "__main__":
    main()
