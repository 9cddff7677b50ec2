"""Your own tables: a grid file of rows, dataset columns and seeds that runs, reports and plots
as the paper's tables do (`wrn table run|show grid.toml`, `wrn report`).

    name = "lr-sweep"                  # the table's name (default: the file's, without .toml)
    title = "WRN-16-4 at three learning rates"
    seeds = [0, 1, 2]
    datasets = ["cifar10"]             # the paper columns (cifar10 cifar100 svhn imagenet)
    preset = "cifar"                   # optional: by column (cifar, svhn, imagenet)

    [base]                             # every run's `wrn train` options (flat names)
    model = "wrn-16-4"
    epochs = 30
    milestones = [9, 18, 24]

    [[rows]]
    id = "lr-0.1"                      # path-safe: a run directory's name
    lr = 0.1                           # this row's own options, over [base]
    published = { cifar10 = 4.9 }      # optional: the number to compare against
    # init-from, teacher: paths relative to this file

Data other than the official sets fills a column (`--dataset folder --data-dir DIR`): the
grid's one column, or the one --paper-dataset names where it has several.

`wrn table run grid.toml --out EXP` copies the file into EXP/tables/, where `wrn report EXP`
(and the ledger) find it again.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wideresnet.config import ModelConfig
from wideresnet.errors import ConfigError, ModelNameError, RunError
from wideresnet.experiments.registry import PRESET_OF, TABLES, Row, Table, get_table
from wideresnet.files import atomic_write, read_text
from wideresnet.models import create_model
from wideresnet.recipes import MODEL_OPTIONS, make_config

KEYS = {"name", "title", "preset", "datasets", "seeds", "base", "rows", "statistic"}
ROW_KEYS = {"id", "published", "label", "note"}  # the rest of a row: its options
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a folder name: 100 characters
SAFE_RULE = "letters, digits, '.', '_' or '-' (not first), at most 100 characters"
MAX_ROWS = 1000  # rows of one grid file: each row is a run per seed and dataset
GRID_LIMIT = 1 << 20  # bytes of a grid file
FOLDER = "tables"  # EXP_DIR/tables/NAME.toml: the grids an experiment ran
PATHS = ("init_from", "teacher")  # options that name a file: relative to the grid file


@dataclass(frozen=True)
class Grid:
    table: Table
    seeds: tuple[int, ...]
    path: Path
    text: str


def table_named(name: str) -> Table:
    """`wrn table run|show NAME`: a paper table, or the table of a grid file (NAME.toml)."""
    return load_grid(name).table if name.endswith(".toml") else get_table(name)


def load_grid(path: str | Path) -> Grid:
    """The grid in a TOML file, every row checked as `wrn train` checks its options;
    ConfigError naming the file, row and option."""
    path = Path(path)
    try:
        text = read_text(path, "grid file", GRID_LIMIT)
        data = tomllib.loads(text)
    except RunError as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise ConfigError(f"{path}: cannot read the grid file ({reason})") from None
    except ValueError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
    return _parse(path, data, text)


def _parse(path: Path, data: dict[str, Any], text: str) -> Grid:
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{path}: {message}")

    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (a grid has {', '.join(sorted(KEYS))})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not SAFE_ID.fullmatch(name):
        raise fail(f"name {_shown(name)}: {SAFE_RULE}")
    if name in TABLES:
        raise fail(f"name {name!r} is one of the paper's tables; choose another")
    columns = data.get("datasets", ["cifar10"])
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise fail(f'datasets {columns!r}: a list of paper columns, e.g. ["cifar10"]')
    for column in columns:
        if column not in PRESET_OF:
            raise fail(
                f"datasets: {column!r} is not a column (one of {', '.join(PRESET_OF)}; "
                "train on other data with --dataset/--data-dir --paper-dataset COLUMN)"
            )
    if "seeds" not in data:
        raise fail("no seeds (e.g. seeds = [0, 1, 2])")
    seeds = data["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise fail(f"seeds {seeds!r}: a list of whole numbers >= 0")
    preset = data.get("preset")
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise fail("[base] must be a table of `wrn train` options")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise fail("no rows (each row: [[rows]] with an id and its options)")
    if len(rows) > MAX_ROWS:
        raise fail(f"{len(rows):,} rows; a grid has at most {MAX_ROWS:,} (split it into files)")
    built, seen = [], set()
    for number, row in enumerate(rows, 1):
        built.append(_row(fail, row, number, base, preset, columns, seen, path.parent))
    title = data.get("title", name)
    statistic = data.get("statistic", "as the grid file gives them")
    table = Table(name, str(title), tuple(built), tuple(columns), statistic=str(statistic))
    return Grid(table, tuple(seeds), path, text)


def _row(fail, row: dict, number: int, base: dict, preset, columns, seen: set, folder: Path) -> Row:
    row_id = row.get("id")
    if not isinstance(row_id, str) or not SAFE_ID.fullmatch(row_id):
        raise fail(f"row {number}: id {_shown(row_id)}: {SAFE_RULE}")
    if row_id in seen:
        raise fail(f"row {row_id!r}: a second row with this id")
    seen.add(row_id)
    where = f"row {row_id!r}"
    options = {k: v for k, v in row.items() if k not in ROW_KEYS}
    published = row.get("published", {})
    if not isinstance(published, dict):
        raise fail(f"{where}: published must be a table, e.g. {{ cifar10 = 5.02 }}")
    values = {str(k).replace("-", "_"): v for k, v in {**base, **options}.items()}
    for reserved in ("dataset", "data_dir", "seed", "experiment", "out"):
        if reserved in values:
            raise fail(f"{where}: option {reserved!r} is set by `wrn table run`, not the grid")
    if "model" not in values:
        raise fail(f"{where}: no model (give it in [base] or in the row)")
    for key in PATHS:  # a path in the file is relative to the file
        if isinstance(values.get(key), str):
            values[key] = str((folder / Path(values[key]).expanduser()).absolute())
    try:
        for column in columns:
            make_config(preset or PRESET_OF[column], values)
        with torch.device("meta"):  # the name checked by building it, without its weights
            create_model(str(values["model"]), 10)
    except (ConfigError, ModelNameError) as error:
        raise fail(f"{where}: {error}") from None
    for column, number_given in published.items():
        if column not in columns:
            raise fail(f"{where}: published {column!r} is not one of the datasets")
        if not isinstance(number_given, int | float) or isinstance(number_given, bool):
            raise fail(f"{where}: published {column} = {number_given!r} is not a number")
        if not math.isfinite(number_given):
            raise fail(f"{where}: published {column} = {number_given!r} is not a finite number")
    flat = {k.replace("-", "_"): v for k, v in values.items() if k != "model"}
    architecture = set(MODEL_OPTIONS) - set(ModelConfig.NOT_ARCHITECTURE)
    model_options = {k: _tuple(v) for k, v in flat.items() if k in architecture}
    settings = {k: _tuple(v) for k, v in flat.items() if k not in architecture}
    return Row(
        row_id,
        str(values["model"]),
        {c: (float(published[c]) if c in published else None) for c in columns},
        None,
        model_options,
        label=str(row.get("label", row_id)),
        note=str(row.get("note", "")),
        preset=preset,
        settings=settings,
    )


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... ({len(str(value))} characters)"


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def keep_in(grid: Grid, exp_dir: Path) -> Path:
    """A copy of the grid file in EXP_DIR/tables/, for `wrn report EXP` (and the ledger)."""
    target = Path(exp_dir) / FOLDER / f"{grid.table.name}.toml"
    if not target.is_file() or target.read_text() != grid.text:
        atomic_write(target, grid.text.encode())
    return target


def load_grids_in(root: Path) -> tuple[dict[str, Table], list[str]]:
    """The grids kept under root (EXP_DIR/tables/*.toml) by their tables' names, and the
    problems of any that no longer read, for the report to warn about."""
    grids: dict[str, Table] = {}
    paths: dict[str, Path] = {}
    problems = []
    for path in sorted(root.rglob(f"{FOLDER}/*.toml")):
        try:
            table = load_grid(path).table
        except ConfigError as error:
            problems.append(str(error))
            continue
        if table.name in grids and grids[table.name] != table:
            problems.append(
                f"{path}: a second grid named {table.name!r}, other than {paths[table.name]}; "
                "its runs are reported by the first"
            )
            continue
        grids[table.name], paths[table.name] = table, path
    return grids, problems
