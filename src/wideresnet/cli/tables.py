"""The verbs for the paper's tables: `wrn table list|show|run|save` and `wrn report`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wideresnet.cli.parser import UsageError, parse_train_options
from wideresnet.errors import ConfigError


def _csv(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def cmd_table(args: argparse.Namespace) -> int:
    verbs = {"list": table_list, "show": table_show, "run": table_run, "status": table_status}
    return {**verbs, "save": table_save}[args.table_action](args)


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


def figure4_show(as_json: bool) -> int:
    from wideresnet.experiments import figure4

    figure = figure4.describe()
    if as_json:
        print(json.dumps(figure))
        return 0
    print(f"{figure['table']}: {figure['title']}")
    print(f"paper: {figure['paper_device']}; ours: {figure['measured']}")
    print(f"{'row':<12} {'network':<20} {'params':>12} {'paper ms':>9} {'/ 1001':>7} {'C10 %':>6}")
    for row in figure["rows"]:
        print(
            f"{row['id']:<12} {row['label']:<20} {row['params']:>12,} {row['paper_ms']:>9g} "
            f"{row['paper_ratio']:>6.2f}x {row['paper_error']:>6.2f}  ({row['error_source']})"
        )
    print("`wrn table run figure4 --device D --out EXP` times them here (a few minutes on a CPU)")
    return 0


def table_show(args: argparse.Namespace) -> int:
    from wideresnet.experiments.describe import describe_table

    if args.table == "figure4":
        return figure4_show(args.json)
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


def _seeds(text: str | None, grid) -> list[int]:
    if not text:
        return list(grid.seeds) if grid else [0]
    try:
        return [int(s) for s in _csv(text) or []]
    except ValueError:
        raise UsageError(
            f"wrn table run: --seeds {text!r}: whole numbers, comma-separated"
        ) from None


TIMING_ONLY = ("device", "seconds", "batch_size")
TRAINING_ONLY = ("dataset", "data_dir", "seeds", "epochs", "schedule_scale", "devices")
TRAINING_ONLY += ("paper_dataset", "print_commands", "retry_failed", "train_options")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n, None)]


def figure4_run(args: argparse.Namespace) -> int:
    from wideresnet.experiments import figure4

    wrong = _given(args, TRAINING_ONLY) + (["--launcher"] if args.launcher != "local" else [])
    if wrong:
        raise UsageError(f"wrn table run figure4: {', '.join(wrong)}: for training tables only")
    path = figure4.run_figure4(
        args.out,
        args.device or "auto",
        rows=_csv(args.rows),
        seconds=figure4.DEFAULT_SECONDS if args.seconds is None else args.seconds,
        batch=args.batch_size or figure4.PAPER_BATCH,
    )
    print(f"figure4: timings in {path}; `wrn report {args.out}` shows them beside the paper's")
    return 0


def table_run(args: argparse.Namespace) -> int:
    from wideresnet.experiments import TableRunner, parse_devices, plan, print_commands

    if args.table == "figure4":
        return figure4_run(args)
    given = _given(args, TIMING_ONLY)
    if given:
        raise UsageError(
            f"wrn table run: {', '.join(given)}: for figure4 only (a training table's runs take "
            "`wrn train` options after --, e.g. -- --device cpu)"
        )
    from wideresnet.experiments.expdir import ExperimentDir
    from wideresnet.experiments.grid import keep_in, load_grid
    from wideresnet.extras import require

    grid = load_grid(args.table) if args.table.endswith(".toml") else None
    runs = plan(
        grid.table if grid else args.table,
        args.dataset,
        args.data_dir,
        args.out,
        rows=_csv(args.rows),
        seeds=_seeds(args.seeds, grid),
        epochs=args.epochs,
        scale=args.schedule_scale,
        paper_dataset=args.paper_dataset,
        extra=parse_train_options(args.train_options),
    )
    for run in runs:
        changed = run.departures()
        if changed:
            raise ConfigError(
                f"{run.run_dir} was made with {', '.join(changed)}: its result would stand for "
                "the row; give another --out, or remove that run's folder"
            )
    if any(run.extra.get("tensorboard") for run in runs):
        require("tensorboard", "--tensorboard")  # before any run starts, not once per run
    cluster = _cluster_options(args) if args.launcher != "local" else None
    if cluster:
        require("cluster", f"--launcher {args.launcher}")
    exp_dir = Path(args.out).absolute()
    if grid:
        keep_in(grid, exp_dir)  # where `wrn report` finds the grid again
    name = grid.table.name if grid else args.table
    ExperimentDir(exp_dir).record_plan(runs)  # what `wrn table status` lists, however run
    if args.print_commands:
        for line in print_commands(runs, args.retry_failed):
            print(line)
        return 0
    if cluster:
        return _submit(runs, exp_dir, cluster, args, name)
    runner = TableRunner(runs, exp_dir, parse_devices(_csv(args.devices)))
    outcome = runner.run(args.retry_failed)
    print(
        f"{name}: {outcome.finished} runs finished now, {outcome.skipped} skipped, "
        f"{outcome.failed} failed; `wrn report {args.out}` shows the table"
    )
    return 1 if outcome.failed else 0


def _cluster_options(args: argparse.Namespace):
    from wideresnet.experiments.cluster import (
        DEFAULT_MINUTES,
        ClusterOptions,
        parse_minutes,
        parse_slurm_options,
    )

    if args.devices:
        raise UsageError("wrn table run: --devices is for --launcher local")
    for option in ("gpus_per_run", "max_parallel", "slurm_signal_delay"):
        value = getattr(args, option)
        if value is not None and value < (1 if option == "max_parallel" else 0):
            raise UsageError(f"wrn table run: --{option.replace('_', '-')} {value}: too small")
    minutes = parse_minutes(args.slurm_time)
    delay = args.slurm_signal_delay
    if delay is not None and delay >= 60 * (minutes or DEFAULT_MINUTES):
        raise UsageError(
            f"wrn table run: --slurm-signal-delay {delay}: not shorter than the time limit "
            f"({minutes or DEFAULT_MINUTES} min), so the run would be stopped as it starts"
        )
    return ClusterOptions(
        args.launcher,
        partition=args.slurm_partition,
        minutes=minutes,
        signal_delay=delay,
        gpus_per_run=args.gpus_per_run,
        max_parallel=args.max_parallel,
        slurm_options=parse_slurm_options(args.slurm_option),
    )


def _submit(runs, exp_dir: Path, cluster, args: argparse.Namespace, name: str) -> int:
    from wideresnet.experiments.cluster import submit

    done = submit(runs, exp_dir, cluster, args.retry_failed)
    print(
        f"{name}: skipped {len(done.finished)} finished, {len(done.queued)} queued or running, "
        f"{len(done.skipped_failed)} failed (--retry-failed runs them)"
    )
    if not done.submitted:
        print(f"{name}: nothing new to submit")
        return 0
    if done.outcome is None:  # Slurm: submitted; the jobs run on
        ids = ", ".join(sorted({job_id.split("_")[0] for _, job_id in done.submitted}))
        print(f"{name}: {len(done.submitted)} runs submitted (job {ids})")
        print(f"`wrn table status {args.out}` follows them; the same command submits only the rest")
        return 0
    outcome = done.outcome
    print(
        f"{name}: {outcome.finished} runs finished now, {outcome.failed} failed; "
        f"`wrn report {args.out}` shows the table"
    )
    return 1 if outcome.failed else 0


def table_status(args: argparse.Namespace) -> int:
    from wideresnet.experiments.status import format_status, table_status

    status = table_status(args.exp_dir)
    print(json.dumps(status) if args.json else format_status(status, args.exp_dir))
    return 0


def table_save(args: argparse.Namespace) -> int:
    """Copy the small files of every run (never checkpoints) into the ledger, with what made
    them (each run's command, commit, device and data are in its config and result)."""
    from wideresnet.experiments.ledger import save_ledger

    saved = save_ledger(args.exp_dir, args.to)
    timings = f" and {len(saved['figure4'])} Figure 4 records" if saved["figure4"] else ""
    print(
        f"{saved['runs']} runs{timings} saved to {args.to} (config, metrics, result; no "
        "checkpoints)"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from wideresnet.files import atomic_write
    from wideresnet.report import Statistics, report, write_into

    if args.plots:
        from wideresnet.extras import require

        require("plots", "--plots")
    done = report(args.exp_dir, args.format, Statistics(args.per_seed, args.last_k))
    # what the verb says of its files goes to stderr when stdout carries the report itself
    said = sys.stderr if not (args.into or args.out) else sys.stdout
    if args.into:
        write_into(args.into, done.text)
        print(f"{args.into}: results section rewritten ({len(done.cells)} cells)")
    elif args.out:
        atomic_write(args.out, done.text.encode())
        print(f"{args.out}: {len(done.cells)} cells from {len(done.records)} runs")
    else:
        print(done.text, end="")
    if args.plots:
        from wideresnet.plots import write_plots

        written = write_plots(done.records, done.cells, Path(args.plots), done.timings)
        print(f"{args.plots}: {len(written)} plot files", file=said)
    return 0


TABLE_COMMANDS = {"table": cmd_table, "report": cmd_report}
