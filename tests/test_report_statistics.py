"""`wrn report`'s statistics beside the paper's median: mean and standard deviation over
seeds, each seed's error, the mean of the last K epochs and the test error at the epoch of
best validation error, each checked against numbers computed by hand; and runs that validate
on held-out images while still testing on the test split (--val-and-test)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from helpers import cli, metrics, one_line_error

# per seed: (test error, validation error) per epoch; the runs' final errors are 30, 20, 40
EPOCHS = {
    0: [(50.0, 48.0), (35.0, 30.0), (30.0, 33.0)],
    1: [(45.0, 35.0), (25.0, 36.0), (20.0, 37.0)],
    2: [(60.0, 52.0), (50.0, 44.0), (40.0, 44.0)],
}


def tiny_run(npz: Path, out: Path, seed: int, *more: str):
    options = "--model wrn-10-1 --dataset npz --epochs 3 --batch-size 32 --precision fp32"
    tag = ("--experiment", "table6/16-4@cifar10", "--seed", str(seed))
    return cli("train", *options.split(), *tag, "--data-dir", npz, "--out", out, *more)


@pytest.fixture(scope="module")
def validated(npz, tmp_path_factory) -> Path:
    """A real run that holds 32 training images out to validate on, and tests on the test
    split as well."""
    out = tmp_path_factory.mktemp("val") / "exp" / "seed0"
    result = tiny_run(npz, out, 0, "--val-size", "32", "--val-and-test")
    assert result.returncode == 0, result.stderr
    return out


def test_a_validated_run_records_both_errors_and_tests_on_the_test_split(validated):
    rows = metrics(validated)
    assert all(r["val_error"] is not None and r["test_error"] is not None for r in rows)
    outcome = json.loads((validated / "result.json").read_text())
    assert outcome["test_images"] == 64 and outcome["train_images"] == 192 - 32
    assert any("held out to validate" in flag for flag in outcome["flags"])
    evaluated = json.loads(cli("eval", validated, "--json").stdout)
    assert evaluated["images"] == 64
    assert evaluated["test_error"] == pytest.approx(rows[-1]["test_error"])


def test_val_and_test_needs_a_validation_split(npz, tmp_path):
    line = one_line_error(tiny_run(npz, tmp_path / "run", 0, "--val-and-test"))
    assert "--val-and-test needs --val-size" in line


def known_experiment(validated: Path, root: Path) -> Path:
    """Three copies of the real run as seeds 0-2, with the per-epoch errors of EPOCHS."""
    for seed, epochs in EPOCHS.items():
        run = root / f"seed{seed}"
        shutil.copytree(validated, run, ignore=shutil.ignore_patterns("*.pt", "*.lock"))
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "seed": seed}))
        rows = metrics(validated)
        for row, (test, val) in zip(rows, epochs):
            row.update(test_error=test, val_error=val)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        result = json.loads((run / "result.json").read_text())
        (run / "result.json").write_text(json.dumps({**result, "test_error": epochs[-1][0]}))
    return root


def test_every_statistic_equals_the_hand_computed_one(validated, tmp_path):
    root = known_experiment(validated, tmp_path / "exp")
    result = cli("report", root, "--format", "json", "--last-k", "2", "--per-seed")
    assert result.returncode == 0, result.stderr
    (cell,) = json.loads(result.stdout)["cells"]
    # final errors 30, 20, 40: median 30, mean 30, sample std sqrt(((0)^2+10^2+10^2)/2) = 10
    assert (cell["median"], cell["min"], cell["max"]) == (30.0, 20.0, 40.0)
    assert cell["mean"] == pytest.approx(30.0) and cell["std"] == pytest.approx(10.0)
    assert [(s["seed"], s["test_error"]) for s in cell["per_seed"]] == [(0, 30), (1, 20), (2, 40)]
    # last 2 epochs: seed0 (35+30)/2 = 32.5, seed1 22.5, seed2 45; mean 33.3333; std:
    # deviations -0.8333, -10.8333, 11.6667 -> sqrt((0.6944+117.3611+136.1111)/2) = 11.2731
    last = cell["last_k"]
    assert last["k"] == 2 and last["mean"] == pytest.approx(100 / 3)
    assert last["std"] == pytest.approx(11.2731, abs=1e-4) and "not the paper's" in last["flag"]
    # best validation: seed0 epoch 2 (val 30) -> test 35; seed1 epoch 1 (val 35) -> 45;
    # seed2 epoch 2 (44 ties epoch 3: the first) -> 50; mean 43.3333, std sqrt((69.44+2.78
    # +44.44)/2) = 7.6376
    selected = cell["val_selected"]
    assert selected["epochs"] == [2, 1, 2] and selected["runs"] == 3
    assert selected["mean"] == pytest.approx(130 / 3)
    assert selected["std"] == pytest.approx(7.6376, abs=1e-4)
    assert "selected on validation" in selected["flag"] and "never on test" in selected["flag"]
    assert cell["paper"] == 5.02 and cell["difference"] == pytest.approx(30.0 - 5.02)

    markdown = cli("report", root, "--last-k", "2", "--per-seed").stdout
    header = next(line for line in markdown.splitlines() if line.startswith("| row"))
    assert "mean ± std" in header and "per seed" in header
    assert "last-2 mean ± std (not the paper's statistic)" in header
    assert "test @ best val ± std (selected on validation)" in header
    assert "| 30.00 ± 10.00 | s0:30.00 s1:20.00 s2:40.00 | 33.33 ± 11.27 |" in markdown
    assert "| 43.33 ± 7.64 (epoch 2,1,2) |" in markdown
    plain = cli("report", root).stdout  # the default: no per-seed or last-K column
    assert "per seed" not in plain and "last-" not in plain and "30.00 ± 10.00" in plain
    csv_text = cli("report", root, "--format", "csv", "--last-k", "2").stdout
    (row,) = csv.DictReader(io.StringIO(csv_text))
    assert float(row["last_k_mean"]) == pytest.approx(100 / 3)
    assert float(row["val_selected_mean"]) == pytest.approx(130 / 3)
    assert row["per_seed"] == "s0:30.00 s1:20.00 s2:40.00" and float(row["std"]) == 10.0
    line = one_line_error(cli("report", root, "--last-k", "0"))
    assert "--last-k 0" in line
