"""`wrn table status EXP`: where each run of an experiment stands, from the run directories and
the experiment's own records alone (EXP/plan.json, table-runs.json, jobs.json), so it works
from any machine that sees the folder.

    finished   result.json written
    running    a process holds the run's lock (seen from the machine it runs on)
    queued     its submitted job is pending or running, as the scheduler says
    stopped    interrupted; `wrn table run` (or `wrn train --resume`) continues it
    failed     failure.json, or its last process exited with an error
    new        planned, not started
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from wideresnet.errors import DataError, RunError
from wideresnet.experiments.cluster import job_active, read_jobs
from wideresnet.experiments.plan import PlannedRun
from wideresnet.experiments.runner import TABLE_RUNS, locked, log_of, run_key, stopped_by_signal
from wideresnet.files import check_regular, read_json, relative_inside, write_json
from wideresnet.train.rundir import CONFIG, RunDir, RunState

log = logging.getLogger(__name__)

LOG_TAIL = 64 << 10  # bytes: the end of a run's log, where its last error line is
PLAN = "plan.json"  # EXP_DIR's record of every run a `wrn table run` planned
STATES = ("finished", "running", "queued", "stopped", "failed", "new")


def record_plan(exp_dir: Path, runs: list[PlannedRun]) -> None:
    """Add the runs of this `wrn table run` to EXP_DIR/plan.json (for `wrn table status`)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    with locked(exp_dir / ".plan.lock"):
        plan = read_json(exp_dir / PLAN)
        plan = plan if isinstance(plan, dict) else {}
        for run in runs:
            values = {**run.values, **run.extra}
            plan[run_key(exp_dir, run)] = {
                "tag": str(run.tag),
                "seed": run.seed,
                "epochs": values.get("epochs"),
            }
        write_json(exp_dir / PLAN, plan)


def _first_error(exp_dir: Path, key: str) -> str | None:
    """The last `wrn: error:` line of a run's log, if its last exit was a failure."""
    path = log_of(exp_dir, key)
    try:
        check_regular(path, "log")  # a FIFO would hang the read
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - LOG_TAIL))
            lines = f.read(LOG_TAIL).decode(errors="replace").splitlines()
    except (OSError, RunError):
        return None
    errors = [line for line in lines if line.startswith("wrn: ")]
    return errors[-1] if errors else None


def run_status(exp_dir: Path, key: str, planned: dict, exits: dict, jobs: dict) -> dict[str, Any]:
    run = RunDir(exp_dir / key)
    config = run.config() or {}
    rows = run.metrics()
    epochs = config.get("epochs") or planned.get("epochs")
    entry: dict[str, Any] = {
        "path": key,
        "tag": config.get("experiment") or planned.get("tag"),
        "seed": config.get("seed", planned.get("seed")),
        "epoch": len(rows),
        "epochs": epochs,
        "test_error": rows[-1].test_error if rows else None,
    }
    state = run.status() if run.path.is_dir() else RunState.NEW
    job = jobs.get(key)
    last_exit = exits.get(key, {}).get("exit") if isinstance(exits.get(key), dict) else None
    if state == RunState.FINISHED:
        result = run.result()
        entry.update(state="finished", epoch=result.epochs, test_error=result.test_error)
    elif state == RunState.RUNNING:
        entry["state"] = "running"
        seconds = [r.epoch_seconds for r in rows if r.epoch_seconds]
        if seconds and isinstance(epochs, int):
            entry["eta_seconds"] = round(sum(seconds) / len(seconds) * (epochs - len(rows)))
    elif job_active(exp_dir, job):
        entry.update(state="queued", job_id=str(job["job_id"]))
    elif state == RunState.FAILED:
        failure = run.failure() or {}
        entry.update(state="failed", error=str(failure.get("message", "failure.json"))[:300])
    elif isinstance(last_exit, int) and last_exit != 0 and not stopped_by_signal(last_exit):
        error = _first_error(exp_dir, key) or f"exit {last_exit}"
        entry.update(state="failed", error=error[:300])
    else:
        entry["state"] = "stopped" if state == RunState.STOPPED else "new"
    return entry


def table_status(exp_dir: str | Path) -> dict[str, Any]:
    """{"runs": [{"path", "state", "epoch", "epochs", "test_error", ...}], "totals"}."""
    exp_dir = Path(exp_dir).absolute()
    if not exp_dir.is_dir():
        raise DataError(f"{exp_dir}: no such experiment folder")
    plan = read_json(exp_dir / PLAN)
    plan = plan if isinstance(plan, dict) else {}
    outside = [key for key in plan if not relative_inside(key, exp_dir)]
    for key in outside:  # a record naming a folder elsewhere is not a run of this experiment
        log.warning(f"{exp_dir / PLAN}: {str(key)[:200]!r} is not a folder inside it; left out")
        del plan[key]
    found = {
        str(p.parent.relative_to(exp_dir))
        for p in exp_dir.rglob(CONFIG)
        if p.parent.relative_to(exp_dir).parts[:1] not in (("submitit",), ("logs",), ())
    }
    keys = sorted(set(plan) | found)
    if not keys:
        raise DataError(f"{exp_dir}: no runs here (neither plan.json nor run directories)")
    exits = read_json(exp_dir / TABLE_RUNS)
    exits = exits if isinstance(exits, dict) else {}
    jobs = read_jobs(exp_dir)
    runs = []
    for key in keys:
        planned = plan.get(key) if isinstance(plan.get(key), dict) else {}
        try:
            runs.append(run_status(exp_dir, key, planned, exits, jobs))
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
