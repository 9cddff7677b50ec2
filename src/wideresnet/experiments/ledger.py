"""The ledger (results/): the small files of table runs actually made, never checkpoints,
with where they came from."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from wideresnet.errors import RunError
from wideresnet.experiments import figure4
from wideresnet.experiments.grid import FOLDER as GRIDS
from wideresnet.experiments.runner import TABLE_RUNS
from wideresnet.files import atomic_write, write_json
from wideresnet.report import collect
from wideresnet.train.environment import git_commit
from wideresnet.train.rundir import RECORD_FILES


def _copy(source: Path, target: Path) -> None:
    atomic_write(target, source.read_bytes())
    shutil.copystat(source, target)


def save_ledger(exp_dir: str | Path, to: str | Path) -> dict[str, Any]:
    """Copy the small files of every run of a table run (config, metrics, result, failure)
    into `to`, with a provenance record (when, from where, the commit); returns it."""
    source, target = Path(exp_dir), Path(to)
    if target.exists() and any(target.iterdir()):
        raise RunError(f"--to {target}: not empty; choose a new folder for this batch of runs")
    timings = sorted(source.rglob(f"{figure4.NAME}/*.json"))
    records = collect(source, timings=bool(timings))
    for record in records:
        folder = target / record.path.relative_to(source)
        for name in RECORD_FILES:
            if (record.path / name).is_file():
                _copy(record.path / name, folder / name)
    if (source / TABLE_RUNS).is_file():
        _copy(source / TABLE_RUNS, target / TABLE_RUNS)
    for grid in sorted((source / GRIDS).glob("*.toml")):  # the grid files the runs came from
        _copy(grid, target / GRIDS / grid.name)
    for timing in timings:  # Figure 4's records, each read as one first
        figure4.read_record(timing)
        _copy(timing, target / timing.relative_to(source))
    provenance = {
        "saved": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "from": str(source.absolute()),
        "commit": git_commit(),
        "runs": len(records),
        "figure4": [str(t.relative_to(source)) for t in timings],
        "finished": sum(r.finished for r in records),
    }
    write_json(target / "provenance.json", provenance)
    return provenance
