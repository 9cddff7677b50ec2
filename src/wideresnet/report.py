"""`wrn report`: run directories -> the paper's tables, with the paper's number beside ours.

A run belongs to a cell (table, row, dataset column) by the `experiment` tag `wrn table run`
writes into its config; run directories copied from elsewhere report the same way. For each
cell: the paper's number, ours as the median over runs with min-max and the count, the
difference, parameters, epochs trained, wall time, and flags for anything that departs from
the paper's protocol (a shortened schedule, unfinished runs, data that is not the official
files, quick-evaluation options, changes made on resume).

Beside the paper's statistic (the median over seeds, the one compared with the paper's number)
each cell has the mean and standard deviation over seeds (distillation papers), and on request
each seed's error, the mean of the last K tested epochs (FixMatch, USB) and, for runs that
validated on held-out images (--val-and-test), the test error at the epoch of best validation
error (robust-training papers). Figure 4's timings (experiments/figure4.py) are reported from
the same folder.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wideresnet import stats
from wideresnet.config import FIELDS, Config
from wideresnet.data.official import OFFICIAL
from wideresnet.errors import ConfigError, DataError, RunError
from wideresnet.experiments import figure4
from wideresnet.experiments.grid import load_grids_in
from wideresnet.experiments.registry import Table, authors_log, get_table
from wideresnet.files import rewrite_in_place
from wideresnet.protocol import NOT_PROTOCOL, ConfigChange, result_flags
from wideresnet.stats import Statistics
from wideresnet.tags import Tag
from wideresnet.train.records import MetricsRow, Result
from wideresnet.train.rundir import CONFIG, METRICS, RunDir

log = logging.getLogger(__name__)

RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass
class RunRecord:
    """One run of a table cell, as its run directory records it."""

    path: Path
    tag: Tag
    config: Config
    resolved: dict[str, Any]
    result: Result | None
    metrics: list[MetricsRow]
    table: Table  # the paper's table or the grid of its tag

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def test_error(self) -> float | None:
        if self.result is not None:
            return self.result.test_error
        tested = [m.test_error for m in self.metrics if m.test_error is not None]
        return tested[-1] if tested else None

    @property
    def epochs(self) -> int:
        return self.result.epochs if self.result else len(self.metrics)

    @property
    def device(self) -> str:
        """Where the run trained: "CPU", or the GPU's name."""
        environment = self.result.environment if self.result else {}
        device = environment.get("device") or self.resolved.get("device", "?")
        return "CPU" if device == "cpu" else environment.get("device_name") or device

    @property
    def wall_seconds(self) -> float:
        if self.result:
            return self.result.total_seconds
        return sum(m.epoch_seconds for m in self.metrics)

    @property
    def changes(self) -> list[ConfigChange]:
        recorded = self.result.config_changes if self.result else []
        return [ConfigChange.from_dict(c) for c in recorded if isinstance(c, dict)]


RECORDED = ("model", "dataset", "epochs", "seed")  # in every run's config.json (0.1 onwards)


def read_record(run_dir: RunDir, grids: dict[str, Table] | None = None) -> RunRecord | None:
    """The run's record when its config names a table cell (None otherwise; `grids`: the
    user's tables it may name); RunError naming the file when its config, result or tag does
    not read as one."""
    recorded = run_dir.config()
    if recorded is None:
        raise RunError(f"{run_dir / CONFIG}: not the config.json of a run (unreadable)")
    tag = Tag.parse(recorded.get("experiment"))
    if tag is None:
        return None
    missing = [key for key in RECORDED if key not in recorded]
    if missing:
        raise RunError(f"{run_dir / CONFIG}: no {', '.join(missing)}; not a run's config.json")
    options = {k: v for k, v in recorded.items() if k in FIELDS}
    try:
        config = Config.from_dict(options)
        table = get_table(tag.table, grids)
        table.row(tag.row)
        if tag.column not in table.columns:
            raise ConfigError(f"{tag.table} has no column {tag.column!r}")
    except ConfigError as error:
        raise RunError(f"{run_dir / CONFIG}: {error}") from None
    resolved = recorded.get("resolved") if isinstance(recorded.get("resolved"), dict) else {}
    metrics, bad = run_dir.read_metrics()
    if bad:
        lines = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        log.warning(
            f"{run_dir / METRICS}: line {lines} not an epoch record; its curve leaves them out"
        )
    return RunRecord(run_dir.path, tag, config, resolved, run_dir.result(), metrics, table)


