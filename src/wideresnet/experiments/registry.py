"""The paper's experiments as data (PAPER.md "Tables"): every row of Tables 2-8, the paper's
test error per dataset column and its parameter count, and which runs Figures 2 and 3 plot.

A row knows what it trains: the model name and options; the table knows its preprocessing; the
dataset column picks the preset (cifar for CIFAR-10/100, svhn for SVHN) and the dropout rate
(0.3 on CIFAR, 0.4 on SVHN, PAPER.md Table 6).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wideresnet.config import Config
from wideresnet.errors import ConfigError
from wideresnet.recipes import make_config

PRESET_OF = {"cifar10": "cifar", "cifar100": "cifar", "svhn": "svhn", "imagenet": "imagenet"}
DROPOUT_OF = {"cifar10": 0.3, "cifar100": 0.3, "svhn": 0.4}


@dataclass(frozen=True)
class Row:
    """One row: what it trains and what the paper reports for it."""

    id: str  # short and path-safe: used in --rows and in run directory names
    model: str | None  # None: a network wideresnet does not build (said in `note`)
    paper: dict[str, float | None]  # column -> test error (%); None: '-' in the paper
    paper_params: float | None  # millions, as printed
    options: dict = field(default_factory=dict)  # model options (block, blocks_per_group)
    dropout: bool = False  # the dataset's dropout rate (Table 6's "yes")
    note: str = ""
    params_note: str = ""  # why our count differs from the printed one, when it does
    label: str = ""  # as the paper names the row, when not the id
    preset: str | None = None  # a named recipe for every column (default: by dataset)
    settings: dict = field(default_factory=dict)  # other config values (data, optim)

    def preset_for(self, column: str) -> str:
        return self.preset or PRESET_OF[column]

    def config(self, column: str) -> dict:
        """Flat config values of this row for a dataset column (model and its options)."""
        values = {"model": self.model, **self.options, **self.settings}
        if self.dropout:
            values["dropout"] = DROPOUT_OF[column]
        elif column == "svhn" and self.model and self.model.startswith("wrn-"):
            values.setdefault("dropout", 0.0)  # the svhn preset's dropout is Table 6's "yes"
        return values


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    rows: tuple[Row, ...]
    columns: tuple[str, ...]
    preprocess: str = "meanstd"
    statistic: str = "median of 5 runs"
    runnable: bool = True
    note: str = ""

    def row(self, row_id: str) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        known = ", ".join(r.id for r in self.rows)
        raise ConfigError(f"{self.name} has no row {row_id!r}; its rows: {known}")

    def values_for(self, row: Row, column: str) -> dict:
        """The flat config values a row's runs give beside its preset (the table's
        preprocessing included)."""
        values = row.config(column)
        if self.preprocess != "meanstd":
            values["preprocess"] = self.preprocess
        return values

    def config_for(self, row: Row, column: str, dataset: str) -> Config:
        """The paper's config of a cell, trained on `dataset`: what its runs are compared with."""
        values = {**self.values_for(row, column), "dataset": dataset}
        return make_config(row.preset_for(column), values)


def _wrn(d: int, k: float, c10, c100=None, svhn=None, params=None, **kw) -> Row:
    paper = {"cifar10": c10, "cifar100": c100, "svhn": svhn}
    k_text = int(k) if float(k).is_integer() else k
    return Row(f"{d}-{k_text}", f"wrn-{d}-{k_text}", paper, params, **kw)


def _block(depth: int, block: tuple[int, ...], params: float, c10: float) -> Row:
    name = ",".join(map(str, block))
    row_id = "b" + "".join(map(str, block))
    return Row(
        row_id, f"wrn-{depth}-2", {"cifar10": c10}, params, {"block": block}, label=f"B({name})"
    )


TABLE2 = Table(
    "table2",
    "Block types B(M), k = 2, CIFAR-10; N = (d - 4) / 6 whatever the block",
    (
        _block(40, (1, 3, 1), 1.4, 6.06),
        _block(40, (3, 1), 1.2, 5.78),
        _block(40, (1, 3), 1.3, 6.42),
        _block(40, (3, 1, 1), 1.3, 5.86),
        _block(28, (3, 3), 1.5, 5.73),
        _block(22, (3, 1, 3), 1.1, 5.78),
    ),
    ("cifar10",),
)

