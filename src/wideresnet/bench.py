"""`wrn bench`: training and inference speed of the settings `wrn train` picks here, against
plain eager fp32 measured in the same process, with the model FLOP utilisation.

Training rows run the real training step (step.make_step: the eager step, or the whole step
compiled for --compile step) on one batch held on the device; inference rows run the model in
eval mode.
Each is warmed up first (compilation included, reported apart), then timed over whole steps
with the device synchronised at the end only. With --data-dir, the run's own loader (resident or
streaming, as `wrn train` would choose) is timed alone, per worker and in all, and then
feeding the same step, so that a user sees which of the two limits a run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from wideresnet.config import Config, OptimConfig
from wideresnet.data.prepare import run_data
from wideresnet.errors import DataError
from wideresnet.models import FORWARDS_PER_TRAINING_IMAGE, create_model, model_summary
from wideresnet.recipes import make_config
from wideresnet.train.cpu import cpu_bf16, cpu_flags, cpu_ghz
from wideresnet.train.environment import device_name
from wideresnet.train.optim import build_optimizer
from wideresnet.train.runtime import Runtime, resolve_device
from wideresnet.train.step import EpochSums, Step, make_step

log = logging.getLogger(__name__)

FLOPS_PER_MAC = 2
WARMUP_STEPS = {False: 2, True: 5}  # with CUDA graphs: recorded on a later call than the first
GPU_PEAKS = {  # dense tensor-core FLOP/s (bf16, and fp32 as TF32), from the vendors' sheets
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "RTX 4090": (165e12, 82.6e12),
}


@dataclass
class Measured:
    setting: str
    images_per_second: float
    warmup_seconds: float
    inference_images_per_second: float


def _synthetic(runtime: Runtime, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    return x.to(runtime.device), y.to(runtime.device)


def build_for_bench(model_name: str, runtime: Runtime) -> tuple[torch.nn.Module, Step]:
    """(model, its training step) for `runtime`, seeded: what a benchmark trains (bench/
    augment.py uses it too)."""
    torch.manual_seed(0)
    model = runtime.prepare(create_model(model_name, 10))
    optimizer = build_optimizer(model, OptimConfig(), runtime.fused_sgd)
    return model, make_step(runtime.compiled(model), optimizer, runtime)


def _timed(run, steps: int, runtime: Runtime) -> tuple[float, float]:
    """(seconds for `steps` calls after warm-up, warm-up seconds); run(i) is call i."""
    warmup_steps = WARMUP_STEPS[runtime.cuda_graphs]
    start = time.perf_counter()
    for index in range(warmup_steps):
        run(index)
    runtime.sync()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for index in range(warmup_steps, warmup_steps + steps):
        run(index)
    runtime.sync()
    return time.perf_counter() - start, warmup


def measure(model_name: str, setting: str, runtime: Runtime, batch: int, steps: int) -> Measured:
    model, step = build_for_bench(model_name, runtime)
    x, y = _synthetic(runtime, batch, getattr(model, "input_size", 32))
    sums = EpochSums.start(runtime.torch_device)
    model.train()
    seconds, warmup = _timed(lambda index: step(x, y, sums, index), steps, runtime)
    model.eval()
    forward = step.model

    @torch.no_grad()
    def infer_once(index: int) -> None:
        with runtime.autocast():
            forward(runtime.input(x))

    infer_seconds, _ = _timed(infer_once, steps, runtime)
    return Measured(setting, batch * steps / seconds, warmup, batch * steps / infer_seconds)


def settings(
    device: str, compile_step: bool, force_bf16: bool = False
) -> list[tuple[str, Runtime]]:
    """The plain baseline, what `wrn train` picks here, and the steps between."""
    cuda = torch.device(device).type == "cuda"
    rows = [("eager fp32 NCHW (baseline)", Runtime.eager(device))]
    rows.append(("channels_last fp32", Runtime.eager(device, channels_last=True)))
    chosen = Runtime.resolve(Config.from_dict({"device": device}), torch.device(device))
    if chosen.precision == "bf16" or cuda or force_bf16:
        label = "channels_last bf16" + ("" if cuda or cpu_bf16()[0] else " (forced)")
        bf16 = dataclasses.replace(Runtime.eager(device, "bf16", True), fused_sgd=cuda)
        rows.append((label, bf16))
    rows.append((f"wrn train's default ({chosen.precision})", chosen))
    if compile_step:
        whole = Config.from_dict({"device": device, "compile": "step"})
        rows.append(
            ("whole step compiled (--compile step)", Runtime.resolve(whole, torch.device(device)))
        )
    return rows


def peak(device: str, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s assumed for the device and precision, what that assumes)."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
        for key, (bf16, fp32) in GPU_PEAKS.items():
            if key in name:
                value = bf16 if precision == "bf16" else fp32
                return value, f"{name}: {value / 1e12:.0f} TFLOP/s dense {precision} (vendor sheet)"
        return None, f"{name}: peak unknown to wideresnet, no utilisation given"
    flags, cores = cpu_flags() or set(), os.cpu_count() or 1
    ghz = cpu_ghz()
    width = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4  # fp32 lanes
    per_cycle = 2 * 2 * width * (2 if precision == "bf16" and cpu_bf16()[0] else 1)
    if ghz is None:
        return None, "CPU clock unknown: no utilisation given"
    value = cores * ghz * 1e9 * per_cycle
    return value, (
        f"CPU: {cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle (2 FMA units of "
        f"{width} fp32 lanes{', x2 for bf16 dot products' if per_cycle > 4 * width else ''}; "
        "an upper bound)"
    )


def real_data(
    model_name: str,
    dataset: str,
    data_dir: str,
    batch: int,
    device: str,
    options: dict[str, Any] | None = None,
) -> tuple[Any, str]:
    """The training loader a run of `model_name` on the data would use (resident or
    streaming, as `wrn train` chooses), and how it was chosen."""
    preset = "imagenet" if dataset == "imagenet" else "cifar"
    values = {"model": model_name, "dataset": dataset, "data_dir": data_dir, "device": device}
    config = make_config(preset, {**values, "batch_size": batch, **(options or {})})
    data = run_data(config, torch.device(device))
    return data.train, f"{data.loader} ({data.loader_reason})"


def loader_rate(loader, steps: int, runtime: Runtime) -> float:
    """Training images/s of the loader alone (after warm-up batches), the device synchronised."""
    batches = iter(loader.batches(1))

    def once(index: int) -> None:
        next(batches)

    seconds, _ = _timed(once, steps, runtime)
    return loader.batch_size * steps / seconds


def end_to_end(model_name: str, runtime: Runtime, loader, steps: int) -> float:
    """Training img/s with real batches from the run's loader through the step."""
    model, step = build_for_bench(model_name, runtime)
    sums = EpochSums.start(runtime.torch_device)
    batches = iter(loader.batches(1))

    def once(index: int) -> None:
        x, y = next(batches)
        step(x, y, sums, index)

    seconds, _ = _timed(once, steps, runtime)
    return loader.batch_size * steps / seconds


