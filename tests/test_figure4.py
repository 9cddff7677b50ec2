"""Figure 4 as one command: `wrn table run figure4` times the five networks' training step on
the CPU (at batch 1 and the fewest repetitions, to keep the test short) and `wrn report` puts
them beside the paper's milliseconds, as a table and as the bar chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import cli, one_line_error

from wideresnet import count_params, create_model
from wideresnet.experiments import figure4

QUICK = ["--device", "cpu", "--batch-size", "1", "--seconds", "0"]


@pytest.fixture(scope="module")
def timed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figure4") / "exp"
    result = cli("table", "run", "figure4", "--out", out, *QUICK)
    assert result.returncode == 0, result.stderr
    assert "figure4/cpu.json" in result.stdout
    return out


def test_the_figure_lists_the_papers_networks_and_milliseconds():
    listing = {t["table"]: t for t in json.loads(cli("table", "list", "--json").stdout)}
    assert listing["figure4"]["rows"] == 5 and listing["figure4"]["runnable"]
    shown = json.loads(cli("table", "show", "figure4", "--json").stdout)
    assert [(r["model"], r["paper_ms"]) for r in shown["rows"]] == [
        ("preact-resnet-164", 85),
        ("preact-resnet-1001", 512),
        ("wrn-40-4", 68),
        ("wrn-16-10", 164),
        ("wrn-28-10", 312),
    ]
    for row in shown["rows"]:
        with torch.device("meta"):  # shapes alone: no weights drawn
            assert row["params"] == count_params(create_model(row["model"], 10))
        assert row["paper_ratio"] == pytest.approx(row["paper_ms"] / 512)
    text = cli("table", "show", "figure4").stdout
    assert "WRN-28-10" in text and "0.61x" in text and "Titan X" in text


def test_every_network_is_timed_in_both_settings(timed):
    record = json.loads((timed / "figure4" / "cpu.json").read_text())
    assert record["batch_size"] == 1 and record["threads"] >= 1 and record["device"] == "cpu"
    assert set(record["rows"]) == {b.id for b in figure4.BARS}
    for settings in record["rows"].values():
        assert set(settings) == {"default", "fp32"}
        assert settings["fp32"]["setting"] == "eager fp32 NCHW"
        for t in settings.values():
            assert t["reps"] == figure4.MIN_REPS and t["warmup_seconds"] > 0
            assert 0 < t["min_ms"] <= t["q1_ms"] <= t["median_ms"] <= t["q3_ms"] <= t["max_ms"]


def test_the_report_puts_ours_beside_the_papers_with_both_ratios(timed, tmp_path):
    result = cli("report", timed, "--format", "json", "--plots", tmp_path / "plots")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the JSON alone; the plots line is on stderr
    assert report["cells"] == [] and "plot files" in result.stderr
    (figure,) = report["figure4"]
    record = json.loads((timed / "figure4" / "cpu.json").read_text())["rows"]
    reference = {s: record["resnet-1001"][s]["median_ms"] for s in ("default", "fp32")}
    assert [r["id"] for r in figure["rows"]] == [b.id for b in figure4.BARS]
    for row in figure["rows"]:
        for setting in ("default", "fp32"):
            ours = record[row["id"]][setting]["median_ms"]
            assert row[setting]["median_ms"] == ours
            assert row[f"{setting}_ratio"] == pytest.approx(ours / reference[setting], abs=1e-3)
        assert row["paper_ratio"] == pytest.approx(row["paper_ms"] / 512, abs=1e-3)
    markdown = cli("report", timed).stdout
    assert "**figure4** on CPU: " in markdown and "batch 1, not the paper's 32" in markdown
    assert "| WRN-28-10 | 312 |" in markdown and "| 4.00 (Table 5) |" in markdown
    from PIL import Image

    with Image.open(tmp_path / "plots" / "figure4-cpu.png") as image:
        image.verify()
    assert (tmp_path / "plots" / "figure4-cpu.svg").stat().st_size > 0
    csv_text = cli("report", timed, "--format", "csv").stdout
    assert csv_text.startswith("device_name,id,label,paper_ms") and csv_text.count("\n") == 6


@pytest.mark.spawns
def test_a_second_run_keeps_what_was_timed_and_another_setup_is_refused(timed):
    record = timed / "figure4" / "cpu.json"
    before = record.read_bytes()
    again = cli("table", "run", "figure4", "--out", timed, *QUICK)
    assert again.returncode == 0 and "timed before" in again.stdout
    assert record.read_bytes() == before
    other = [*QUICK[:2], "--batch-size", "2", "--seconds", "0"]
    line = one_line_error(cli("table", "run", "figure4", "--out", timed, *other))
    assert "batch 1" in line and "choose another --out" in line
    assert record.read_bytes() == before


def test_options_of_the_other_kind_are_refused_by_name(tmp_path):
    line = one_line_error(cli("table", "run", "figure4", "--out", tmp_path, "--seeds", "0,1"))
    assert "--seeds" in line and "training tables only" in line
    line = one_line_error(
        cli("table", "run", "table6", "--dataset", "cifar10", "--out", tmp_path, "--seconds", "1")
    )
    assert "--seconds" in line and "figure4 only" in line
    line = one_line_error(cli("table", "run", "figure4", "--out", tmp_path, "--rows", "wrn-1"))
    assert "figure4 has no row 'wrn-1'" in line
    assert not (tmp_path / "figure4").exists()


def test_a_damaged_record_is_left_out_with_a_warning(tmp_path):
    record = tmp_path / "exp" / "figure4" / "cpu.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"device": "cpu"}')
    line = one_line_error(cli("report", tmp_path / "exp"))
    assert "cpu.json: field device_name is missing" in line
    record.write_text("[" * 100_000)
    line = one_line_error(cli("report", tmp_path / "exp"))
    assert "cpu.json: not valid JSON (nested too deeply)" in line


def test_the_ledger_keeps_the_timings_and_reports_them_alike(timed, tmp_path):
    ledger = tmp_path / "results" / "figure4-cpu"
    saved = cli("table", "save", timed, "--to", ledger)
    assert saved.returncode == 0, saved.stderr
    assert (ledger / "figure4" / "cpu.json").read_bytes() == (
        timed / "figure4" / "cpu.json"
    ).read_bytes()
    provenance = json.loads((ledger / "provenance.json").read_text())
    assert provenance["figure4"] == ["figure4/cpu.json"] and provenance["runs"] == 0
    assert cli("report", ledger).stdout == cli("report", timed).stdout
