"""Where a real epoch's time goes, against the same step on one held batch (issue: a WRN-16-4
trained at 50,600 img/s on a held batch but 39,100 in real epochs on the H200).

It trains `--epochs` real epochs of the paper's recipe with `wrn train`'s own Trainer (the
run's loader, evaluation, checkpoints), and profiles the last one with torch.profiler: the
host time and the device time under the loader's gathers, the steps and the evaluation,
the host syncs (cudaStreamSynchronize / cudaDeviceSynchronize / device-to-host copies, and
the .item() reads behind them), the CUDA-graph launches, the device's idle share of the
epoch, and how many graphs torch.compile and its CUDA-graph trees recorded. Then it times the
same compiled step on one batch of that loader, held, so that both rates come from one
process and one set of graphs. The epoch before the profiled one gives the unprofiled
real-epoch rate.

    python bench/profile_epoch.py --data-dir .data/cifar10-jpeg.zip [--model wrn-16-4]
        [--epochs 3] [--held-steps 50] [--json FILE] [-- train options, e.g. --train-limit 512]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile, record_function

from wideresnet.recipes import make_config
from wideresnet.train.run import make_trainer
from wideresnet.train.rundir import RunDir
from wideresnet.train.runtime import process_settings
from wideresnet.train.step import EpochSums

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
COPIES = ("Memcpy DtoH", "cudaMemcpy", "cudaMemcpyAsync")
READS = ("aten::item", "aten::_local_scalar_dense")


class Marked:
    """A loader whose batches are marked for the profiler: each gather (`wrn: gather`), or
    the whole pass with the work done on it (`wrn: evaluation`)."""

    def __init__(self, loader, label: str, whole: bool) -> None:
        self.loader, self.label, self.whole = loader, label, whole

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def batches(self, *args, **kwargs):
        if self.whole:
            with record_function(self.label):
                yield from self.loader.batches(*args, **kwargs)
            return
        batches = self.loader.batches(*args, **kwargs)
        while True:
            with record_function(self.label):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch


class MarkedStep:
    """The run's step, each call marked `wrn: step`, stepping the profiler's schedule."""

    def __init__(self, step, profiler) -> None:
        self.step, self.profiler = step, profiler

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, *args) -> None:
        with record_function("wrn: step"):
            self.step(*args)
        self.profiler.step()


def summary(prof, wall: float) -> dict:
    """The profiled epoch's figures: per marked range host and device seconds, syncs, graphs."""
    events = prof.key_averages()
    device_time = lambda e: getattr(e, "device_time_total", 0.0)  # noqa: E731  (microseconds)
    rows = {}
    for e in events:
        if e.key.startswith("wrn: "):
            rows[e.key] = {
                "calls": e.count,
                "host_s": e.cpu_time_total / 1e6,
                "device_s": device_time(e) / 1e6,
            }
    counted = Counter()
    seconds = Counter()
    for e in events:
        for group, names in (
            ("syncs", SYNCS),
            ("device-to-host copies", COPIES),
            (".item() reads", READS),
        ):
            if any(n in e.key for n in names):
                counted[group] += e.count
                seconds[group] += e.cpu_time_total / 1e6
        if "cudaGraphLaunch" in e.key:
            counted["CUDA-graph launches"] += e.count
    kernels = sum(
        getattr(e, "self_device_time_total", 0.0)
        for e in events
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
    )
    graphs = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k.lower()}
    graphs["unique dynamo graphs"] = counters["stats"].get("unique_graphs", 0)
    return {
        "wall_s": wall,
        "ranges": rows,
        "counts": dict(counted),
        "seconds": dict(seconds),
        "device_busy": kernels / 1e6 / wall if wall else None,
        "graphs": graphs,
    }


