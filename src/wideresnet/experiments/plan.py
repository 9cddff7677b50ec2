"""A table run as a list of ordinary `wrn train` runs: one run directory per (row, dataset,
seed), each with its command line, so that `wrn table run` and any scheduler running the
printed commands produce the same directories.

    EXP_DIR/<table>/<row>/<dataset>/seed<k>/      (dataset-as-column when they differ)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from wideresnet.errors import ConfigError
from wideresnet.experiments.grid import PATHS, table_named
from wideresnet.experiments.registry import PRESET_OF, TABLES, Table
from wideresnet.recipes import make_config
from wideresnet.tags import Tag
from wideresnet.train.rundir import RunDir, RunState


def full_schedule(preset: str) -> tuple[int, tuple[int, ...]]:
    """The preset's epochs and milestones."""
    optim = make_config(preset).optim
    return optim.epochs, optim.milestones


def scaled_schedule(preset: str, scale: float) -> tuple[int, tuple[int, ...]]:
    """The preset's epochs and milestones scaled by `scale` (200 at 60/120/160 by 0.1: 20 at
    6/12/16). A milestone never falls on the first epoch; ones that coincide are merged."""
    epochs, milestones = full_schedule(preset)
    scaled_epochs = max(1, round(epochs * scale))
    scaled = sorted({min(scaled_epochs, max(2, round(m * scale))) for m in milestones})
    return scaled_epochs, tuple(m for m in scaled if m <= scaled_epochs)


def column_of(dataset: str, paper_dataset: str | None, table: Table) -> str:
    """The table's column a run fills: the dataset itself when it is an official one, else
    what --paper-dataset says the data stands for; for a grid of one column, that column (its
    `datasets` entry names the recipe's column, not a paper's)."""
    if dataset in PRESET_OF:
        if paper_dataset not in (None, dataset):
            raise ConfigError(f"--paper-dataset {paper_dataset}: the data is {dataset} itself")
        return dataset
    grid = table.name not in TABLES
    if paper_dataset is None and grid and len(table.columns) == 1:
        return table.columns[0]
    if paper_dataset not in PRESET_OF:
        what = (
            f"which of the grid's datasets ({', '.join(table.columns)}) it stands for"
            if grid
            else "which column of the paper it stands for"
        )
        choices = table.columns if grid else PRESET_OF
        raise ConfigError(
            f"--dataset {dataset}: say {what} with --paper-dataset {'|'.join(choices)}"
        )
    return paper_dataset


def _flag(key: str, value) -> list[str]:
    option = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [option if value else "--no-" + key.replace("_", "-")]
    if isinstance(value, tuple | list):
        return [option, ",".join(map(str, value))]
    return [option, str(value)]


@dataclass(frozen=True)
class PlannedRun:
    table: str
    row: str
    dataset: str
    column: str
    seed: int
    run_dir: Path
    preset: str
    values: dict = field(hash=False)  # flat config values given on the command line
    extra: dict = field(default_factory=dict, hash=False)  # more train options (after --)

    @property
    def tag(self) -> Tag:
        return Tag(self.table, self.row, self.column)

    @property
    def state(self) -> RunState:
        return RunDir(self.run_dir).status()

    def train_args(self) -> list[str]:
        args = ["train", "--preset", self.preset]
        for key, value in {**self.values, **self.extra}.items():
            args += _flag(key, value)
        return [*args, "--out", str(self.run_dir)]

    def args(self) -> list[str]:
        """What to run now: resume a stopped run, else start (replacing a run that failed
        before its first checkpoint)."""
        run_dir = RunDir(self.run_dir)
        if run_dir.status() in (RunState.STOPPED, RunState.FAILED) and run_dir.resumable:
            return ["train", "--resume", str(self.run_dir)]
        return self.train_args() + (["--overwrite"] if self.run_dir.exists() else [])

    def command(self) -> str:
        return shlex.join(["wrn", *self.args()])

    def departures(self) -> list[str]:
        """The table's or row's options (as the train options after -- override them) that
        this run's recorded config does not have: a run made under other options, whose result
        is not the row's. Other train options (--device, ...) and the data's path may differ
        from one command to the next."""
        config = RunDir(self.run_dir).config() if self.run_dir.is_dir() else None
        found = []
        for key, value in self.values.items():
            if not config or key not in config or key == "data_dir":
                continue
            value = self.extra.get(key, value)
            wanted = list(value) if isinstance(value, tuple) else value
            if config[key] != wanted:
                found.append(f"{key}={config[key]!r} (the row now: {wanted!r})")
        return found


