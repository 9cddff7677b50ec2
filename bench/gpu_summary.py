"""The one short table of bench/gpu_check.sh: each step's outcome, the held-batch against the
real-epoch rate, the opt-ins' loss curves beside the default's, the policies' cost, the
TrivialAugment row, and each throughput target met or missed with its figure.

    python bench/gpu_summary.py WORK_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEPS = ("trivialaugment-16-4", "profile", "fp16", "augment", "max-autotune")
STEPS += ("epochs-wrn-40-4", "epochs-wrn-28-10", "bench-wrn-16-4")
TARGETS = {"wrn-16-4": 60_000, "wrn-40-4": 25_000, "wrn-28-10": 14_000}  # real epochs, eval in


def metrics(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def with_eval(row: dict) -> float:
    """Training images per second of an epoch counting its evaluation's time."""
    seen = row["train_images_per_second"] * row["train_seconds"]
    return seen / row["epoch_seconds"] if row["epoch_seconds"] else 0.0


def outcome(work: Path, name: str) -> str:
    if (work / f"{name}.skipped").exists():
        return "skipped (no time left)"
    try:
        code, seconds = (work / f"{name}.exit").read_text().split()
    except (OSError, ValueError):
        return "not run"
    what = {"0": "done", "124": "cut at its time cap", "137": "killed at its cap"}
    return f"{what.get(code, f'exit {code}')}, {seconds} s"


def target(model: str, rate: float | None) -> str:
    goal = TARGETS[model]
    if rate is None:
        return f"{model} >= {goal:,} img/s: not measured"
    verdict = "met" if rate >= goal else "MISSED"
    return f"{model} >= {goal:,} img/s: {verdict} ({rate:,.0f}, real epoch with evaluation)"


def curve(rows: list[dict]) -> str:
    return ", ".join(f"{r['train_loss']:.4f}" for r in rows) or "-"


def main(work: Path) -> None:
    print("== summary (bench/gpu_summary.py)")
    for name in STEPS:
        print(f"  {name:<22} {outcome(work, name)}")
    rates: dict[str, float | None] = dict.fromkeys(TARGETS)
    profile = {}
    try:
        profile = json.loads((work / "profile.json").read_text())
    except (OSError, ValueError):
        pass
    if profile:
        held, real = profile["held_images_per_second"], profile["real_epoch"]
        gap = 1 - real["train_images_per_second"] / held
        print(
            f"  profile {profile['run']['model']}: held batch {held:,.0f} img/s, real epoch "
            f"{real['train_images_per_second']:,.0f} train ({100 * gap:.0f}% below), "
            f"{real['with_eval_images_per_second']:,.0f} with evaluation"
        )
        if profile["run"]["model"] in TARGETS:  # GPU_CHECK_QUICK trains smaller ones
            rates[profile["run"]["model"]] = real["with_eval_images_per_second"]
    default = profile.get("losses", [])
    print(
        f"  loss per epoch, default ({profile.get('run', {}).get('precision', '?')}): "
        + (", ".join(f"{x:.4f}" for x in default) or "-")
    )
    for name in ("fp16", "max-autotune"):
        rows = metrics(work / name / "metrics.jsonl")
        speed = f"; last epoch {with_eval(rows[-1]):,.0f} img/s with eval" if rows else ""
        print(f"  loss per epoch, {name}: {curve(rows)}{speed}")
    for line in (
        (work / "augment.log").read_text().splitlines() if (work / "augment.log").exists() else []
    ):
        if "Augment" in line or "equal" in line:
            print(f"  augment: {line.strip()}")
    for result in sorted((work / "exp").glob("**/result.json")):
        found = json.loads(result.read_text())
        rows = metrics(result.parent / "metrics.jsonl")
        rate = sum(r["train_images_per_second"] for r in rows) / max(1, len(rows))
        where = result.parent.relative_to(work / "exp")
        print(
            f"  {where}: test error {found.get('test_error')}% after {len(rows)} epochs"
            f", {rate:,.0f} train img/s mean (TrivialAugment, WRN-16-4)"
        )
    for model in ("wrn-40-4", "wrn-28-10"):
        rows = metrics(work / f"epochs-{model}" / "metrics.jsonl")
        if rows:
            rates[model] = with_eval(rows[-1])
    for model, rate in rates.items():
        print(f"  target {target(model, rate)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
