"""The verbs for the paper's tables: `wrn table list|show|run|save` and `wrn report`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wideresnet.cli.parser import parse_train_options


def _csv(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def cmd_table(args: argparse.Namespace) -> int:
    return {"list": table_list, "show": table_show, "run": table_run, "save": table_save}[
        args.table_action
    ](args)


def table_list(args: argparse.Namespace) -> int:
    from wideresnet.experiments.describe import list_tables

    tables = list_tables()
    if args.json:
        print(json.dumps(tables))
        return 0
    for t in tables:
        runnable = "" if t["runnable"] else "  (listed only)"
        columns = "/".join(t["columns"])
        print(f"{t['table']:<8} {t['rows']:>2} rows  {columns:<24} {t['title']}{runnable}")
    return 0


def _error(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table_show(args: argparse.Namespace) -> int:
    from wideresnet.experiments.describe import describe_table

    table = describe_table(args.table)
    if args.json:
        print(json.dumps(table))
        return 0
    columns = table["columns"]
    print(
        f"{table['table']}: {table['title']} ({table['preprocess']}; paper: {table['statistic']})"
    )
    print(
        f"{'row':<20} {'model':<20} {'params':>12} {'paper':>6}  "
        + " ".join(f"{c:>9}" for c in columns)
    )
    for row in table["rows"]:
        params = "-" if row["params"] is None else f"{row['params']:,}"
        printed = "-" if row["paper_params"] is None else f"{row['paper_params']}M"
        mark = {True: "", False: " *", None: ""}[row["params_match"]]
        errors = " ".join(f"{_error(row['paper'].get(c)):>9}" for c in columns)
        print(
            f"{row['label']:<20} {str(row['model']):<20} {params:>12} {printed:>6}{mark:2} {errors}"
        )
        for note in (row["note"], row["params_note"]):
            if note:
                print(f"{'':<20} {note}")
    if table["runnable"]:
        for column, cost in table["cost"]["per_run_of_each_row"].items():
            print(
                f"one run of every row on {column}: about {cost['cpu_hours']:,.1f} hours on this "
                f"CPU, {cost['gpu_hours']:,.2f} on an H200"
            )
        for assumption in table["cost"]["assumes"]:
            print(f"  assumes: {assumption}")
    else:
        print(table["note"])
    return 0


def table_run(args: argparse.Namespace) -> int:
    from wideresnet.experiments import TableRunner, parse_devices, plan, print_commands

    seeds = [int(s) for s in _csv(args.seeds) or ["0"]]
    runs = plan(
        args.table,
        args.dataset,
        args.data_dir,
        args.out,
        rows=_csv(args.rows),
        seeds=seeds,
        epochs=args.epochs,
        scale=args.schedule_scale,
        paper_dataset=args.paper_dataset,
        extra=parse_train_options(args.train_options),
    )
    if any(run.extra.get("tensorboard") for run in runs):
        from wideresnet.extras import require

        require("tensorboard", "--tensorboard")  # before any run starts, not once per run
    if args.print_commands:
        for line in print_commands(runs, args.retry_failed):
            print(line)
        return 0
    runner = TableRunner(runs, Path(args.out), parse_devices(_csv(args.devices)))
    outcome = runner.run(args.retry_failed)
    print(
        f"{args.table}: {outcome.finished} runs finished now, {outcome.skipped} skipped, "
        f"{outcome.failed} failed; `wrn report {args.out}` shows the table"
    )
    return 1 if outcome.failed else 0


def table_save(args: argparse.Namespace) -> int:
    """Copy the small files of every run (never checkpoints) into the ledger, with what made
    them (each run's command, commit, device and data are in its config and result)."""
    from wideresnet.experiments.ledger import save_ledger

    saved = save_ledger(args.exp_dir, args.to)
    print(f"{saved['runs']} runs saved to {args.to} (config, metrics, result; no checkpoints)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from wideresnet.files import atomic_write
    from wideresnet.report import report, write_into

    if args.plots:
        from wideresnet.extras import require

        require("plots", "--plots")
    text, records, cells = report(args.exp_dir, args.format)
    if args.into:
        write_into(args.into, text)
        print(f"{args.into}: results section rewritten ({len(cells)} cells)")
    elif args.out:
        atomic_write(args.out, text.encode())
        print(f"{args.out}: {len(cells)} cells from {len(records)} runs")
    else:
        print(text, end="")
    if args.plots:
        from wideresnet.plots import write_plots

        written = write_plots(records, cells, Path(args.plots))
        print(f"{args.plots}: {len(written)} plot files")
    return 0


TABLE_COMMANDS = {"table": cmd_table, "report": cmd_report}
