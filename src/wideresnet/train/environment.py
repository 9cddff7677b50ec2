"""What a result records about where it was made: versions, device, the code's git commit."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wideresnet.version import __version__


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


def device_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU's as the platform reports it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def environment(device: str, precision: str) -> dict[str, Any]:
    """Versions, device and settings, for result.json."""
    return {
        "wideresnet": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "device": device,
        "device_name": device_name(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
    }
