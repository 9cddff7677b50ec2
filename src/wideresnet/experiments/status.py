"""`wrn table status EXP`: where each run of an experiment stands, from the run directories and
the experiment's own records alone (experiments/expdir.py defines the states), so it works
from any machine that sees the folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wideresnet.errors import DataError, RunError
from wideresnet.experiments.expdir import STATES, ExperimentDir


def table_status(exp_dir: str | Path) -> dict[str, Any]:
    """{"runs": [{"path", "state", "epoch", "epochs", "test_error", ...}], "totals"}."""
    experiment = ExperimentDir(exp_dir)
    if not experiment.path.is_dir():
        raise DataError(f"{experiment.path}: no such experiment folder")
    plan, exits, jobs = experiment.plan(), experiment.exits(), experiment.jobs()
    keys = experiment.run_keys(plan)
    if not keys:
        raise DataError(f"{experiment.path}: no runs here (neither plan.json nor run directories)")
    runs = []
    for key in keys:
        try:
            runs.append(experiment.status(key, plan, exits, jobs))
        except RunError as error:  # a torn or foreign record: said, and the rest go on
            runs.append({"path": key, "state": "failed", "error": str(error)[:300]})
    totals = {state: sum(r["state"] == state for r in runs) for state in STATES}
    return {"runs": runs, "totals": totals}


def format_status(status: dict[str, Any], exp_dir: str) -> str:
    totals = status["totals"]
    counts = ", ".join(f"{totals[s]} {s}" for s in STATES)
    lines = [f"{exp_dir}: {len(status['runs'])} runs: {counts}"]
    width = max(len(r["path"]) for r in status["runs"])
    for run in status["runs"]:
        state = run["state"]
        progress = f"{run.get('epoch') or 0}/{run.get('epochs') or '?'}"
        detail = ""
        if run.get("test_error") is not None:
            detail = f"test error {run['test_error']:.2f}%"
        if state == "running" and run.get("eta_seconds") is not None:
            detail += f", ETA {_duration(run['eta_seconds'])} (from its own epochs)"
        if state == "queued":
            detail = f"job {run['job_id']}"
        if state == "failed":
            detail = run.get("error", "")
        lines.append(f"{run['path']:<{width}}  {state:<8} {progress:>9}  {detail}".rstrip())
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
