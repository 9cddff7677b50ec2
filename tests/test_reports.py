"""`wrn report` over broken or foreign run folders, `--into` an existing file (its mode, links
kept) and `--plots` into a file, a read-only folder or a full disk: one line, the rest
reported."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import (
    cli,
    one_line_error,
)

# --------------------------------------------------------------------------------------------
# Broken or foreign run folders, --into, --plots
# --------------------------------------------------------------------------------------------


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    path.write_text(json.dumps(change(value)))


def without(key):
    return lambda record: {k: v for k, v in record.items() if k != key}


BROKEN = {
    "N9-no-test-error": ("result.json", without("test_error")),
    "N9-no-wall-seconds": ("result.json", without("wall_seconds")),
    "N9-test-error-abc": ("result.json", lambda r: {**r, "test_error": "abc"}),
    "N9-result-a-list": ("result.json", lambda r: []),
    "N11-no-epochs": ("config.json", without("epochs")),
    "N11-no-dataset": ("config.json", without("dataset")),
    "N11-config-a-list": ("config.json", lambda r: [1, 2]),
    "N11-column-imagenet": ("config.json", lambda r: {**r, "experiment": "table6/16-4@imagenet"}),
    "N12-unknown-table": ("config.json", lambda r: {**r, "experiment": "table99/16-4@cifar10"}),
    "N12-unknown-row": ("config.json", lambda r: {**r, "experiment": "table6/nope@cifar10"}),
    "N12-dropout-x": ("config.json", lambda r: {**r, "dropout": "x"}),
}


@pytest.mark.parametrize("case", [*BROKEN, "N10-metrics-lines"])
def test_a_broken_run_folder_is_left_out_by_name_and_the_rest_reported(experiment, tmp_path, case):
    copy = tmp_path / "exp"
    shutil.copytree(experiment, copy)
    broken = copy / "table6" / "16-4" / "seed1"
    if case == "N10-metrics-lines":
        (broken / "metrics.jsonl").write_text('5\n[1]\n"x"\n')
        name = "metrics.jsonl"
    else:
        name, change = BROKEN[case]
        edit_json(broken / name, change)
    result = cli("report", copy, "--format", "json")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and str(broken) in warnings[0], result.stderr
    cells = json.loads(result.stdout)["cells"]
    if case == "N10-metrics-lines":  # its result still counts; its curve is left out
        assert "line 1, 2, 3 not an epoch record" in warnings[0]
        assert [c["runs"] for c in cells] == [2]
    else:
        assert "left out" in warnings[0]
        assert [c["runs"] for c in cells] == [1]


def readme_with_section(path: Path) -> Path:
    path.write_text("# T\n<!-- results:start -->\nold\n<!-- results:end -->\nend\n")
    return path


@pytest.mark.parametrize("mode", [0o644, 0o444])
def test_report_into_keeps_the_mode_of_the_file(experiment, tmp_path, mode):
    readme = readme_with_section(tmp_path / "README.md")
    readme.chmod(mode)
    assert cli("report", experiment, "--into", readme).returncode == 0
    assert (readme.stat().st_mode & 0o777) == mode
    assert "old" not in readme.read_text() and readme.read_text().endswith("end\n")


def test_report_into_writes_through_a_symlink_and_keeps_hard_links(experiment, tmp_path):
    target = readme_with_section(tmp_path / "target.md")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    assert cli("report", experiment, "--into", link).returncode == 0
    assert link.is_symlink() and "old" not in target.read_text()
    hard = readme_with_section(tmp_path / "hard.md")
    other = tmp_path / "other-name.md"
    os.link(hard, other)
    assert cli("report", experiment, "--into", hard).returncode == 0
    assert other.read_text() == hard.read_text() and "old" not in other.read_text()


def test_report_into_a_missing_file_or_a_folder_is_one_line(experiment, tmp_path):
    for target in (tmp_path / "missing.md", tmp_path):
        line = one_line_error(cli("report", experiment, "--into", target))
        assert str(target) in line


def test_report_plots_into_a_file_a_read_only_or_full_disk_is_one_line(
    experiment, tmp_path, small_fs
):
    taken = tmp_path / "taken.md"
    taken.write_text("x")
    line = one_line_error(cli("report", experiment, "--plots", taken))
    assert str(taken) in line and taken.read_text() == "x"
    full = small_fs(64 << 10)
    full.fill()
    line = one_line_error(cli("report", experiment, "--plots", full.path / "plots"), code=1)
    assert "No space left on device" in line
    assert not (full.path / "plots").exists()
    ro = small_fs(64 << 10)
    ro.read_only()
    line = one_line_error(cli("report", experiment, "--plots", ro.path / "plots"), code=1)
    assert "Read-only file system" in line