def plan(
    table_name: str | Table,
    dataset: str | None,
    data_dir: str | None,
    out: str | Path,
    *,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    epochs: int | None = None,
    scale: float | None = None,
    paper_dataset: str | None = None,
    extra: dict | None = None,
) -> list[PlannedRun]:
    """Every run of a table (a paper table's name, or a grid's Table) on one dataset (for a
    grid, None: each of its columns on its official data), each validated as `wrn train`
    would."""
    table = table_name if isinstance(table_name, Table) else table_named(table_name)
    if not table.runnable:
        raise ConfigError(f"{table.name} cannot be run: {table.note}")
    if dataset is None and table.name in TABLES:
        raise ConfigError(f"--dataset: which of {', '.join(table.columns)} to run {table.name} on")
    chosen = [table.row(r) for r in rows] if rows else [r for r in table.rows if r.model]
    unbuilt = [r.id for r in chosen if r.model is None]
    if unbuilt:
        raise ConfigError(f"{table.name} row {unbuilt[0]}: a network not built here")
    runs = []
    for name in [dataset] if dataset else list(table.columns):
        column = column_of(name, paper_dataset, table)
        if column not in table.columns:
            raise ConfigError(
                f"{table.name} has no {column} column (it has {', '.join(table.columns)})"
            )
        for row in chosen:
            for seed in seeds or [0]:
                runs.append(_planned(table, row, name, column, seed, data_dir, out, epochs, scale))
    for run in runs:
        run.extra.update(extra or {})
    _validate(runs)
    return runs


def _planned(table, row, dataset, column, seed, data_dir, out, epochs, scale) -> PlannedRun:
    preset = row.preset_for(column)
    values = {**table.values_for(row, column), "dataset": dataset, "seed": seed}
    values.update(_schedule(preset, epochs, scale))
    if data_dir is not None:
        values["data_dir"] = str(Path(data_dir).expanduser().absolute())
    values["experiment"] = str(Tag(table.name, row.id, column))
    folder = dataset if dataset == column else f"{dataset}-as-{column}"
    run_dir = Path(out).absolute() / table.name / row.id / folder / f"seed{seed}"
    return PlannedRun(table.name, row.id, dataset, column, seed, run_dir, preset, values)


def _schedule(preset: str, epochs: int | None, scale: float | None) -> dict:
    if epochs is not None and scale is not None:
        raise ConfigError("give --epochs or --schedule-scale, not both")
    if epochs is not None:
        scale = epochs / full_schedule(preset)[0]
    if scale is None:
        return {}
    if not 0 < scale <= 1:
        raise ConfigError(f"--schedule-scale must be in (0, 1], not {scale}")
    scaled_epochs, milestones = scaled_schedule(preset, scale)
    return {"epochs": scaled_epochs, "milestones": milestones}


def _validate(runs: list[PlannedRun]) -> None:
    """Every run's options, checked as `wrn train` checks them, before anything runs."""
    for run in runs:
        values = {**run.values, **run.extra}
        make_config(run.preset, values)
        for key in PATHS:  # files the runs read: there before any starts
            if values.get(key) and not Path(str(values[key])).exists():
                where = f"{run.table} row {run.row}"
                raise ConfigError(f"{where}: {key} {values[key]}: no such run directory or file")
