"""Where and how fast a run computes: device, precision, memory format, compilation, graphs.

Every choice is resolved once, with its reason, and recorded in config.json's `resolved`.
Process-wide torch settings (determinism, cuDNN autotuning, the global seed) are applied by
`process_settings` around a run and restored afterwards, so nothing leaks into the caller.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wideresnet.config import Config
from wideresnet.errors import RunError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA GPU is available to this torch")
    return device


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) at or above the first with native bf16 instructions
BF16_ISA_CAPS = {
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX10_1_512",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "ALL",
    "DEFAULT",
}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The instruction-set flags the CPU reports (Linux), or None where they are unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return None


def cpu_bf16(flags: set[str] | None = None, isa_cap: str | None = None) -> tuple[bool, str]:
    """(bf16 pays on this CPU, why), from the instructions the processor really has.

    torch's own check (`mkldnn._is_mkldnn_bf16_supported`) also says yes where oneDNN only
    emulates bf16 with AVX-512, which trains 2-4x slower than fp32; only AMX bf16 units or
    AVX512-BF16 instructions make bf16 pay.
    """
    flags = cpu_flags() if flags is None else flags
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") if isa_cap is None else isa_cap
    if flags is None:
        return False, "fp32: this platform does not report CPU instruction flags"
    if isa_cap and isa_cap.upper() not in BF16_ISA_CAPS:
        return False, f"fp32: ONEDNN_MAX_CPU_ISA={isa_cap} keeps oneDNN below bf16 instructions"
    for flag, name in (("amx_bf16", "AMX bf16 units"), ("avx512_bf16", "AVX512-BF16")):
        if flag in flags:
            return True, f"bf16: the CPU has {name} ({flag})"
    return False, "fp32: no AMX bf16 or AVX512-BF16 on this CPU (bf16 would be emulated, slower)"


# Measured with `wrn bench wrn-16-4 --compile-step` on a 2-core AMD EPYC (AVX512-BF16), torch
# 2.13, twice: channels_last 1.17-1.20x NCHW in fp32; the whole step compiled 0.97-1.05x the
# eager default. `wrn bench` measures both on any machine.
CPU_CHANNELS_LAST_REASON = "CPU: channels_last (measured 1.17-1.20x NCHW, WRN-16-4 fp32 steps)"
CPU_COMPILE_REASON = (
    "CPU: off (the whole step compiled measured 0.97-1.05x the eager default for WRN-16-4, "
    "not worth its compilation; --compile step to use it)"
)


def _on(setting: str, default: bool) -> bool:
    return setting == "on" or (setting == "auto" and default)


@dataclass(frozen=True)
class Speed:
    """The speed switches in force (config.json `resolved`), and why each was chosen."""

    device: str
    precision: str
    channels_last: bool
    compile: bool
    fused_sgd: bool
    cuda_graphs: bool
    whole_step: bool = False  # torch.compile of the whole step (forward to update)
    reasons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, config: Config, device: torch.device, processes: int = 1) -> Speed:
        runtime, cuda = config.runtime, device.type == "cuda"
        reasons = {"precision": f"asked for: --precision {runtime.precision}"}
        precision = runtime.precision
        if precision == "auto":
            if cuda:
                precision, reasons["precision"] = "bf16", "CUDA: bf16 autocast"
            else:
                bf16, why = cpu_bf16()
                precision, reasons["precision"] = ("bf16" if bf16 else "fp32"), why
        whole_step = runtime.compile == "step"
        compile = whole_step or _on(runtime.compile, cuda)
        if not cuda and runtime.compile == "auto":
            reasons["compile"] = CPU_COMPILE_REASON
        if compile and config.data.policy:
            reasons["policy"] = f"{config.data.policy}: each slot one torch.compile graph"
        if not cuda and runtime.channels_last is None:
            reasons["channels_last"] = CPU_CHANNELS_LAST_REASON
        fused = _on(runtime.fused_sgd, cuda) or whole_step
        if whole_step:
            reasons["fused_sgd"] = "--compile step: fused SGD skips a non-finite step on the device"
        graphs = compile and cuda and runtime.cuda_graphs != "off"
        if graphs and processes > 1:
            graphs, reasons["cuda_graphs"] = False, "off on several processes (collectives)"
        return cls(
            device=str(device),
            precision=precision,
            channels_last=True if runtime.channels_last is None else runtime.channels_last,
            compile=compile,
            fused_sgd=fused,
            cuda_graphs=graphs,
            whole_step=whole_step,
            reasons=reasons,
        )

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)
        return nullcontext()

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on the device in the chosen memory format."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def compiled(self, model: nn.Module) -> nn.Module:
        """The forward that training calls: the model, or torch.compile of it (the whole step
        is compiled by step.WholeStep instead)."""
        if not self.compile or self.whole_step:
            return model
        # "reduce-overhead": the compiled graphs replay as CUDA graphs
        return torch.compile(model, mode="reduce-overhead" if self.cuda_graphs else None)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def sync(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation, on the GPU (OutOfMemoryError) or the CPU (DefaultCPUAllocator)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def out_of_memory(device: str, what: str, batch_size: int, option: str) -> RunError:
    """The one line for an allocation that failed while `what` ran at `batch_size`."""
    smaller = max(1, batch_size // 2)
    return RunError(
        f"out of memory on {device} during {what} at batch size {batch_size}: try {option} "
        f"{smaller} (the paper trains with 128), a smaller model, or a device with more memory",
        exit_code=1,
    )


@contextmanager
def process_settings(config: Config) -> Iterator[None]:
    """Determinism, cuDNN autotuning and the global seed for one run, restored afterwards."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        torch.get_rng_state(),
    )
    if config.runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
    torch.use_deterministic_algorithms(config.runtime.deterministic)
    torch.backends.cudnn.benchmark = not config.runtime.deterministic
    torch.manual_seed(config.runtime.seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark = saved[1]
        if saved[2] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        torch.set_rng_state(saved[3])


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(speed: Speed) -> dict[str, Any]:
    """Versions, device and settings, for result.json."""
    from wideresnet import __version__

    device = torch.device(speed.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "wideresnet": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "device": speed.device,
        "device_name": name or platform.machine(),
        "precision": speed.precision,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
    }
