"""The report's plots (PNG and SVG, with matplotlib): learning curves in the style of the
paper's Figures 2 and 3 (test error solid, train error dashed, against epoch, one colour per
row), ours against the paper per cell, our curve beside the authors' own log, and Figure 4's
bar chart (milliseconds per step, ours beside the paper's)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from wideresnet.errors import ConfigError, WriteError
from wideresnet.experiments import figure4
from wideresnet.experiments.registry import FIGURES, authors_log
from wideresnet.extras import require
from wideresnet.files import atomic_write
from wideresnet.report import RunRecord, median_curve

FORMATS = ("png", "svg")


def _pyplot():
    require("plots", "--plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(records: list[RunRecord], key: str) -> tuple[list[int], list[float]]:
    curve = median_curve(records, key)
    return list(curve), list(curve.values())


def _save(figure, folder: Path, name: str) -> list[Path]:
    """The figure as PNG and SVG, each written atomically (WriteError naming it on failure)."""
    paths = []
    for fmt in FORMATS:
        path, buffer = folder / f"{name}.{fmt}", io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=110, bbox_inches="tight")
        atomic_write(path, buffer.getvalue())
        paths.append(path)
    return paths


def _draw_cells(axis, groups: list[tuple[str, list[RunRecord]]]) -> None:
    """Median test error (solid) and train error (dashed) per epoch, one colour per label."""
    for index, (label, records) in enumerate(groups):
        colour = f"C{index}"
        epochs, test = _curve(records, "test_error")
        axis.plot(epochs, test, color=colour, linestyle="-", label=f"{label} test")
        epochs, train = _curve(records, "train_error")
        axis.plot(epochs, train, color=colour, linestyle="--", label=f"{label} train")
    axis.set_xlabel("epoch")
    axis.set_ylabel("error (%)")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def _group(records: list[RunRecord]) -> dict[tuple[str, str, str], list[RunRecord]]:
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.tag.table, r.tag.row, r.tag.column), []).append(r)
    return groups


def write_plots(
    records: list[RunRecord],
    cells: list[dict[str, Any]],
    folder: Path,
    timings: list[figure4.Record] = (),
) -> list[Path]:
    """Every plot the runs and timings allow; returns the files written."""
    plt = _pyplot()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--plots {folder}: exists and is not a folder")
    created = not folder.exists()
    try:
        written = _write_all(plt, records, cells, folder)
        return written + [p for t in timings for p in _figure4(plt, t, folder)]
    except WriteError:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # nothing was written: no empty folder left behind
        raise


def _write_all(plt, records: list[RunRecord], cells: list[dict[str, Any]], folder: Path):
    groups, written = _group(records), []
    for table, column in dict.fromkeys((t, c) for t, _, c in groups):
        figure, axis = plt.subplots(figsize=(7, 4.5))
        rows = [(row, recs) for (t, row, c), recs in groups.items() if (t, c) == (table, column)]
        _draw_cells(axis, rows)
        axis.set_title(f"{table} on {column}: test error solid, train error dashed")
        written += _save(figure, folder, f"curves-{table}-{column}")
        plt.close(figure)
    for figure_spec in FIGURES.values():
        panels = {
            title: [(f"{t}/{r}", groups[(t, r, c)]) for t, r, c in cells_ if (t, r, c) in groups]
            for title, cells_ in figure_spec.panels.items()
        }
        panels = {title: curves for title, curves in panels.items() if curves}
        if not panels:
            continue
        figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
        for axis, (title, curves) in zip(axes[0], panels.items()):
            _draw_cells(axis, curves)
            axis.set_title(title)
        figure.suptitle(figure_spec.title, fontsize=9)
        written += _save(figure, folder, figure_spec.name)
        plt.close(figure)
    written += _vs_paper(plt, cells, folder)
    written += _against_authors(plt, groups, folder)
    return written


def _vs_paper(plt, cells: list[dict[str, Any]], folder: Path) -> list[Path]:
    written = []
    for table in dict.fromkeys(c["table"] for c in cells):
        points = [c for c in cells if c["table"] == table and None not in (c["paper"], c["median"])]
        if not points:
            continue
        figure, axis = plt.subplots(figsize=(5, 5))
        for index, c in enumerate(points):
            axis.errorbar(
                c["paper"],
                c["median"],
                yerr=[[c["median"] - c["min"]], [c["max"] - c["median"]]],
                fmt="o",
                color=f"C{index % 10}",
                label=f"{c['label']} {c['dataset']}",
            )
        low = min(min(c["paper"], c["min"]) for c in points)
        high = max(max(c["paper"], c["max"]) for c in points)
        axis.plot([low, high], [low, high], color="grey", linestyle=":", label="ours = paper")
        axis.set_xlabel("paper test error (%)")
        axis.set_ylabel("our test error (%), median and min-max")
        axis.set_title(f"{table}: ours against the paper")
        axis.legend(fontsize=7)
        written += _save(figure, folder, f"vs-paper-{table}")
        plt.close(figure)
    return written


def _against_authors(plt, groups: dict, folder: Path) -> list[Path]:
    written = []
    for (table, row, column), records in groups.items():
        log = authors_log(table, row, column)
        if log is None:
            continue
        figure, axis = plt.subplots(figsize=(7, 4.5))
        axis.plot(
            [e["epoch"] for e in log],
            [e["test_error"] for e in log],
            color="black",
            label="the authors' log, test error",
        )
        epochs, test = _curve(records, "test_error")
        axis.plot(epochs, test, color="C0", label="ours, test error (median)")
        axis.set_xlabel("epoch")
        axis.set_ylabel("test error (%)")
        axis.set_title(f"{table} {row} on {column}: ours and the authors' own run")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        written += _save(figure, folder, f"authors-{table}-{row}-{column}")
        plt.close(figure)
    return written


def _bars(axis, labels: list[str], values: list, colour: str, offset: float, fmt: str = ",.0f"):
    """Bars at positions shifted by `offset`, each labelled with its value (none where None)."""
    for index, value in enumerate(values):
        if value is None:
            continue
        drawn = axis.bar(index + offset, value, width=0.38, color=colour)
        axis.bar_label(drawn, labels=[format(value, fmt)], fontsize=7)
    axis.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)


def _figure4(plt, record: figure4.Record, folder: Path) -> list[Path]:
    """Figure 4 as the paper draws it: milliseconds per step of each network (the paper's
    Titan X beside ours), with the paper's CIFAR-10 error on each network's label; and the
    times as ratios to ResNet-1001, the comparison that does not depend on the device."""
    rows = figure4.figure_rows(record)
    labels = [f"{r['label']}\n({r['paper_error']:.2f}%)" for r in rows]
    median = [(r["default"] or {}).get("median_ms") for r in rows]
    fp32 = [(r["fp32"] or {}).get("median_ms") for r in rows]
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    _bars(axes[0], labels, [r["paper_ms"] for r in rows], "grey", 0)
    axes[0].set_title(f"the paper: {figure4.PAPER_DEVICE}", fontsize=9)
    _bars(axes[1], labels, median, "C0", -0.2)
    _bars(axes[1], labels, fp32, "C1", 0.2)
    axes[1].set_title(f"ours: {record.device_name}, torch {record.torch}", fontsize=9)
    axes[1].legend(
        handles=[
            plt.Rectangle((0, 0), 1, 1, color="C0", label="default setting"),
            plt.Rectangle((0, 0), 1, 1, color="C1", label="eager fp32"),
        ],
        fontsize=7,
    )
    axes[0].set_ylabel(f"ms per step, batch {figure4.PAPER_BATCH}")
    axes[1].set_ylabel(f"ms per step, batch {record.batch_size}")
    _bars(axes[2], labels, [r["paper_ratio"] for r in rows], "grey", -0.2, ".2f")
    _bars(axes[2], labels, [r["default_ratio"] for r in rows], "C0", 0.2, ".2f")
    axes[2].set_ylabel("time / pre-act ResNet-1001's")
    axes[2].set_title("ratios: the paper (grey) and ours (default setting)", fontsize=9)
    figure.suptitle(f"{figure4.TITLE}; under each name the paper's CIFAR-10 error", fontsize=10)
    written = _save(figure, folder, f"figure4-{record.stem}")
    plt.close(figure)
    return written
