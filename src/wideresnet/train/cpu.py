"""What the CPU can do: its instruction-set flags, whether bf16 pays on it, its clock, and
the training settings that may pay on it (train/calibrate.py times them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

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


def _cpuinfo_field(prefixes: tuple[str, ...], cpuinfo: Path = CPUINFO) -> str | None:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(prefixes):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The instruction-set flags the CPU reports (Linux), or None where they are unknown."""
    flags = _cpuinfo_field(("flags", "Features"), cpuinfo)
    return None if flags is None else set(flags.split())


def cpu_model(cpuinfo: Path = CPUINFO) -> str | None:
    """The processor's model name, or None where it is unknown."""
    return _cpuinfo_field(("model name", "Model", "Hardware"), cpuinfo)


def cpu_ghz(cpuinfo: Path = CPUINFO) -> float | None:
    """The clock the CPU reports, in GHz, or None where it is unknown."""
    try:
        return float(_cpuinfo_field(("cpu MHz",), cpuinfo) or "") / 1000
    except ValueError:
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


@dataclass(frozen=True)
class Candidate:
    """One CPU training setting that `wrn train` may choose."""

    name: str
    precision: str  # fp32 | bf16
    channels_last: bool
    compile: str  # off | on (the model) | step (the whole step)


CANDIDATES = (
    Candidate("eager fp32 NCHW", "fp32", False, "off"),
    Candidate("eager fp32 channels_last", "fp32", True, "off"),
    Candidate("compiled fp32 NCHW", "fp32", False, "on"),
    Candidate("compiled fp32 channels_last", "fp32", True, "on"),
    Candidate("whole step compiled fp32 channels_last", "fp32", True, "step"),
    Candidate("eager bf16 channels_last", "bf16", True, "off"),
    Candidate("compiled bf16 channels_last", "bf16", True, "on"),
)
BASELINE = CANDIDATES[0]  # plain PyTorch: what every speed-up is measured against


def cpu_class(flags: set[str] | None = None) -> str:
    """avx512-bf16 | avx512 | avx2 | other: the vector instructions torch and oneDNN use here,
    after the caps ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY put on them."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return "other"
    onednn = (os.environ.get("ONEDNN_MAX_CPU_ISA") or "").upper()
    aten = (os.environ.get("ATEN_CPU_CAPABILITY") or "").lower()
    if aten == "default" or onednn.startswith(("SSE", "AVX_")) or onednn == "AVX":
        return "other"
    below_512 = aten == "avx2" or onednn.startswith("AVX2")
    if not below_512 and cpu_bf16(flags)[0]:
        return "avx512-bf16"
    if not below_512 and "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "other"
