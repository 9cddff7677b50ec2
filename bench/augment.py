"""The cost of each augmentation policy as a fraction of a WRN-16-4 training step, same process.

For each setting (crop and flip, then the policy, normalisation, Cutout) it times, on one
model compiled once with the settings `wrn train` picks:
  - in training: whole steps fed by the tensor loader (batch, then step, as `wrn train` runs
    them), against crop and flip alone; the extra time per step over that baseline, divided
    by the baseline step, is what the policy costs a run. On a GPU this is the figure that
    counts: the loader's kernels queue behind the running step and cost only what does not
    overlap;
  - the loader alone: its time per batch with nothing else running (on a GPU mostly the
    time to queue the kernels).
Wall clock over `--batches` batches after a warm-up epoch, the device synchronised at the end.
With torch.compile on (the default on a GPU) the policies are compiled too, as `wrn train`
does; a last row then times TrivialAugment + Cutout with the policy eager, and a line says
whether the compiled policy's batches equal the eager ones on this device.

    python bench/augment.py [--device cuda] [--compile auto|on|off] [--batches 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wideresnet.bench import build_for_bench
from wideresnet.config import Config
from wideresnet.data import BatchLoader, TrainAugment
from wideresnet.train.runtime import Runtime
from wideresnet.train.step import EpochSums

SETTINGS = {
    "crop + flip (baseline)": {},
    "+ Cutout 16": {"cutout": 16},
    "+ AutoAugment + Cutout": {"policy": "autoaugment", "cutout": 16},
    "+ RandAugment 2/9": {"policy": "randaugment:2:9"},
    "+ TrivialAugment + Cutout": {"policy": "trivialaugment", "cutout": 16},
}


EAGER_ROW = "+ TrivialAugment + Cutout, eager"  # on a GPU: the policy not compiled


def loader(device: str, batch: int, batches: int, **options) -> BatchLoader:
    images = np.random.default_rng(0).integers(0, 256, (batch * batches, 32, 32, 3), np.uint8)
    labels = np.random.default_rng(1).integers(0, 10, len(images))
    augment = TrainAugment(**options)
    return BatchLoader(images, labels, batch, device=device, shuffle=True, augment=augment)


def seconds_per_batch(batches, runtime: Runtime, step=None) -> float:
    """Mean wall seconds per batch of epoch 1 (epoch 0 warms up), with `step` run on each."""
    for x, y in batches(0):
        if step is not None:
            step(x, y)
    runtime.sync()
    start, count = time.perf_counter(), 0
    for x, y in batches(1):
        if step is not None:
            step(x, y)
        count += 1
    runtime.sync()
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=0, help="default: 50 GPU, 5 CPU")
    parser.add_argument("--compile", default="auto", help="as wrn train's (auto: on for CUDA)")
    args = parser.parse_args()
    config = Config.from_dict({"device": args.device, "compile": args.compile})
    runtime = Runtime.resolve(config, torch.device(args.device))
    batches = args.batches or (50 if args.device.startswith("cuda") else 5)
    model, train_step = build_for_bench("wrn-16-4", runtime)
    sums = EpochSums.start(runtime.torch_device)
    model.train()
    steps = iter(range(1 << 30))

    def step(x, y):
        train_step(x, y, sums, next(steps))

    print(
        f"WRN-16-4 training, batch {args.batch_size}, {runtime.device} {runtime.precision}; "
        f"wall clock over {batches} batches after a warm-up epoch"
    )
    settings = {k: v | {"compile_policy": runtime.compile} for k, v in SETTINGS.items()}
    if runtime.compile:  # what compiling the policy gains, and whether it changes a batch
        settings[EAGER_ROW] = {"policy": "trivialaugment", "cutout": 16}
        check = [
            loader(args.device, args.batch_size, 2, **settings[EAGER_ROW], compile_policy=c)
            for c in (True, False)
        ]
        same = [torch.equal(a[0], b[0]) for a, b in zip(*(s.batches(0) for s in check))]
        print(f"compiled TrivialAugment + Cutout batches equal the eager ones: {all(same)}")
    rows = []
    for label, options in settings.items():
        source = loader(args.device, args.batch_size, batches, **options)
        alone = seconds_per_batch(source.batches, runtime)
        rows.append((label, alone, seconds_per_batch(source.batches, runtime, step)))
    _, loader_base, step_base = rows[0]
    print(f"{'':<34} {'loader alone':>23} {'in training (batch + step)':>28}")
    print(f"{'setting':<34} {'ms':>7} {'extra, of a step':>16} {'ms':>8} {'extra, of a step':>18}")
    for label, alone, trained in rows:
        extra_alone, extra_trained = alone - loader_base, trained - step_base
        print(
            f"{label:<34} {alone * 1000:>7.2f} {extra_alone * 1000:>8.2f} "
            f"{extra_alone / step_base:>7.1%} {trained * 1000:>8.2f} "
            f"{extra_trained * 1000:>9.2f} {extra_trained / step_base:>7.1%}"
        )
    print(
        "extra: over crop + flip; of a step: divided by the baseline's training step. On a CPU "
        "the loader runs between steps, so its own extra time is the cost; on a GPU its "
        "kernels overlap the step, so the in-training column is."
    )


if __name__ == "__main__":
    main()
