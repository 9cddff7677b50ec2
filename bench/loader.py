"""Images/s of the tensor BatchLoader against a PIL + torch DataLoader pipeline, same run.

Both do the paper's CIFAR augmentation (random 32x32 crop of the 4-px reflection-padded image,
random horizontal flip, mean/std normalisation) on the same decoded uint8 images and deliver
float32 (128, 3, 32, 32) batches on the CPU. The PIL pipeline is what reference
implementations use (a Dataset making one PIL image per sample, transforms per sample, worker
processes collating batches). Reported: images/s per epoch (wall clock, whole epoch including
worker start-up) and the ratio tensor / PIL.

    python bench/loader.py [--data-dir ../shared/data/cifar10-jpeg] [--epochs 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from wideresnet.data import CIFAR_MEAN, CIFAR_STD, BatchLoader, TrainAugment, load_dataset

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


class PilCifar(Dataset):
    """Per-sample PIL transforms, as torchvision's RandomCrop(32, 4, 'reflect') +
    RandomHorizontalFlip + ToTensor + Normalize do them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1) / 255
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1) / 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i])
        padded = Image.fromarray(np.pad(np.asarray(image), ((4, 4), (4, 4), (0, 0)), "reflect"))
        dy, dx = np.random.randint(0, 9, 2)
        image = padded.crop((dx, dy, dx + 32, dy + 32))
        if np.random.rand() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (x.float() / 255 - self.mean) / self.std, int(self.labels[i])


def time_epoch(batches, device: str = "cpu") -> tuple[float, int]:
    start, seen = time.perf_counter(), 0
    for x, _ in batches:
        seen += len(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the tensor loader keeps the "
        "split and builds batches (the PIL pipeline always runs on the CPU)",
    )
    args = parser.parse_args()

    if Path(args.data_dir).exists():
        images, labels, _ = load_dataset("folder", args.data_dir, "train")
        source = args.data_dir
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 50_000)
        source = "50,000 random 32x32 images (no data folder found)"
    print(
        f"data: {source}; {len(images):,} images; batch {args.batch_size}; "
        f"torch threads {torch.get_num_threads()}; PIL workers {args.workers}"
    )

    tensor = BatchLoader(
        images,
        labels,
        args.batch_size,
        shuffle=True,
        augment=TrainAugment(),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        device=args.device,
    )
    pil = DataLoader(
        PilCifar(images, labels),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=False,
    )
    print(f"{'epoch':>5} {'tensor img/s':>13} {'PIL img/s':>10} {'ratio':>6}")
    ratios = []
    for epoch in range(1, args.epochs + 1):
        t_time, t_seen = time_epoch(tensor.batches(epoch), args.device)
        p_time, p_seen = time_epoch(pil)
        t_rate, p_rate = t_seen / t_time, p_seen / p_time
        ratios.append(t_rate / p_rate)
        print(f"{epoch:>5} {t_rate:>13,.0f} {p_rate:>10,.0f} {ratios[-1]:>5.1f}x")
    print(
        f"tensor loader / PIL pipeline: {min(ratios):.1f}x to {max(ratios):.1f}x "
        f"(images/s over whole epochs, wall clock, tensor loader on {args.device}, "
        "same process)"
    )


if __name__ == "__main__":
    main()