TABLE3 = Table(
    "table3",
    "Deepening factor l, WRN-40-2, CIFAR-10; N = (d - 4) / (3 l), 2.2M parameters each",
    tuple(
        Row(
            f"l{depth}",
            "wrn-40-2",
            {"cifar10": c10},
            2.2,
            {"block": (3,) * depth, "blocks_per_group": 12 // depth},
            label=f"l = {depth}",
        )
        for depth, c10 in ((1, 6.69), (2, 5.43), (3, 5.65), (4, 5.93))
    ),
    ("cifar10",),
)

TABLE4 = Table(
    "table4",
    "Depth x width, ZCA preprocessing",
    (
        _wrn(40, 1, 6.85, 30.89, params=0.6),
        _wrn(40, 2, 5.33, 26.04, params=2.2),
        _wrn(40, 4, 4.97, 22.89, params=8.9),
        _wrn(40, 8, 4.66, None, params=35.7),
        _wrn(28, 10, 4.17, 20.50, params=36.5),
        _wrn(28, 12, 4.33, 20.43, params=52.5),
        _wrn(22, 8, 4.38, 21.22, params=17.2),
        _wrn(22, 10, 4.44, 20.75, params=26.8),
        _wrn(16, 8, 4.81, 22.07, params=11.0),
        _wrn(16, 10, 4.56, 21.59, params=17.1),
    ),
    ("cifar10", "cifar100"),
    preprocess="zca",
)

TABLE5 = Table(
    "table5",
    "Thin against wide ResNets, mean/std preprocessing, no dropout, batch 128",
    (
        Row("resnet-110", "resnet-110", {"cifar10": 6.43, "cifar100": 25.16}, 1.7),
        Row(
            "resnet-1202",
            "resnet-1202",
            {"cifar10": 7.93, "cifar100": 27.82},
            10.2,
            params_note="the paper prints 10.2M; He et al. (and this network) have 19.4M",
        ),
        Row("preact-resnet-110", "preact-resnet-110", {"cifar10": 6.37, "cifar100": None}, 1.7),
        Row("preact-resnet-164", "preact-resnet-164", {"cifar10": 5.46, "cifar100": 24.33}, 1.7),
        Row(
            "preact-resnet-1001",
            "preact-resnet-1001",
            {"cifar10": 4.92, "cifar100": 22.71},
            10.2,
            note="C10 4.64 with batch 64",
            params_note="10.2M counts conv and linear weights; with BN parameters it is 10.3M",
        ),
        Row("wrn-40-4", "wrn-40-4", {"cifar10": 4.53, "cifar100": 21.18}, 8.9),
        Row("wrn-16-8", "wrn-16-8", {"cifar10": 4.27, "cifar100": 20.43}, 11.0),
        Row("wrn-28-10", "wrn-28-10", {"cifar10": 4.00, "cifar100": 19.25}, 36.5),
    ),
    ("cifar10", "cifar100"),
    statistic="mean of 5 runs",
)

TABLE6 = Table(
    "table6",
    "Dropout in residual blocks (0.3 on CIFAR, 0.4 on SVHN), mean/std preprocessing",
    (
        _wrn(16, 4, 5.02, 24.03, 1.85),
        Row(
            "16-4-dropout",
            "wrn-16-4",
            {"cifar10": 5.24, "cifar100": 23.91, "svhn": 1.64},
            2.7,
            dropout=True,
        ),
        _wrn(28, 10, 4.00, 19.25, None),
        Row(
            "28-10-dropout",
            "wrn-28-10",
            {"cifar10": 3.89, "cifar100": 18.85, "svhn": None},
            36.5,
            dropout=True,
        ),
        _wrn(52, 1, 6.43, 29.89, 2.08),
        Row(
            "52-1-dropout",
            "wrn-52-1",
            {"cifar10": 6.28, "cifar100": 29.78, "svhn": 1.70},
            0.8,
            dropout=True,
        ),
    ),
    ("cifar10", "cifar100", "svhn"),
    statistic="median of 5 runs (CIFAR), mean (SVHN)",
    note="Best single runs: WRN-40-10 + dropout C10 3.8, C100 18.3; WRN-16-8 + dropout SVHN 1.54",
)

IMAGENET_NOTE = (
    "fb.resnet.torch's recipe (--preset imagenet), streamed from DIR/train/<wnid>/ and "
    "DIR/val/<wnid>/; top-5 errors are in each row's note"
)

TABLE7 = Table(
    "table7",
    "ImageNet: basic-block ResNet-18/34 widened by k (top-1 error %, single 224 crop)",
    tuple(
        Row(
            f"wrn-{d}-{k}",
            f"wrn-{d}-{k}-imagenet",
            {"imagenet": top1},
            params,
            note=f"top-5 {top5}",
        )
        for d, k, top1, top5, params in (
            (18, "1", 30.4, 10.93, 11.7),
            (18, "1.5", 27.06, 9.0, 25.9),
            (18, "2", 25.58, 8.06, 45.6),
            (18, "3", 24.06, 7.33, 101.8),
            (34, "1", 26.77, 8.67, 21.8),
            (34, "1.5", 24.5, 7.58, 48.6),
            (34, "2", 23.39, 7.00, 86.0),
        )
    ),
    ("imagenet",),
    statistic="single run",
    note=IMAGENET_NOTE,
)

TABLE8 = Table(
    "table8",
    "ImageNet: bottleneck networks (top-1 error %, single 224 crop)",
    (
        Row(
            "resnet-50",
            "resnet-50",
            {"imagenet": 24.01},
            25.6,
            note="top-5 7.02; 49 ms/batch of 16",
        ),
        Row("resnet-101", "resnet-101", {"imagenet": 22.44}, 44.5, note="top-5 6.21; 82 ms"),
        Row("resnet-152", "resnet-152", {"imagenet": 22.16}, 60.2, note="top-5 6.16; 115 ms"),
        Row("wrn-50-2", "wrn-50-2", {"imagenet": 21.9}, 68.9, note="top-5 6.03; 93 ms"),
        Row(
            "pre-resnet-200",
            None,
            {"imagenet": 21.66},
            64.7,
            note="top-5 5.79; 154 ms; the ImageNet pre-activation ResNet-200 is not built here",
        ),
    ),
    ("imagenet",),
    statistic="single run",
    note=IMAGENET_NOTE,
)

BEYOND = Table(
    "beyond",
    "Beyond the paper: WRN-28-10 with the modern recipes (recipes.py), published errors",
    (
        Row(
            "cutout",
            "wrn-28-10",
            {"cifar10": 3.08, "cifar100": 18.41},
            36.5,
            preset="cifar-cutout",
            note="DeVries & Taylor 2017; CIFAR-100 with --cutout 8",
        ),
        Row(
            "autoaugment",
            "wrn-28-10",
            {"cifar10": 2.6, "cifar100": 17.1},
            36.5,
            preset="cifar-autoaugment",
            note="Cubuk et al. 2019",
        ),
        Row(
            "randaugment",
            "wrn-28-10",
            {"cifar10": 2.7, "cifar100": None},
            36.5,
            preset="cifar-autoaugment",
            settings={"policy": "randaugment:3:5"},
            note="Cubuk et al. 2020, N=3 M=5 on CIFAR-10, on AutoAugment's training setup",
        ),
        Row(
            "trivialaugment",
            "wrn-28-10",
            {"cifar10": 2.5, "cifar100": 15.7},
            36.5,
            preset="cifar-trivialaugment",
            note="Mueller & Hutter 2021, wide space + Cutout",
        ),
        Row(
            "sam",
            "wrn-28-10",
            {"cifar10": 2.7, "cifar100": None},
            36.5,
            preset="cifar-sam",
            note="Foret et al. 2021, basic augmentation",
        ),
        Row(
            "rd-wrn-40-2",
            "wrn-40-2",
            {"cifar10": None, "cifar100": 24.39},
            None,
            preset="cifar100-kd",
            note="RepDistiller's teacher (CRD, Tian et al. 2020, Table 1: 75.61% accuracy)",
        ),
        Row(
            "rd-wrn-16-2",
            "wrn-16-2",
            {"cifar10": None, "cifar100": 26.74},
            None,
            preset="cifar100-kd",
            note="RepDistiller's student trained alone (CRD Table 1: 73.26%)",
        ),
        Row(
            "rd-kd-wrn-16-2",
            "wrn-16-2",
            {"cifar10": None, "cifar100": 25.08},
            None,
            preset="cifar100-kd",
            note="KD from WRN-40-2 (CRD Table 1: 74.92%); give the teacher: -- --teacher RUN",
        ),
        Row(
            "rd-wrn-40-1",
            "wrn-40-1",
            {"cifar10": None, "cifar100": 28.02},
            None,
            preset="cifar100-kd",
            note="RepDistiller's student trained alone (CRD Table 1: 71.98%)",
        ),
        Row(
            "rd-kd-wrn-40-1",
            "wrn-40-1",
            {"cifar10": None, "cifar100": 26.46},
            None,
            preset="cifar100-kd",
            note="KD from WRN-40-2 (CRD Table 1: 73.54%); give the teacher: -- --teacher RUN",
        ),
    ),
    ("cifar10", "cifar100"),
    statistic="as each paper reports (mean of several runs)",
)

TABLES = {t.name: t for t in (TABLE2, TABLE3, TABLE4, TABLE5, TABLE6, TABLE7, TABLE8, BEYOND)}


@dataclass(frozen=True)
class Figure:
    """Which runs a figure of the paper plots: (table, row, column) per curve, by panel."""

    name: str
    title: str
    panels: dict[str, tuple[tuple[str, str, str], ...]]


FIGURES = {
    "figure2": Figure(
        "figure2",
        "Thin and wide ResNets: pre-act ResNet-164 against WRN-28-10 (as we read Figure 2)",
        {
            "CIFAR-10": (
                ("table5", "preact-resnet-164", "cifar10"),
                ("table5", "wrn-28-10", "cifar10"),
            ),
            "CIFAR-100": (
                ("table5", "preact-resnet-164", "cifar100"),
                ("table5", "wrn-28-10", "cifar100"),
            ),
        },
    ),
    "figure3": Figure(
        "figure3",
        "SVHN: thin against wide, and the effect of dropout (as we read Figure 3)",
        {
            "thin and wide": (("table6", "52-1", "svhn"), ("table6", "16-4", "svhn")),
            "dropout": (("table6", "16-4", "svhn"), ("table6", "16-4-dropout", "svhn")),
        },
    ),
}

# The authors' own per-epoch logs (experiments/authors_logs/README.md), by the cell they ran
AUTHORS_LOGS = {
    ("table4", "40-4", "cifar10"): "wrn-40-4_cifar10_zca.jsonl",
    ("table5", "preact-resnet-164", "cifar10"): "preact-resnet-164_cifar10_zca.jsonl",
}


def authors_log(table: str, row: str, column: str) -> list[dict] | None:
    """The authors' per-epoch log of a cell, with test_error (%) added; None if there is none."""
    name = AUTHORS_LOGS.get((table, row, column))
    if name is None:
        return None
    path = Path(__file__).parent / "authors_logs" / name
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{**r, "test_error": round(100.0 - r["test_acc"], 4)} for r in rows]


def get_table(name: str, grids: Mapping[str, Table] | None = None) -> Table:
    """A paper table, or one of `grids` (the user's tables read from grid files), by name."""
    if name in TABLES:
        return TABLES[name]
    if grids and name in grids:
        return grids[name]
    raise ConfigError(
        f"unknown table {name!r}; tables: {', '.join(TABLES)}, or a grid file (NAME.toml)"
    )
