"""What a table costs to run: multiply-accumulates x images x epochs, turned into hours.

Training an image costs about three forward passes (forward, and a backward of twice that);
testing costs one. Hours on this machine's CPU come from its training speed measured here (a
few WRN-16-2 steps with the settings `wrn train` picks, remembered in the cache); hours on a
reference GPU come from H200 throughputs measured in real epochs, interpolated by the
network's multiply-accumulates. Every figure says what it assumes.
"""

from __future__ import annotations

import math
import platform

import torch

from wideresnet.config import Config
from wideresnet.data.cache import read_record, write_record
from wideresnet.models import FORWARDS_PER_TRAINING_IMAGE, create_model, model_summary
from wideresnet.train.calibrate import Held, cpu_choice
from wideresnet.train.runtime import Runtime

IMAGES = {  # (train, test) images of each dataset column, as the paper's recipes use them
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "svhn": (604_388, 26_032),
    "imagenet": (1_281_167, 50_000),
}
EPOCHS = {"cifar10": 200, "cifar100": 200, "svhn": 160, "imagenet": 90}
# H200, torch 2.11, bf16 + compile + CUDA graphs, batch 128, real CIFAR-10 epochs with the
# tensor loader (wideresnet 0.2, README "Speed"): (multiply-accumulates per image, train img/s)
GPU_POINTS = (
    (0.393e9, 39_079.0),  # WRN-16-4: median epoch of a full 200-epoch run
    (1.299e9, 24_637.0),  # WRN-40-4: second epoch
    (5.243e9, 11_312.0),  # WRN-28-10: second epoch
)
GPU_ASSUMES = (
    "H200: training img/s interpolated (log-log, by multiply-accumulates) between real epochs "
    "measured with wideresnet 0.2: WRN-16-4 39,079 img/s, WRN-40-4 24,637, WRN-28-10 11,312; "
    "evaluation at the same rate"
)
CPU_REFERENCE = "wrn-16-2"
RECORD = "throughput.json"


def gpu_images_per_second(macs: float) -> float:
    """Training img/s of a network on the reference GPU, from its multiply-accumulates."""
    (m0, r0), (m1, r1) = GPU_POINTS[0], GPU_POINTS[-1]
    if macs <= m0:  # smaller networks are bound by kernel launches: no faster than WRN-16-4
        return r0
    if macs >= m1:  # larger ones: the same multiply-accumulate rate as WRN-28-10
        return r1 * m1 / macs
    (m0, r0), (m1, r1) = next(
        pair for pair in zip(GPU_POINTS, GPU_POINTS[1:]) if macs <= pair[1][0]
    )
    t = (math.log(macs) - math.log(m0)) / (math.log(m1) - math.log(m0))
    return math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0)))


def cpu_rate() -> tuple[float, str]:
    """(training multiply-accumulates per second of this CPU, how it was measured)."""
    eager = cpu_choice(Config())  # the eager setting wrn train takes here
    runtime = Runtime.resolve(Config(), torch.device("cpu"), 1, eager)
    key = f"{platform.processor() or platform.machine()}|{torch.__version__}|"
    key += f"{torch.get_num_threads()} threads|{runtime.precision}"
    record = read_record(RECORD)
    if key not in record:
        record[key] = _measure_cpu(runtime)
        write_record(RECORD, record)
    rate = record[key]
    return rate, (
        f"this CPU ({torch.get_num_threads()} threads, {runtime.precision}): "
        f"{rate / 1e9:.1f} G training multiply-accumulates/s, measured on {CPU_REFERENCE} "
        "steps at batch 64 and assumed the same for every network"
    )


def _measure_cpu(runtime: Runtime, batch: int = 64, steps: int = 3) -> float:
    held = Held(CPU_REFERENCE, runtime, batch)
    held.train(1)  # warm-up
    images_per_second = batch * steps / held.train(steps)
    macs = model_summary(create_model(CPU_REFERENCE, 10))["macs"]
    return FORWARDS_PER_TRAINING_IMAGE * macs * images_per_second


def run_cost(macs: float, column: str, epochs: int | None = None) -> dict:
    """Multiply-accumulates and hours of one run of a network on a dataset column."""
    train, test = IMAGES[column]
    epochs = epochs or EPOCHS[column]
    total = macs * epochs * (FORWARDS_PER_TRAINING_IMAGE * train + test)
    cpu, _ = cpu_rate()
    gpu_seconds = epochs * (train + test) / gpu_images_per_second(macs)
    return {
        "epochs": epochs,
        "macs": total,
        "cpu_hours": total / cpu / 3600,
        "gpu_hours": gpu_seconds / 3600,
    }
