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
from typing import Any

import torch

from wideresnet.config import Config
from wideresnet.data.prepare import run_data
from wideresnet.errors import DataError
from wideresnet.models import FORWARDS_PER_TRAINING_IMAGE, create_model, model_summary
from wideresnet.recipes import make_config
from wideresnet.train.calibrate import (
    WARMUP_STEPS,
    build_for_bench,
    calibrate,
    cpu_choice,
    describe,
    measure,
    timed,
)
from wideresnet.train.cpu import Candidate, cpu_bf16, cpu_flags, cpu_ghz
from wideresnet.train.environment import device_name
from wideresnet.train.runtime import Runtime, resolve_device
from wideresnet.train.step import EpochSums

log = logging.getLogger(__name__)

FLOPS_PER_MAC = 2
GPU_PEAKS = {  # dense tensor-core FLOP/s (bf16, and fp32 as TF32), from the vendors' sheets
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "L40S": (362e12, 183e12),
    "RTX 4090": (165e12, 82.6e12),
}


# what the default row assumes on a CPU, where compiling is weighed against the run's length
BENCH_RUN = ("a run of the paper's CIFAR schedule", 200 * 49_920)


def cpu_default(model_name: str) -> tuple[Candidate, str]:
    """The CPU setting `wrn train` picks for `model_name` on a paper-length CIFAR run."""
    with torch.device("meta"):  # sized from shapes alone: no weights drawn
        model = create_model(model_name, 10)
    return cpu_choice(Config(), model, BENCH_RUN[1])


def settings(
    device: str, model_name: str, compile_step: bool = False, force_bf16: bool = False
) -> tuple[list[tuple[str, Runtime]], Runtime]:
    """(the rows: the plain baseline, what `wrn train` picks here and the steps between;
    what it picks)."""
    cuda = torch.device(device).type == "cuda"
    rows = [("eager fp32 NCHW (baseline)", Runtime.eager(device))]
    rows.append(("channels_last fp32", Runtime.eager(device, channels_last=True)))
    cpu = None if cuda else cpu_default(model_name)
    chosen = Runtime.resolve(Config.from_dict({"device": device}), torch.device(device), 1, cpu)
    if chosen.precision == "bf16" or cuda or force_bf16:
        label = "channels_last bf16" + ("" if cuda or cpu_bf16()[0] else " (forced)")
        bf16 = dataclasses.replace(Runtime.eager(device, "bf16", True), fused_sgd=cuda)
        rows.append((label, bf16))
    rows.append((f"wrn train's default ({cpu[0].name if cpu else chosen.precision})", chosen))
    if compile_step:
        whole = Config.from_dict({"device": device, "compile": "step"})
        runtime = Runtime.resolve(whole, torch.device(device), 1, cpu)
        rows.append(("whole step compiled (--compile step)", runtime))
    return rows, chosen


AMX_BF16_PER_CYCLE = 1024  # bf16 FLOP/cycle of a core's AMX unit (Intel: 512 FMAs a cycle)


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
    units = (
        f"2 FMA units of {width} fp32 lanes"
        f"{', x2 for bf16 dot products' if per_cycle > 4 * width else ''}"
    )
    amx = "amx_bf16" in flags or getattr(torch.cpu, "_is_amx_tile_supported", bool)()
    if precision == "bf16" and amx and per_cycle > 4 * width:
        per_cycle, units = AMX_BF16_PER_CYCLE, "bf16: an AMX tile unit a core, Intel's figure"
    return cores * ghz * 1e9 * per_cycle, (
        f"CPU: {cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({units}; an upper bound)"
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

    seconds, _ = timed(once, steps, runtime)
    return loader.batch_size * steps / seconds


def end_to_end(model_name: str, runtime: Runtime, loader, steps: int) -> float:
    """Training img/s with real batches from the run's loader through the step."""
    model, step = build_for_bench(model_name, runtime)
    sums = EpochSums.start(runtime.torch_device)
    batches = iter(loader.batches(1))

    def once(index: int) -> None:
        x, y = next(batches)
        step(x, y, sums, index)

    seconds, _ = timed(once, steps, runtime)
    return loader.batch_size * steps / seconds


def _row(label, measured, baseline, precision: str, device: str, macs: int) -> dict[str, Any]:
    """One setting's row: its speeds, their ratios to the baseline's, its MFU."""
    top, _ = peak(device, precision)
    flops = FORWARDS_PER_TRAINING_IMAGE * FLOPS_PER_MAC * macs * measured.images_per_second
    return {
        "setting": label,
        "images_per_second": measured.images_per_second,
        "ratio": measured.images_per_second / baseline.images_per_second,
        "inference_images_per_second": measured.inference_images_per_second,
        "inference_ratio": measured.inference_images_per_second
        / baseline.inference_images_per_second,
        "warmup_seconds": measured.warmup_seconds,
        "mfu": None if top is None else flops / top,
        "precision": precision,
    }


def _with_real_data(model_name, dataset, data_dir, batch, device, options, chosen, steps):
    """The run's loader alone, then its real batches through wrn train's default step."""
    loader, how = real_data(model_name, dataset, data_dir, batch, device, options)
    needed = steps + WARMUP_STEPS[chosen.cuda_graphs]
    if len(loader) < needed:
        raise DataError(f"{data_dir}: {len(loader)} batches of {batch}; the bench needs {needed}")
    workers = getattr(loader, "workers", 0)
    alone = loader_rate(loader, steps, chosen)
    return {
        "loader": {
            "loader": how,
            "workers": workers,
            "images_per_second": alone,
            "images_per_second_per_worker": alone / max(1, workers),
        },
        "end_to_end": {
            "setting": "wrn train's default, real batches from the run's loader",
            "images_per_second": end_to_end(model_name, chosen, loader, steps),
        },
    }


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
    calibrate_cpu: bool = False,
) -> dict[str, Any]:
    """Every row (as `wrn bench --json` prints it), ratios against the first row;
    `calibrate_cpu`: first time every CPU setting on this machine (cached for `wrn train`)."""
    device = str(resolve_device(device))
    cpu = torch.device(device).type == "cpu"
    calibration = [] if not (cpu and calibrate_cpu) else describe(calibrate())
    steps = steps or (50 if torch.device(device).type == "cuda" else 5)
    macs = model_summary(create_model(model_name, 10))["macs"]
    rows, baseline = [], None
    timed_settings, chosen = settings(device, model_name, compile_step, force_bf16)
    for label, runtime in timed_settings:
        measured = measure(model_name, label, runtime, batch, steps)
        log.info(
            "%s: %.0f train img/s (warm-up %.0f s)",
            label,
            measured.images_per_second,
            measured.warmup_seconds,
        )
        baseline = baseline or measured
        rows.append(_row(label, measured, baseline, runtime.precision, device, macs))
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
        "calibration": calibration,
        "default_reason": chosen.reasons["compile"].removeprefix("CPU: ")
        if cpu
        else "CUDA defaults",
        "peaks": {p: peak(device, p)[1] for p in ("fp32", "bf16")},
        "measured": (
            f"images/s over {steps} whole steps after warm-up, one batch of {batch} held on "
            "the device, wall clock with the device synchronised at the end; ratio against "
            "the first row measured in the same process; mfu = 3 x 2 x multiply-accumulates "
            "x images/s / the assumed peak"
        ),
    }
    if data_dir:
        args = (model_name, dataset, data_dir, batch, device, data_options, chosen, steps)
        result.update(_with_real_data(*args))
    return result
