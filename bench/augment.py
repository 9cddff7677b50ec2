"""The cost of each augmentation policy as a fraction of a WRN-16-4 training step, same process.

For each setting it times whole epochs' worth of batches from the tensor loader (crop and flip,
then the policy, normalisation, Cutout) and, separately, WRN-16-4 training steps on one batch
held on the device with the settings `wrn train` picks; printed: the policy's extra time per
batch (over crop and flip alone) divided by the step's time. Wall clock, device synchronised
at the end of each timing.

    python bench/augment.py [--device cuda] [--batches 20] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wideresnet.bench import measure
from wideresnet.config import Config
from wideresnet.data import BatchLoader
from wideresnet.train.runtime import Speed

SETTINGS = {
    "crop + flip (baseline)": {},
    "+ Cutout 16": {"cutout": 16},
    "+ AutoAugment + Cutout": {"policy": "autoaugment", "cutout": 16},
    "+ RandAugment 2/9": {"policy": "randaugment:2:9"},
    "+ TrivialAugment + Cutout": {"policy": "trivialaugment", "cutout": 16},
}


def batch_seconds(device: str, batch: int, batches: int, **options) -> float:
    images = np.random.default_rng(0).integers(0, 256, (batch * batches, 32, 32, 3), np.uint8)
    loader = BatchLoader(
        images, np.zeros(len(images)), batch, device=device, shuffle=True, augment=True, **options
    )
    for _ in loader.batches(0):  # warm-up
        pass
    start = time.perf_counter()
    for _ in loader.batches(1):
        pass
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 50 GPU, 5 CPU)")
    args = parser.parse_args()
    speed = Speed.resolve(Config.from_dict({"device": args.device}), torch.device(args.device))
    steps = args.steps or (50 if args.device.startswith("cuda") else 5)
    step = (
        args.batch_size
        / measure("wrn-16-4", "default", speed, args.batch_size, steps).images_per_second
    )
    print(
        f"WRN-16-4 training step, batch {args.batch_size}, {speed.device} {speed.precision}: "
        f"{step * 1000:.1f} ms (wall clock over {steps} steps after warm-up)"
    )
    print(f"{'setting':<28} {'ms/batch':>9} {'extra ms':>9} {'of a step':>9}")
    base = None
    for label, options in SETTINGS.items():
        seconds = batch_seconds(args.device, args.batch_size, args.batches, **options)
        base = seconds if base is None else base
        extra = seconds - base
        print(f"{label:<28} {seconds * 1000:>9.2f} {extra * 1000:>9.2f} {extra / step:>8.1%}")


if __name__ == "__main__":
    main()
