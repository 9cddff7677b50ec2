"""The statistics the communities that use WRNs report, beside the paper's median over seeds
(README "Which statistic"): the mean and sample standard deviation over seeds (distillation
papers), each seed's error, the mean of each run's last K tested epochs (FixMatch, USB; not
the paper's statistic), and the test error at each run's epoch of lowest validation error
(robust training; selected on held-out training images, never on test). A run here is any
record with `metrics` (rows with test_error and val_error), `test_error`, `finished` and
`config.runtime.seed` (report.RunRecord).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Protocol


class RunRecord(Protocol):
    """What these statistics read of a run (report.RunRecord has it)."""

    metrics: list  # MetricsRow: epoch, test_error, val_error
    config: Any  # Config: runtime.seed

    @property
    def test_error(self) -> float | None: ...

    @property
    def finished(self) -> bool: ...


@dataclass(frozen=True)
class Statistics:
    """The statistics a report shows beside the paper's (the median, always shown)."""

    per_seed: bool = False  # each seed's final error
    last_k: int | None = None  # the mean of each run's last K tested epochs


LAST_K_FLAG = "not the paper's statistic"
VALIDATION_FLAG = "selected on validation (held-out training images), never on test"


def last_k_error(record: RunRecord, k: int) -> float | None:
    """The mean test error of the run's last k tested epochs (FixMatch's and USB's habit)."""
    tested = [m.test_error for m in record.metrics if m.test_error is not None]
    return statistics.fmean(tested[-k:]) if tested else None


def validation_selected(record: RunRecord) -> tuple[int, float] | None:
    """(epoch, test error) at the run's lowest validation error (the first such epoch), or
    None when the run did not validate (--val-and-test)."""
    both = [m for m in record.metrics if m.val_error is not None and m.test_error is not None]
    if not both:
        return None
    best = min(both, key=lambda m: (m.val_error, m.epoch))
    return best.epoch, best.test_error


def spread(errors: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (n - 1) of the runs' errors."""
    return {
        "mean": statistics.fmean(errors) if errors else None,
        "std": statistics.stdev(errors) if len(errors) > 1 else None,
    }


def other_statistics(used: list[RunRecord], chosen: Statistics) -> dict[str, Any]:
    """A cell's statistics beside the median: mean and std over seeds, each seed's error, and
    (when asked or recorded) the last-K mean and the validation-selected test error."""
    errors = [r.test_error for r in used if r.test_error is not None]
    values: dict[str, Any] = spread(errors)
    values["per_seed"] = sorted(
        (
            {"seed": r.config.runtime.seed, "test_error": r.test_error, "finished": r.finished}
            for r in used
        ),
        key=lambda s: s["seed"],
    )
    if chosen.last_k:
        per_run = [last_k_error(r, chosen.last_k) for r in used]
        found = [e for e in per_run if e is not None]
        values["last_k"] = {"k": chosen.last_k, **spread(found), "flag": LAST_K_FLAG}
    selected = [s for s in map(validation_selected, used) if s is not None]
    if selected:
        values["val_selected"] = {
            **spread([error for _, error in selected]),
            "epochs": [epoch for epoch, _ in selected],
            "runs": len(selected),
            "flag": VALIDATION_FLAG,
        }
    return values


# -- as report columns -----------------------------------------------------------------------


def mean_std(values: dict[str, Any] | None) -> str:
    if not values or values["mean"] is None:
        return "-"
    std = values["std"]
    return f"{values['mean']:.2f}" + ("" if std is None else f" ± {std:.2f}")


def seeds_text(c: dict[str, Any]) -> str:
    """Each seed's final error: 's0:30.00 s1:20.00'."""
    shown = ["-" if s["test_error"] is None else f"{s['test_error']:.2f}" for s in c["per_seed"]]
    return " ".join(f"s{s['seed']}:{text}" for s, text in zip(c["per_seed"], shown)) or "-"


def columns(table_cells: list[dict[str, Any]], chosen: Statistics) -> list[tuple]:
    """(header, cell -> text) of the statistics this table's cells show beyond the median."""
    columns: list[tuple] = [("mean ± std", mean_std)]
    if chosen.per_seed:
        columns.append(("per seed", seeds_text))
    if chosen.last_k:
        k = chosen.last_k
        columns.append((f"last-{k} mean ± std ({LAST_K_FLAG})", lambda c: mean_std(c["last_k"])))
    if any("val_selected" in c for c in table_cells):
        columns.append(("test @ best val ± std (selected on validation)", lambda c: val_text(c)))
    return columns


def val_text(c: dict[str, Any]) -> str:
    selected = c.get("val_selected")
    if not selected:
        return "-"
    epochs = ",".join(map(str, selected["epochs"]))
    return f"{mean_std(selected)} (epoch {epochs})"
