"""Training images/s of the fast settings against a plain eager fp32 baseline, same process.

Each setting runs `wideresnet.train.step.train_step` (forward, loss, backward, Nesterov
update: the step `wrn train` runs) on one batch held on the device; after warm-up (which
includes torch.compile's compilation, reported separately) it times `--steps` steps,
synchronising the device at the end only. Printed: images/s (wall clock over the timed steps)
and the ratio to the eager fp32 NCHW baseline measured in the same run.

    python bench/train_step.py [--model wrn-16-4] [--device cuda] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from wideresnet import create_model
from wideresnet.config import OptimConfig
from wideresnet.recipes import make_config
from wideresnet.train.optim import build_optimizer
from wideresnet.train.runtime import Speed, cpu_bf16
from wideresnet.train.step import EpochSums, train_step


def settings(device: str, want_compile: bool) -> list[tuple[str, Speed]]:
    cuda = device == "cuda"
    bf16 = cuda or cpu_bf16()[0]

    def speed(precision="fp32", channels_last=False, fused=False, compile=False, graphs=False):
        return Speed(device, precision, channels_last, compile, fused, graphs)

    rows = [
        ("eager fp32 NCHW (baseline)", speed()),
        ("channels_last fp32", speed(channels_last=True)),
        ("channels_last bf16" + ("" if bf16 else " (forced)"), speed("bf16", True)),
    ]
    if not cuda:
        chosen = Speed.resolve(make_config("cifar", {"compile": "off"}), torch.device("cpu"))
        rows.append((f"wrn train's default: {chosen.precision}", chosen))
    if cuda:
        rows.append(("channels_last bf16 fused SGD", speed("bf16", True, fused=True)))
    if want_compile:
        precision = "bf16" if bf16 else "fp32"
        rows.append(("+ torch.compile", speed(precision, True, fused=cuda, compile=True)))
        if cuda:
            fast = speed(precision, True, fused=True, compile=True, graphs=True)
            rows.append(("+ CUDA graphs (what wrn train runs)", fast))
    return rows


def measure(model_name: str, speed: Speed, batch: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = speed.prepare(create_model(model_name, 10))
    optimizer = build_optimizer(model, OptimConfig(), speed.fused_sgd)
    forward = speed.compiled(model)
    x = torch.randn(batch, 3, 32, 32, device=speed.device)
    y = torch.randint(0, 10, (batch,), device=speed.device)
    sums = EpochSums.start(torch.device(speed.device))
    start = time.perf_counter()
    for _ in range(5 if speed.cuda_graphs else 3):  # CUDA graphs are recorded on the third call
        train_step(forward, optimizer, x, y, speed, sums)
    speed.sync()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        train_step(forward, optimizer, x, y, speed, sums)
    speed.sync()
    return batch * steps / (time.perf_counter() - start), warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn-16-4")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 50 GPU, 5 CPU)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure torch.compile (default: on for CUDA)",
    )
    args = parser.parse_args()
    steps = args.steps or (50 if args.device == "cuda" else 5)
    want_compile = args.device == "cuda" if args.compile is None else args.compile
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"{args.model}, batch {args.batch_size}, {steps} timed steps, {name}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"{'setting':<34} {'img/s':>9} {'x baseline':>10} {'warm-up s':>9}")
    rates = {}
    for label, speed in settings(args.device, want_compile):
        rate, warmup = measure(args.model, speed, args.batch_size, steps)
        baseline = rates.setdefault("baseline", rate)
        rates[label] = rate
        print(f"{label:<34} {rate:>9,.0f} {rate / baseline:>9.2f}x {warmup:>9.1f}", flush=True)
    default = next((k for k in rates if k.startswith("wrn train's default")), None)
    if default:
        reason = cpu_bf16()[1]
        ratio = rates[default] / rates["channels_last fp32"]
        print(f"default / --precision fp32 (both channels_last): {ratio:.2f}x; {reason}")


if __name__ == "__main__":
    main()