def collect(root: str | Path, *, timings: bool = False) -> list[RunRecord]:
    """Every run directory under root whose config names a table cell; a run whose files do
    not read is left out with a warning naming it, and the rest are reported. `timings`: a
    folder with Figure 4 records and no runs is not an error."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such experiment folder")
    grids, problems = load_grids_in(root)  # the grids this experiment ran (EXP/tables/)
    for problem in problems:
        log.warning(f"left out of the report: {problem}")
    records = []
    for config_path in sorted(root.rglob(CONFIG)):
        try:
            record = read_record(RunDir(config_path.parent), grids)
        except RunError as error:
            log.warning(f"left out of the report: {error}")
            continue
        if record is not None:
            records.append(record)
    if not records and not timings:
        raise DataError(
            f"{root}: no table runs found (run directories whose config.json has an "
            "experiment tag, as `wrn table run` makes them) and no Figure 4 timings"
        )
    return records


def deviations(record: RunRecord) -> list[str]:
    """How a run's config departs from the paper's for its cell."""
    tag, table = record.tag, record.table
    planned = table.config_for(table.row(tag.row), tag.column, record.config.data.dataset)
    ours, paper = record.config.optim, planned.optim
    flags = []
    if (ours.epochs, ours.milestones) != (paper.epochs, paper.milestones):
        flags.append(
            f"shortened schedule: {ours.epochs} epochs at "
            f"{','.join(map(str, ours.milestones))} (the paper: {paper.epochs} at "
            f"{','.join(map(str, paper.milestones))})"
        )
    planned_values, values = planned.to_dict(), record.config.to_dict()
    for key, value in values.items():
        if key in NOT_PROTOCOL or key in ("epochs", "milestones"):
            continue
        if FIELDS[key].section != "runtime" and planned_values[key] != value:
            flags.append(f"{key}={value} (the paper: {planned_values[key]})")
    return flags


def _flags(record: RunRecord) -> list[str]:
    """Every flag of a run: its departures from the cell's config, its own options and the
    recipe changes made on resume."""
    return deviations(record) + result_flags(record.config, record.changes)


def _authors_comparison(records: list[RunRecord], tag: Tag):
    log_rows = authors_log(tag.table, tag.row, tag.column)
    ours = median_curve(records, "test_error")
    if log_rows is None or not ours:
        return None
    differences = [
        round(ours[epoch] - entry["test_error"], 2)
        for epoch, entry in enumerate(log_rows, 1)
        if epoch in ours
    ]
    if not differences:
        return None
    return {
        "epochs_compared": len(differences),
        "mean_difference": round(statistics.fmean(differences), 2),
        "mean_abs_difference": round(statistics.fmean(abs(d) for d in differences), 2),
        "per_epoch": differences,
    }


def median_curve(records: list[RunRecord], key: str) -> dict[int, float]:
    """The median over runs of a metric, per epoch (epochs where any run measured it)."""
    by_epoch: dict[int, list[float]] = {}
    for record in records:
        for row in record.metrics:
            value = getattr(row, key)
            if value is not None:
                by_epoch.setdefault(row.epoch, []).append(value)
    return {epoch: statistics.median(values) for epoch, values in sorted(by_epoch.items())}


def cell(records: list[RunRecord], chosen: Statistics = Statistics()) -> dict[str, Any]:
    """One cell of a table from its runs (all of the same table, row, column and protocol)."""
    first = records[0]
    tag, table = first.tag, first.table
    row = table.row(tag.row)
    finished = [r for r in records if r.finished]
    used = finished or records
    errors = [r.test_error for r in used if r.test_error is not None]
    median = statistics.median(errors) if errors else None
    paper = row.paper.get(tag.column)
    flags = sorted({flag for r in used for flag in _flags(r)})
    if len(finished) < len(records):
        flags.append(f"unfinished: {len(records) - len(finished)} of {len(records)} runs")
    datasets = sorted({r.config.data.dataset for r in records})
    official = all(r.config.data.dataset in OFFICIAL and r.config.data.verify for r in records)
    if not official:
        flags.append(f"data: {first.config.data.dataset}, not the official {tag.column} files")
    params = next((r.result.params for r in finished if r.result), None)
    return {
        "table": tag.table,
        "id": tag.row,
        "label": row.label or row.id,
        "dataset": tag.column,
        "data": datasets,
        "paper": paper,
        "paper_statistic": table.statistic,
        "median": median,
        "min": min(errors) if errors else None,
        "max": max(errors) if errors else None,
        "runs": len(records),
        "finished": len(finished),
        "difference": None if median is None or paper is None else round(median - paper, 2),
        "params": params,
        "paper_params": row.paper_params,
        "epochs": statistics.median([r.epochs for r in used]),
        "schedule_epochs": first.config.optim.epochs,
        "wall_seconds": statistics.median([r.wall_seconds for r in used]),
        "devices": sorted({r.device for r in used}),
        "shortened": any(f.startswith("shortened") for f in flags),
        "official_data": official,
        "flags": flags,
        "authors_log": _authors_comparison(used, tag),
        **stats.other_statistics(used, chosen),
    }


def protocol(record: RunRecord) -> tuple:
    """What must be equal for runs to share a median: the schedule, the data and every
    deviation from the paper (a 3-epoch run and a 200-epoch run of a row are two lines)."""
    optim = record.config.optim
    flags = tuple(sorted(_flags(record)))
    return (-optim.epochs, optim.milestones, record.config.data.dataset, flags)


def tables_of(records: list[RunRecord]) -> dict[str, Table]:
    """The tables of the records, by name."""
    return {record.tag.table: record.table for record in records}


def cells(records: list[RunRecord], chosen: Statistics = Statistics()) -> list[dict[str, Any]]:
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        tag = record.tag
        groups.setdefault((tag.table, tag.row, tag.column, protocol(record)), []).append(record)

    tables = tables_of(records)

    def order(key: tuple) -> tuple:
        table = tables[key[0]]
        rows = [r.id for r in table.rows]
        return (key[0], rows.index(key[1]), table.columns.index(key[2]), key[3])

    return [cell(groups[key], chosen) for key in sorted(groups, key=order)]


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def format_markdown(
    all_cells: list[dict[str, Any]],
    chosen: Statistics = Statistics(),
    timings: list[figure4.Record] = (),
    tables: dict[str, Table] | None = None,
) -> str:
    """The cells as markdown tables; `tables`: the grids among them, by name."""
    lines = []
    for table_name in dict.fromkeys(c["table"] for c in all_cells):
        table = get_table(table_name, tables)
        table_cells = [c for c in all_cells if c["table"] == table_name]
        extra = stats.columns(table_cells, chosen)
        lines += [
            f"**{table.name}**: {table.title}. Paper: {table.statistic}; ours: median over our "
            "runs [min-max], test error (%) of the last epoch; mean ± sample std over seeds.",
            "",
            "| row | dataset | paper | ours | min-max | runs | diff | "
            + "".join(f"{header} | " for header, _ in extra)
            + "params | epochs | wall | device | flags |",
            "|---|---|---:|---:|---|---:|---:|" + "---:|" * len(extra) + "---:|---:|---:|---|---|",
        ]
        for c in table_cells:
            params = "-" if c["params"] is None else f"{c['params'] / 1e6:.2f}M"
            wall = f"{c['wall_seconds'] / 3600:.2f} h"
            epochs = f"{c['epochs']:g}/{c['schedule_epochs']}"
            lines.append(
                f"| {c['label']} | {c['dataset']} | {_number(c['paper'])} | "
                f"{_number(c['median'])} | {_number(c['min'])}-{_number(c['max'])} | "
                f"{c['finished']}/{c['runs']} | {_signed(c['difference'])} | "
                + "".join(f"{text(c)} | " for _, text in extra)
                + f"{params} | {epochs} | {wall} | {', '.join(c['devices'])} | "
                f"{'; '.join(c['flags']) or '-'} |"
            )
        lines.append("")
    for record in timings:
        lines += figure4.markdown(record)
    return "\n".join(lines).rstrip() + "\n"


def _csv_cell(c: dict[str, Any]) -> dict[str, Any]:
    flat = {**c, "flags": "; ".join(c["flags"]), "data": " ".join(c["data"])}
    flat["per_seed"] = stats.seeds_text(c)
    for key in ("last_k", "val_selected"):
        values = c.get(key) or {}
        flat[f"{key}_mean"], flat[f"{key}_std"] = values.get("mean"), values.get("std")
    return flat


def format_csv(all_cells: list[dict[str, Any]], timings: list[figure4.Record] = ()) -> str:
    """The cells as one CSV table; Figure 4's rows as a second, after a blank line."""
    buffer = io.StringIO()
    if all_cells:
        skip = ("authors_log", "last_k", "val_selected")
        keys = [k for k in all_cells[0] if k not in skip]
        keys += ["last_k_mean", "last_k_std", "val_selected_mean", "val_selected_std"]
        writer = csv.DictWriter(buffer, keys, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for c in all_cells:
            writer.writerow(_csv_cell(c))
    for record in timings:
        buffer.write("\n" if buffer.tell() else "")
        keys = ["device_name", "id", "label", "paper_ms", "paper_ratio", "paper_error"]
        keys += ["default_setting", "default_ms", "default_ratio", "fp32_ms", "fp32_ratio"]
        writer = csv.DictWriter(buffer, keys, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in figure4.figure_rows(record):
            times = {f"{s}_ms": (r[s] or {}).get("median_ms") for s in figure4.SETTINGS}
            setting = (r["default"] or {}).get("setting")
            writer.writerow(
                {**r, **times, "device_name": record.device_name, "default_setting": setting}
            )
    return buffer.getvalue()


@dataclass
class Report:
    text: str  # md, csv or json
    records: list[RunRecord]
    cells: list[dict[str, Any]]
    timings: list[figure4.Record]


def report(root: str | Path, fmt: str = "md", chosen: Statistics = Statistics()) -> Report:
    """The report of an experiment folder in md|csv|json: its table cells and Figure 4."""
    if chosen.last_k is not None and chosen.last_k < 1:
        raise ConfigError(f"--last-k {chosen.last_k}: at least 1 epoch")
    timings, problems = figure4.collect_figure4(Path(root)) if Path(root).is_dir() else ([], [])
    try:
        records = collect(root, timings=bool(timings))
    except DataError:
        if problems:  # nothing else to report: the damaged record is the one problem
            raise RunError(problems[0]) from None
        raise
    for problem in problems:
        log.warning(f"left out of the report: {problem}")
    all_cells = cells(records, chosen)
    if fmt == "json":
        figures = [figure4.as_json(record) for record in timings]
        text = json.dumps({"cells": all_cells, "figure4": figures}, indent=2) + "\n"
    elif fmt == "csv":
        text = format_csv(all_cells, timings)
    else:
        text = format_markdown(all_cells, chosen, timings, tables_of(records))
    return Report(text, records, all_cells, timings)


def write_into(path: str | Path, section: str) -> None:
    """Rewrite the results section of a file (a README) in place: its mode, hard links and,
    through a symlink, the file the link names are kept."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--into {path}: a directory, not a file")
    try:
        document = path.read_text()
    except FileNotFoundError:
        raise DataError(f"--into {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"--into {path}: unreadable ({error})") from None
    rewrite_in_place(path, replace_section(document, section).encode())


def replace_section(document: str, section: str) -> str:
    """document with the text between the results markers replaced by `section`."""
    start, end = document.find(RESULTS_START), document.find(RESULTS_END)
    if start < 0 or end < start:
        raise DataError(f"no {RESULTS_START} ... {RESULTS_END} markers to write between")
    return document[: start + len(RESULTS_START)] + "\n" + section + document[end:]
