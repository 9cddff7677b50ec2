"""Where and how fast a run computes: device, precision, memory format, compilation, graphs.

Every choice is resolved once, with its reason, and recorded in config.json's `resolved`.
Process-wide torch settings (determinism, cuDNN autotuning, the global seed) are applied by
`process_settings` around a run and restored afterwards, so nothing leaks into the caller.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from wideresnet.config import Config
from wideresnet.errors import RunError
from wideresnet.seeds import Stream, seed_process
from wideresnet.train.cpu import BASELINE, Candidate


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


HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def compiles_policy(config: Config, device: torch.device) -> bool:
    """The augmentation policy's slots as torch.compile graphs: when compiling on CUDA, or
    asked for on a CPU (where compiling them measured no gain, bench/augment.py)."""
    runtime, cuda = config.runtime, device.type == "cuda"
    asked = runtime.compile in ("on", "step") or (cuda and runtime.compile == "auto")
    return bool(config.data.policy) and asked


def _on(setting: str, default: bool) -> bool:
    return setting == "on" or (setting == "auto" and default)


@dataclass(frozen=True)
class Runtime:
    """The speed switches in force (config.json `resolved`), and why each was chosen.

    `Runtime.resolve(config, device)` is what `wrn train` runs; `Runtime.eager(device)` is
    plain PyTorch (fp32, NCHW, no compilation), the baseline of every benchmark."""

    device: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False  # torch.compile of the model
    fused_sgd: bool = False
    cuda_graphs: bool = False
    whole_step: bool = False  # torch.compile of the whole step (forward to update)
    compile_mode: str = "default"  # or max-autotune
    reasons: dict[str, str] = field(default_factory=dict)

    @classmethod
    def eager(
        cls, device: str | torch.device, precision: str = "fp32", channels_last: bool = False
    ) -> Runtime:
        """Eager PyTorch on `device` in `precision`: no compilation, graphs or fused SGD."""
        return cls(str(device), precision, channels_last)

    @classmethod
    def resolve(
        cls,
        config: Config,
        device: torch.device,
        processes: int = 1,
        cpu: tuple[Candidate, str] | None = None,
    ) -> Runtime:
        """What the config asks for on this device, 'auto' settled by what pays here: on a
        CPU by `cpu`, the setting train/calibrate.py chose with its reason (None: plain
        eager fp32 NCHW)."""
        runtime, cuda = config.runtime, device.type == "cuda"
        reasons = {}
        if cuda:
            precision = "bf16" if runtime.precision == "auto" else runtime.precision
            channels_last = runtime.channels_last is None or runtime.channels_last
            compile = runtime.compile in ("auto", "on", "step")
            whole_step = runtime.compile == "step"
            if runtime.precision == "auto":
                reasons["precision"] = "CUDA: bf16 autocast"
        else:
            chosen, why = cpu or (BASELINE, "no CPU setting chosen: plain eager fp32 NCHW")
            precision = chosen.precision if runtime.precision == "auto" else runtime.precision
            channels_last = (
                chosen.channels_last if runtime.channels_last is None else runtime.channels_last
            )
            asked = chosen.compile if runtime.compile == "auto" else runtime.compile
            compile, whole_step = asked in ("on", "step"), asked == "step"
            for key, auto in (
                ("precision", runtime.precision == "auto"),
                ("channels_last", runtime.channels_last is None),
                ("compile", runtime.compile == "auto"),
            ):
                if auto:
                    reasons[key] = f"CPU: {why}"
        if runtime.precision != "auto":
            reasons["precision"] = f"asked for: --precision {runtime.precision}"
        if precision == "fp16" and not cuda:
            reasons["precision"] += " (on a CPU fp16 is emulated: far slower than bf16 or fp32)"
        if compiles_policy(config, device):
            reasons["policy"] = f"{config.data.policy}: each slot one torch.compile graph"
        fused = _on(runtime.fused_sgd, cuda) or whole_step
        if whole_step:
            reasons["fused_sgd"] = "--compile step: fused SGD skips a non-finite step on the device"
        graphs = compile and cuda and runtime.cuda_graphs != "off"
        if graphs and processes > 1:
            graphs, reasons["cuda_graphs"] = False, "off on several processes (collectives)"
        return cls(
            device=str(device),
            precision=precision,
            channels_last=channels_last,
            compile=compile,
            fused_sgd=fused,
            cuda_graphs=graphs,
            whole_step=whole_step,
            compile_mode=runtime.compile_mode,
            reasons=reasons,
        )

    def record(self, processes: int = 1) -> dict[str, Any]:
        """The choices and their reasons, as config.json `resolved` holds them."""
        fields = {k: v for k, v in asdict(self).items() if k != "reasons"}
        return {**fields, "processes": processes, "reasons": dict(self.reasons)}

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def autocast(self):
        if self.precision in HALF:
            return torch.autocast(self.torch_device.type, dtype=HALF[self.precision])
        return nullcontext()

    @property
    def torch_compile_mode(self) -> str | None:
        """torch.compile's mode: CUDA graphs replay the compiled graphs where they are on."""
        if self.compile_mode == "max-autotune":
            return "max-autotune" if self.cuda_graphs else "max-autotune-no-cudagraphs"
        return "reduce-overhead" if self.cuda_graphs else None

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on the device in the chosen memory format."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def compiled(self, model: nn.Module) -> nn.Module:
        """The forward that training calls: the model, or torch.compile of it (the whole step
        is compiled by step.WholeStep instead)."""
        if not self.compile or self.whole_step:
            return model
        return torch.compile(model, mode=self.torch_compile_mode)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def sync(self) -> None:
        if self.torch_device.type == "cuda":
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
    seed_process(config.runtime.seed, 0, Stream.INIT)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark = saved[1]
        if saved[2] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        torch.set_rng_state(saved[3])
