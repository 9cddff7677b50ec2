"""`wrn table list|show`: the tables, their rows, the paper's numbers beside the parameters we
build, and what running a table would cost."""

from __future__ import annotations

from typing import Any

import torch

from wideresnet.experiments import figure4
from wideresnet.experiments.cost import GPU_ASSUMES, cpu_rate, run_cost
from wideresnet.experiments.grid import table_named
from wideresnet.experiments.registry import TABLES, Row, Table
from wideresnet.models import create_model, model_summary
from wideresnet.recipes import make_config

CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10, "imagenet": 1000}


def list_tables() -> list[dict[str, Any]]:
    tables = [
        {
            "table": t.name,
            "title": t.title,
            "rows": len(t.rows),
            "columns": list(t.columns),
            "runnable": t.runnable,
        }
        for t in TABLES.values()
    ]
    timing = {"rows": len(figure4.BARS), "columns": ["ms"], "runnable": True}
    return tables + [{"table": figure4.NAME, "title": figure4.TITLE, **timing}]


def params_match(built: int, printed: float | None) -> bool | None:
    """Our count equals the printed one at the paper's rounding (0.1M); None: nothing printed."""
    return None if printed is None else round(built / 1e6, 1) == printed


def describe_row(table: Table, row: Row) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": row.id,
        "label": row.label or row.id,
        "model": row.model,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in row.options.items()},
        "dropout": row.dropout,
        "paper": row.paper,
        "paper_params": row.paper_params,
        "note": row.note,
        "params_note": row.params_note,
    }
    if row.model is None:
        return {**entry, "params": None, "macs": None, "params_match": None, "cost": {}}
    with torch.device("meta"):  # shapes alone: parameters and MACs without building weights
        model = create_model(row.model, CLASSES[table.columns[0]], **row.options)
    summary = model_summary(model)
    epochs = row.settings.get("epochs")  # a grid's own schedule, a row's preset's, the paper's
    if epochs is None and row.preset:
        epochs = make_config(row.preset).optim.epochs
    costs = {column: run_cost(summary["macs"], column, epochs) for column in table.columns}
    return {
        **entry,
        "params": summary["params"],
        "macs": summary["macs"],
        "params_match": params_match(summary["params"], row.paper_params),
        "cost": costs,
    }


def describe_table(name: str) -> dict[str, Any]:
    """The table's rows (as `wrn table show --json` prints them) and its estimated cost."""
    table = table_named(name)
    rows = [describe_row(table, row) for row in table.rows]
    totals = {
        column: {
            unit: sum(r["cost"][column][unit] for r in rows if r["cost"])
            for unit in ("cpu_hours", "gpu_hours")
        }
        for column in table.columns
    }
    return {
        "table": table.name,
        "title": table.title,
        "columns": list(table.columns),
        "preprocess": table.preprocess,
        "statistic": table.statistic,
        "runnable": table.runnable,
        "note": table.note,
        "rows": rows,
        "cost": {
            "per_run_of_each_row": totals,
            "assumes": [
                "each row's epochs (its preset's full schedule, or a grid's own), "
                "one run (seed) per row and column; the paper's statistics take 5",
                "multiply-accumulates counted by running each network, x3 for a training image",
                cpu_rate()[1],
                GPU_ASSUMES,
            ],
        },
    }
