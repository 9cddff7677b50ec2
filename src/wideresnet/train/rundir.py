"""A run directory (DESIGN.md CONTRACT): its file names and the records written into it.

config.json     the resolved config (flat) and `resolved` (the speed choices and why)
metrics.jsonl   one JSON object per epoch
checkpoint.pt   the latest training state (checkpoint.prev.pt: the one before)
result.json     written when the run ends
failure.json    written when a run stops on a non-finite loss
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wideresnet.errors import ConfigError, RunError
from wideresnet.files import atomic_write, read_json, write_json
from wideresnet.train.checkpoint import CHECKPOINT, PREVIOUS

CONFIG, METRICS, RESULT, FAILURE = "config.json", "metrics.jsonl", "result.json", "failure.json"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, PREVIOUS, RESULT, FAILURE)


class RunDir:
    """The files of one run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def prepare_new(self, overwrite: bool) -> None:
        """Make the folder for a new run; a non-empty one only with overwrite (then only the
        run's own files are removed)."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path}: exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise RunError(
                    f"--out {path}: not empty; use --resume {path} to continue it "
                    "or --overwrite to start again"
                )
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunError(f"--out {path}: cannot create ({error.strerror})") from None

    def write_config(self, config: dict[str, Any], resolved: dict[str, Any]) -> None:
        write_json(self / CONFIG, {**config, "resolved": resolved})

    def read_config(self) -> dict[str, Any] | None:
        return read_json(self / CONFIG)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write(self / METRICS, "".join(json.dumps(row) + "\n" for row in rows).encode())

    def write_result(self, result: dict[str, Any]) -> None:
        write_json(self / RESULT, result)

    def clear_result(self) -> None:
        (self / RESULT).unlink(missing_ok=True)

    def write_failure(self, failure: dict[str, Any]) -> None:
        write_json(self / FAILURE, failure)


class TensorBoardLog:
    """Each epoch's metrics as TensorBoard scalars in RUN_DIR/tensorboard/ (`--tensorboard`;
    needs the tensorboard package: `pip install "wideresnet[tensorboard]"`)."""

    SCALARS = (
        "lr",
        "train_loss",
        "train_error",
        "test_loss",
        "test_error",
        "test_top5_error",
        "train_images_per_second",
    )

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                '--tensorboard needs the tensorboard package: pip install "wideresnet[tensorboard]"'
            ) from None
        self.writer = SummaryWriter(str(folder))

    def add(self, row: dict[str, Any]) -> None:
        for key in self.SCALARS:
            if row.get(key) is not None:
                self.writer.add_scalar(key, row[key], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
