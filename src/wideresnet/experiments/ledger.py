"""The ledger (results/): the small files of table runs actually made, never checkpoints,
with where they came from."""

from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path
from typing import Any

from wideresnet.errors import RunError
from wideresnet.experiments import figure4
from wideresnet.experiments.expdir import TABLE_RUNS
from wideresnet.experiments.grid import FOLDER as GRIDS
from wideresnet.files import atomic_write, write_json
from wideresnet.report import collect
from wideresnet.train.environment import git_commit
from wideresnet.train.rundir import CONFIG, RECORD_FILES

LARGEST = 64 << 20  # bytes: a run's records are small; anything larger is not one


def _checked(source: Path) -> Path:
    """A run's own small file: not a link (the ledger is committed: a link could bring in
    anything it names), a regular file, at most LARGEST bytes; RunError naming it otherwise."""
    if source.is_symlink():
        raise RunError(f"{source}: a link; the ledger copies only a run's own files")
    info = source.stat()
    if not stat.S_ISREG(info.st_mode) or info.st_size > LARGEST:
        size = f"{info.st_size:,} bytes" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise RunError(f"{source}: {size}; the ledger takes small regular files only")
    return source


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
    for config in source.rglob(CONFIG):  # before any is read: a link is refused, not followed
        for name in RECORD_FILES:
            if (config.parent / name).exists() or (config.parent / name).is_symlink():
                _checked(config.parent / name)
    records = collect(source, timings=bool(timings))
    runs = [  # their records were checked above, before collect read them
        record.path / name
        for record in records
        for name in RECORD_FILES
        if (record.path / name).exists() or (record.path / name).is_symlink()
    ]
    others = [source / TABLE_RUNS] if (source / TABLE_RUNS).exists() else []
    others += sorted((source / GRIDS).glob("*.toml"))  # the grid files the runs came from
    for path in [*others, *timings]:  # every file checked before any is copied
        _checked(path)
    for timing in timings:  # Figure 4's records, each read as one
        figure4.read_record(timing)
    for path in [*runs, *others, *timings]:
        _copy(path, target / path.relative_to(source))
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
