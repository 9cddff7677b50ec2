"""Training images/s of the fast settings against a plain eager fp32 baseline, same process.

Each setting runs full SGD steps (forward, loss, backward, Nesterov update) on one batch held
on the device; after warm-up (which includes torch.compile's compilation, reported separately)
it times `--steps` steps, synchronising the device at the end only. Printed: images/s (wall
clock over the timed steps) and the ratio to the eager fp32 NCHW baseline measured in the same
run.

    python bench/train_step.py [--model wrn-16-4] [--device cuda] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from wideresnet import create_model
from wideresnet.train import cpu_supports_bf16


def settings(device: str, want_compile: bool) -> list[tuple[str, dict]]:
    bf16 = device == "cuda" or cpu_supports_bf16()
    rows = [("eager fp32 NCHW (baseline)", {}), ("channels_last fp32", {"channels_last": True})]
    if bf16:
        rows.append(("channels_last bf16", {"channels_last": True, "bf16": True}))
    if device == "cuda":
        rows.append(
            ("channels_last bf16 fused SGD", {"channels_last": True, "bf16": True, "fused": True})
        )
    if want_compile:
        fast = {"channels_last": True, "bf16": bf16, "fused": device == "cuda", "compile": True}
        rows.append(("+ torch.compile", fast))
        if device == "cuda":
            rows.append(("+ CUDA graphs (what wrn train runs)", {**fast, "graphs": True}))
    return rows


def measure(
    model_name: str,
    device: str,
    batch: int,
    steps: int,
    channels_last=False,
    bf16=False,
    fused=False,
    compile=False,
    graphs=False,
) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(model_name, 10).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        **({"fused": True} if fused else {}),
    )
    forward = model
    if compile:
        forward = torch.compile(model, mode="reduce-overhead" if graphs else None)

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(5 if graphs else 3):  # CUDA graphs are recorded on the third call
        step()
    sync()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
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
    baseline = None
    for label, options in settings(args.device, want_compile):
        rate, warmup = measure(args.model, args.device, args.batch_size, steps, **options)
        baseline = baseline or rate
        print(f"{label:<34} {rate:>9,.0f} {rate / baseline:>9.2f}x {warmup:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