def held_rate(trainer, steps: int) -> float:
    """Training img/s of the run's own compiled step on one batch of its loader, held."""
    x, y = next(iter(trainer.data.train.batches(trainer.config.optim.epochs + 1)))
    sums = EpochSums.start(trainer.device)
    step = trainer.step.step if isinstance(trainer.step, MarkedStep) else trainer.step
    index = trainer.state.global_step
    for i in range(3):  # the same shapes: no new graph, a CUDA-graph replay
        step(x, y, sums, index + i)
    trainer.runtime.sync()
    start = time.perf_counter()
    for i in range(steps):
        step(x, y, sums, index + 3 + i)
    trainer.runtime.sync()
    return len(y) * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", default="folder")
    parser.add_argument("--model", default="wrn-16-4")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--held-steps", type=int, default=50)
    parser.add_argument("--json", help="also write the figures to FILE")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- more train options")
    args = parser.parse_args()
    extra = {}
    rest = [a for a in args.rest if a != "--"]
    for key, value in zip(rest[::2], rest[1::2]):
        extra[key.lstrip("-").replace("-", "_")] = value
    options = {"model": args.model, "dataset": args.dataset, "data_dir": args.data_dir}
    options |= {"epochs": args.epochs, "milestones": [args.epochs + 1], **extra}
    config = make_config("cifar", options)
    out = Path(tempfile.mkdtemp(prefix="wrn-profile-"))
    with process_settings(config):
        trainer = make_trainer(config, RunDir(out))
        trainer.data.train = Marked(trainer.data.train, "wrn: gather", whole=False)
        trainer.data.test = Marked(trainer.data.test, "wrn: evaluation", whole=True)
        steps = len(trainer.data.train)
        activities = [ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        schedule = torch.profiler.schedule(wait=steps * (args.epochs - 1), warmup=0, active=10**9)
        with profile(activities=activities, schedule=schedule) as prof:
            trainer.step = MarkedStep(trainer.step, prof)
            trainer.run()
        rows = trainer.state.metrics
        profiled = rows[-1]
        figures = summary(prof, profiled.epoch_seconds)
        figures["held_images_per_second"] = held_rate(trainer, args.held_steps)
    before = rows[-2] if len(rows) > 1 else rows[-1]
    figures["real_epoch"] = {
        "epoch": before.epoch,
        "train_images_per_second": before.train_images_per_second,
        "with_eval_images_per_second": steps * config.optim.batch_size / before.epoch_seconds,
        "train_seconds": before.train_seconds,
        "eval_seconds": before.eval_seconds,
    }
    figures["losses"] = [r.train_loss for r in rows]
    figures["run"] = {
        "model": args.model,
        "device": trainer.runtime.device,
        **trainer.runtime.record(),
    }
    real = figures["real_epoch"]
    print(
        f"{args.model} on {trainer.runtime.device} ({trainer.runtime.precision}), batch "
        f"{config.optim.batch_size}, {steps} steps per epoch, torch {torch.__version__}"
    )
    held, e = figures["held_images_per_second"], real["epoch"]
    print(f"  held batch, the run's compiled step: {held:>9,.0f} img/s")
    print(f"  real epoch {e} (no profiler), train:  {real['train_images_per_second']:>9,.0f} img/s")
    print(
        f"  real epoch {e}, with evaluation:      {real['with_eval_images_per_second']:>9,.0f} "
        f"img/s (train {real['train_seconds']:.2f} s, eval {real['eval_seconds']:.2f} s)"
    )
    print(f"  profiled epoch {profiled.epoch}: {figures['wall_s']:.2f} s wall (with profiler)")
    for name, row in figures["ranges"].items():
        print(
            f"    {name:<18} {row['calls']:>6} calls  host {row['host_s']:7.3f} s  "
            f"device {row['device_s']:7.3f} s"
        )
    for name, count in figures["counts"].items():
        spent = figures["seconds"].get(name)
        print(f"    {name:<22} {count:>6}" + (f"  host {spent:.3f} s" if spent else ""))
    if figures["device_busy"] is not None and trainer.device.type == "cuda":
        print(f"    device busy {100 * figures['device_busy']:.0f}% of the epoch's wall clock")
    print(f"    graphs: {figures['graphs']}")
    print("  train loss per epoch: " + ", ".join(f"{x:.4f}" for x in figures["losses"]))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