def bench(
    model_name: str,
    device: str = "auto",
    batch: int = 128,
    steps: int | None = None,
    *,
    compile_step: bool = False,
    force_bf16: bool = False,
    dataset: str = "folder",
    data_dir: str | None = None,
    data_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every row (as `wrn bench --json` prints it), ratios against the first row."""
    device = str(resolve_device(device))
    steps = steps or (50 if torch.device(device).type == "cuda" else 5)
    macs = model_summary(create_model(model_name, 10))["macs"]
    rows, baseline = [], None
    for label, runtime in settings(device, compile_step, force_bf16):
        measured = measure(model_name, label, runtime, batch, steps)
        log.info(
            "%s: %.0f train img/s (warm-up %.0f s)",
            label,
            measured.images_per_second,
            measured.warmup_seconds,
        )
        baseline = baseline or measured
        top, _ = peak(device, runtime.precision)
        flops = FORWARDS_PER_TRAINING_IMAGE * FLOPS_PER_MAC * macs * measured.images_per_second
        rows.append(
            {
                "setting": label,
                "images_per_second": measured.images_per_second,
                "ratio": measured.images_per_second / baseline.images_per_second,
                "inference_images_per_second": measured.inference_images_per_second,
                "inference_ratio": measured.inference_images_per_second
                / baseline.inference_images_per_second,
                "warmup_seconds": measured.warmup_seconds,
                "mfu": None if top is None else flops / top,
                "precision": runtime.precision,
            }
        )
    result = {
        "model": model_name,
        "device": device,
        "device_name": device_name(device) if device.startswith("cuda") else "CPU",
        "batch_size": batch,
        "steps": steps,
        "macs_per_image": macs,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
        "peaks": {p: peak(device, p)[1] for p in ("fp32", "bf16")},
        "measured": (
            f"images/s over {steps} whole steps after warm-up, one batch of {batch} held on "
            "the device, wall clock with the device synchronised at the end; ratio against "
            "the first row measured in the same process; mfu = 3 x 2 x multiply-accumulates "
            "x images/s / the assumed peak"
        ),
    }
    if data_dir:
        chosen = settings(device, False)[-1][1]
        loader, how = real_data(model_name, dataset, data_dir, batch, device, data_options)
        needed = steps + WARMUP_STEPS[chosen.cuda_graphs]
        if len(loader) < needed:
            raise DataError(
                f"{data_dir}: {len(loader)} batches of {batch}; the bench needs {needed}"
            )
        workers = getattr(loader, "workers", 0)
        alone = loader_rate(loader, steps, chosen)
        result["loader"] = {
            "loader": how,
            "workers": workers,
            "images_per_second": alone,
            "images_per_second_per_worker": alone / max(1, workers),
        }
        result["end_to_end"] = {
            "setting": "wrn train's default, real batches from the run's loader",
            "images_per_second": end_to_end(model_name, chosen, loader, steps),
        }
    return result
