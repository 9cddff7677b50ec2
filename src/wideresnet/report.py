"""`wrn report`: run directories -> the paper's tables, with the paper's number beside ours.

A run belongs to a cell (table, row, dataset column) by the `experiment` tag `wrn table run`
writes into its config; run directories copied from elsewhere report the same way. For each
cell: the paper's number, ours as the median over runs with min-max and the count, the
difference, parameters, epochs trained, wall time, and flags for anything that departs from
the paper's protocol (a shortened schedule, unfinished runs, data that is not the official
files, quick-evaluation options, changes made on resume).
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wideresnet.config import FIELDS, Config
from wideresnet.data.official import OFFICIAL
from wideresnet.errors import DataError
from wideresnet.experiments.plan import full_schedule
from wideresnet.experiments.registry import authors_log, get_table
from wideresnet.files import read_json
from wideresnet.recipes import make_config
from wideresnet.train.records import RECIPE_CHANGES, change_flag

TAG = re.compile(r"(?P<table>[\w.-]+)/(?P<row>[\w.,-]+)@(?P<column>[\w-]+)$")
# not compared with the paper's config: where the data lives, the seed, and options whose own
# flags (Config.flags) say how they depart from the protocol
NOT_PROTOCOL = {"data_dir", "dataset", "seed", "experiment", "verify", "init_from", "labels"}
NOT_PROTOCOL |= {"train_limit", "val_size", "eval_limit"}
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass
class RunRecord:
    path: Path
    table: str
    row: str
    column: str
    config: dict[str, Any]
    result: dict[str, Any] | None
    metrics: list[dict[str, Any]]

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def test_error(self) -> float | None:
        if self.result is not None:
            return self.result["test_error"]
        tested = [m["test_error"] for m in self.metrics if m.get("test_error") is not None]
        return tested[-1] if tested else None

    @property
    def epochs(self) -> int:
        return self.result["epochs"] if self.result else len(self.metrics)

    @property
    def device(self) -> str:
        """Where the run trained: "CPU", or the GPU's name."""
        environment = (self.result or {}).get("environment") or {}
        device = environment.get("device") or self.config.get("resolved", {}).get("device", "?")
        return "CPU" if device == "cpu" else environment.get("device_name") or device

    @property
    def wall_seconds(self) -> float:
        if self.result:
            return self.result["wall_seconds"]["total"]
        return sum(m.get("epoch_seconds") or 0.0 for m in self.metrics)


def _metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line of a killed run
    return rows


def collect(root: str | Path) -> list[RunRecord]:
    """Every run directory under root whose config names a table cell."""
    records = []
    for config_path in sorted(Path(root).rglob("config.json")):
        config = read_json(config_path)
        match = TAG.match(str((config or {}).get("experiment") or ""))
        if not match:
            continue
        result = read_json(config_path.parent / "result.json")
        metrics = _metrics(config_path.parent / "metrics.jsonl")
        groups = match.groupdict()
        records.append(
            RunRecord(config_path.parent, **groups, config=config, result=result, metrics=metrics)
        )
    if not records:
        raise DataError(
            f"{root}: no table runs found (run directories whose config.json has an "
            "experiment tag, as `wrn table run` makes them)"
        )
    return records


def deviations(record: RunRecord) -> list[str]:
    """How a run's config departs from the paper's for its cell."""
    row = get_table(record.table).row(record.row)
    preset = row.preset_for(record.column)
    planned = make_config(
        preset, {**row.config(record.column), "dataset": record.config["dataset"]}
    )
    if get_table(record.table).preprocess != "meanstd":
        planned = planned.replace(preprocess=get_table(record.table).preprocess)
    planned_values = planned.to_dict()
    epochs, milestones = full_schedule(preset)
    flags = []
    if record.config["epochs"] != epochs or tuple(record.config["milestones"]) != milestones:
        flags.append(
            f"shortened schedule: {record.config['epochs']} epochs at "
            f"{','.join(map(str, record.config['milestones']))} (the paper: {epochs} at "
            f"{','.join(map(str, milestones))})"
        )
    for key, value in record.config.items():
        if key in FIELDS and key not in NOT_PROTOCOL and key not in ("epochs", "milestones"):
            section = FIELDS[key].section
            if section in ("model", "data", "optim") and planned_values.get(key) != value:
                flags.append(f"{key}={value} (the paper: {planned_values.get(key)})")
    return flags


def _run_flags(record: RunRecord) -> list[str]:
    """The run's own flags (quick-evaluation options) and the recipe changes made on resume."""
    config = Config.from_dict({k: v for k, v in record.config.items() if k in FIELDS})
    changes = (record.result or {}).get("config_changes", [])
    return config.flags() + [change_flag(c) for c in changes if c["key"] in RECIPE_CHANGES]


def _authors_comparison(records: list[RunRecord], table: str, row: str, column: str):
    log = authors_log(table, row, column)
    ours = _median_curve(records, "test_error")
    if log is None or not ours:
        return None
    differences = [
        round(ours[epoch] - entry["test_error"], 2)
        for epoch, entry in enumerate(log, 1)
        if epoch in ours and ours[epoch] is not None
    ]
    if not differences:
        return None
    return {
        "epochs_compared": len(differences),
        "mean_difference": round(statistics.fmean(differences), 2),
        "mean_abs_difference": round(statistics.fmean(abs(d) for d in differences), 2),
        "per_epoch": differences,
    }


def _median_curve(records: list[RunRecord], key: str) -> dict[int, float | None]:
    by_epoch: dict[int, list[float]] = {}
    for record in records:
        for m in record.metrics:
            if m.get(key) is not None:
                by_epoch.setdefault(m["epoch"], []).append(m[key])
    return {epoch: statistics.median(values) for epoch, values in sorted(by_epoch.items())}


def cell(records: list[RunRecord]) -> dict[str, Any]:
    """One cell of a table from its runs (all of the same table, row, column and protocol)."""
    first = records[0]
    table, row = get_table(first.table), get_table(first.table).row(first.row)
    finished = [r for r in records if r.finished]
    used = finished or records
    errors = [r.test_error for r in used if r.test_error is not None]
    median = statistics.median(errors) if errors else None
    paper = row.paper.get(first.column)
    flags = sorted({flag for r in used for flag in deviations(r) + _run_flags(r)})
    if len(finished) < len(records):
        flags.append(f"unfinished: {len(records) - len(finished)} of {len(records)} runs")
    official = all(
        r.config["dataset"] in OFFICIAL and r.config.get("verify", True) for r in records
    )
    if not official:
        flags.append(f"data: {first.config['dataset']}, not the official {first.column} files")
    params = next((r.result["params"] for r in finished), None)
    return {
        "table": first.table,
        "id": first.row,
        "label": row.label or row.id,
        "dataset": first.column,
        "data": sorted({r.config["dataset"] for r in records}),
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
        "schedule_epochs": first.config["epochs"],
        "wall_seconds": statistics.median([r.wall_seconds for r in used]),
        "devices": sorted({r.device for r in used}),
        "shortened": any(f.startswith("shortened") for f in flags),
        "official_data": official,
        "flags": flags,
        "authors_log": _authors_comparison(used, first.table, first.row, first.column),
    }


def protocol(record: RunRecord) -> tuple:
    """What must be equal for runs to share a median: the schedule, the data and every
    deviation from the paper (a 3-epoch run and a 200-epoch run of a row are two lines)."""
    config = record.config
    flags = tuple(sorted(deviations(record) + _run_flags(record)))
    return (-config["epochs"], tuple(config["milestones"]), config["dataset"], flags)


def cells(records: list[RunRecord]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        key = (record.table, record.row, record.column, protocol(record))
        groups.setdefault(key, []).append(record)

    def order(key: tuple) -> tuple:
        table = get_table(key[0])
        rows = [r.id for r in table.rows]
        row = rows.index(key[1]) if key[1] in rows else 99
        return (key[0], row, table.columns.index(key[2]), key[3])

    return [cell(groups[key]) for key in sorted(groups, key=order)]


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def format_markdown(all_cells: list[dict[str, Any]]) -> str:
    lines = []
    for table_name in dict.fromkeys(c["table"] for c in all_cells):
        table = get_table(table_name)
        lines += [
            f"**{table.name}**: {table.title}. Paper: {table.statistic}; ours: median over our "
            "runs [min-max], test error (%) of the last epoch.",
            "",
            "| row | dataset | paper | ours | min-max | runs | diff | params | epochs | wall "
            "| device | flags |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for c in (c for c in all_cells if c["table"] == table_name):
            params = "-" if c["params"] is None else f"{c['params'] / 1e6:.2f}M"
            wall = f"{c['wall_seconds'] / 3600:.2f} h"
            epochs = f"{c['epochs']:g}/{c['schedule_epochs']}"
            lines.append(
                f"| {c['label']} | {c['dataset']} | {_number(c['paper'])} | "
                f"{_number(c['median'])} | {_number(c['min'])}-{_number(c['max'])} | "
                f"{c['finished']}/{c['runs']} | {_signed(c['difference'])} | {params} | "
                f"{epochs} | {wall} | {', '.join(c['devices'])} | {'; '.join(c['flags']) or '-'} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def format_csv(all_cells: list[dict[str, Any]]) -> str:
    keys = [k for k in all_cells[0] if k not in ("authors_log",)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for c in all_cells:
        writer.writerow({**c, "flags": "; ".join(c["flags"]), "data": " ".join(c["data"])})
    return buffer.getvalue()


def report(root: str | Path, fmt: str = "md") -> tuple[str, list[RunRecord], list[dict]]:
    """(the report text in md|csv|json, the runs, the cells)."""
    records = collect(root)
    all_cells = cells(records)
    if fmt == "json":
        text = json.dumps({"cells": all_cells}, indent=2) + "\n"
    elif fmt == "csv":
        text = format_csv(all_cells)
    else:
        text = format_markdown(all_cells)
    return text, records, all_cells


def replace_section(document: str, section: str) -> str:
    """document with the text between the results markers replaced by `section`."""
    start, end = document.find(RESULTS_START), document.find(RESULTS_END)
    if start < 0 or end < start:
        raise DataError(f"no {RESULTS_START} ... {RESULTS_END} markers to write between")
    return document[: start + len(RESULTS_START)] + "\n" + section + document[end:]
