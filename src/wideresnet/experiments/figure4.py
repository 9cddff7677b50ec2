"""Figure 4 of the paper: thin against wide, in milliseconds.

The paper times one training step (forward, backward and the SGD update) of a minibatch of 32
images of 32x32 for five networks on a Titan X with cuDNN v5 (PAPER.md "Timing"). Here each
network's real training step (train/step.py, as `wrn train` runs it) is timed on one batch held
on the device, in the device's default training setting and in plain eager fp32: warm-up steps
first (compilation included, not timed), then single steps, each ended by a device sync, until
the time budget is spent (at least MIN_REPS steps, at most MAX_REPS); the median is reported with
the quartiles and the extremes. The record is EXP/figure4/<device>.json; a second run into the
same folder times only the networks not yet timed there.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from wideresnet.config import Config
from wideresnet.errors import ConfigError, RunError
from wideresnet.files import parse_json, read_text, write_json
from wideresnet.train.calibrate import WARMUP_STEPS, Held
from wideresnet.train.cpu import cpu_model
from wideresnet.train.environment import device_name
from wideresnet.train.records import typed_fields
from wideresnet.train.runtime import Runtime, resolve_device

log = logging.getLogger(__name__)

NAME = "figure4"
TITLE = "Thin against wide: time of one training step, batch 32 at 32x32 (Figure 4)"
PAPER_DEVICE = "NVIDIA Titan X, cuDNN v5 (the paper)"
PAPER_BATCH = 32
MIN_REPS, MAX_REPS = 3, 200
DEFAULT_SECONDS = 10.0  # timed per network and setting, after warm-up
SETTINGS = ("default", "fp32")
RECORD_BYTES = 1 << 20  # a record of five networks in two settings is a few kB
MEASURED = (
    "one training step (forward, backward, SGD update) of one batch held on the device, wall "
    "clock with the device synchronised after each step; warm-up steps (compilation included) "
    "not timed; the median over the timed steps, with quartiles and extremes"
)


@dataclass(frozen=True)
class Bar:
    """One network of the figure: its bar's milliseconds, and its error as the paper gives it."""

    id: str
    model: str
    label: str
    paper_ms: float
    paper_error: float  # CIFAR-10 test error (%), from the table named in error_source
    error_source: str


BARS = (
    Bar("resnet-164", "preact-resnet-164", "pre-act ResNet-164", 85, 5.46, "Table 5"),
    Bar(
        "resnet-1001",
        "preact-resnet-1001",
        "pre-act ResNet-1001",
        512,
        4.92,
        "Table 5 (4.64 with batch 64)",
    ),
    Bar("wrn-40-4", "wrn-40-4", "WRN-40-4", 68, 4.53, "Table 5"),
    Bar("wrn-16-10", "wrn-16-10", "WRN-16-10", 164, 4.56, "Table 4 (ZCA)"),
    Bar("wrn-28-10", "wrn-28-10", "WRN-28-10", 312, 4.00, "Table 5"),
)
REFERENCE = "resnet-1001"  # the ratios are to it, as the paper's "x times faster"


@dataclass
class Timing:
    """One network in one setting: milliseconds per step over `reps` timed steps."""

    setting: str  # what the step ran as, in words
    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    reps: int
    warmup_seconds: float

    @classmethod
    def of(cls, setting: str, seconds: list[float], warmup: float) -> Timing:
        ms = sorted(s * 1000 for s in seconds)
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else ms * 3
        return cls(setting, statistics.median(ms), q1, q3, ms[0], ms[-1], len(ms), warmup)


def bar(bar_id: str) -> Bar:
    for b in BARS:
        if b.id == bar_id:
            return b
    raise ConfigError(f"{NAME} has no row {bar_id!r}; its rows: {', '.join(b.id for b in BARS)}")


def describe() -> dict[str, Any]:
    """`wrn table show figure4 --json`: the bars, the paper's numbers and our parameters."""
    from wideresnet.models import create_model, model_summary

    rows = []
    for b in BARS:
        with torch.device("meta"):  # the count from shapes alone
            params = model_summary(create_model(b.model, 10))["params"]
        rows.append({**asdict(b), "params": params, "paper_ratio": ratio_to_reference(b.id)})
    return {
        "table": NAME,
        "title": TITLE,
        "paper_device": PAPER_DEVICE,
        "batch_size": PAPER_BATCH,
        "measured": MEASURED,
        "rows": rows,
    }


def ratio_to_reference(bar_id: str) -> float:
    """The paper's time of a bar over ResNet-1001's."""
    return bar(bar_id).paper_ms / bar(REFERENCE).paper_ms


def setting_name(runtime: Runtime) -> str:
    """A runtime in words: 'eager bf16 channels_last', 'compiled fp32 NCHW, CUDA graphs'."""
    how = "compiled" if runtime.compile else "eager"
    how = "whole step compiled" if runtime.whole_step else how
    layout = "channels_last" if runtime.channels_last else "NCHW"
    extra = ", CUDA graphs" if runtime.cuda_graphs else ""
    return f"{how} {runtime.precision} {layout}{extra}"


def runtimes(device: torch.device) -> dict[str, Runtime]:
    """The two settings timed: what `wrn train` picks here for a paper-length run, and plain
    eager fp32 NCHW."""
    from wideresnet.bench import cpu_default

    cpu = cpu_default(BARS[0].model) if device.type == "cpu" else None
    chosen = Runtime.resolve(Config.from_dict({"device": str(device)}), device, 1, cpu)
    return {"default": chosen, "fp32": Runtime.eager(device)}


def time_step(model: str, runtime: Runtime, batch: int, seconds: float) -> Timing:
    """The step of `model` in `runtime`: warm-up, then single synchronised steps for `seconds`
    (at least MIN_REPS, at most MAX_REPS)."""
    held = Held(model, runtime, batch)
    warmup = held.train(WARMUP_STEPS[runtime.cuda_graphs])
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MAX_REPS and (
        len(times) < MIN_REPS or time.perf_counter() - start < seconds
    ):
        times.append(held.train(1))
    return Timing.of(setting_name(runtime), times, warmup)


@dataclass
class Record:
    """EXP/figure4/<device>.json: where and how the networks were timed, and their timings."""

    device: str
    device_name: str
    torch: str
    threads: int
    batch_size: int
    measured: str
    rows: dict  # bar id -> {setting: Timing as a dict}

    @property
    def stem(self) -> str:
        """The device in the file names of its record and plots: "cpu", or the GPU's name."""
        if self.device == "cpu":
            return "cpu"
        return re.sub(r"[^a-z0-9]+", "-", self.device_name.lower()).strip("-") or "device"

    def timing(self, bar_id: str, setting: str) -> Timing | None:
        values = self.rows.get(bar_id, {}).get(setting)
        return None if values is None else Timing(**typed_fields(Timing, values, bar_id))


def read_record(path: Path) -> Record:
    """The record in `path`; RunError naming the file when it does not read as one."""
    values = parse_json(read_text(path, "Figure 4 record", RECORD_BYTES), str(path))
    record = Record(**typed_fields(Record, values, str(path)))
    for bar_id, settings in record.rows.items():
        if bar_id not in {b.id for b in BARS} or not isinstance(settings, dict):
            raise RunError(f"{path}: row {bar_id!r} is not a network of the figure")
        for setting in settings:
            if setting not in SETTINGS:
                raise RunError(f"{path}: row {bar_id}: unknown setting {setting!r}")
            try:
                record.timing(bar_id, setting)
            except RunError as error:
                raise RunError(f"{path}: {error}") from None
    return record


def run_figure4(
    out: str | Path,
    device: str = "auto",
    *,
    rows: list[str] | None = None,
    seconds: float = DEFAULT_SECONDS,
    batch: int = PAPER_BATCH,
) -> Path:
    """Time the figure's networks on `device` into OUT/figure4/<device>.json (networks already
    timed there with the same setup are kept); returns the record's path."""
    if seconds < 0 or batch < 1:
        raise ConfigError(
            f"figure4: --seconds {seconds:g}, --batch-size {batch}: seconds at least 0 (0: "
            f"{MIN_REPS} timed steps), batch size at least 1"
        )
    chosen = [bar(r) for r in rows] if rows else list(BARS)
    torch_device = resolve_device(device)
    cuda = torch_device.type == "cuda"
    name = device_name(torch_device) if cuda else f"CPU: {cpu_model() or 'model unknown'}"
    record = Record(
        str(torch_device), name, torch.__version__, torch.get_num_threads(), batch, MEASURED, {}
    )
    path = Path(out) / NAME / f"{record.stem}.json"
    if path.exists():
        kept = read_record(path)
        setup = (kept.device_name, kept.torch, kept.threads, kept.batch_size)
        if setup != (record.device_name, record.torch, record.threads, record.batch_size):
            raise RunError(
                f"{path}: timed on {kept.device_name}, torch {kept.torch}, {kept.threads} "
                f"threads, batch {kept.batch_size}; this run differs: choose another --out"
            )
        record.rows = kept.rows
    settings = runtimes(torch_device)
    for b in chosen:
        for setting, runtime in settings.items():
            if record.timing(b.id, setting) is not None:
                log.info(f"{b.label} ({setting}): timed before in {path}, kept")
                continue
            timing = time_step(b.model, runtime, batch, seconds)
            log.info(
                f"{b.label} ({timing.setting}): {timing.median_ms:.1f} ms median of "
                f"{timing.reps} steps [{timing.min_ms:.1f}-{timing.max_ms:.1f}]"
            )
            record.rows.setdefault(b.id, {})[setting] = asdict(timing)
            write_json(path, asdict(record))  # after each network: an interrupted run keeps it
    return path


def collect_figure4(root: Path) -> tuple[list[Record], list[str]]:
    """(the Figure 4 records under an experiment folder, why each unreadable one is not)."""
    records, problems = [], []
    for path in sorted(root.rglob(f"{NAME}/*.json")):
        try:
            records.append(read_record(path))
        except RunError as error:
            problems.append(str(error))
    return records, problems


def figure_rows(record: Record) -> list[dict[str, Any]]:
    """The report's rows of one record: ours beside the paper's, and both as ratios to
    ResNet-1001 (None where a network or ResNet-1001 was not timed)."""
    rows = []
    for b in BARS:
        row: dict[str, Any] = {
            "id": b.id,
            "label": b.label,
            "model": b.model,
            "paper_ms": b.paper_ms,
            "paper_ratio": round(ratio_to_reference(b.id), 3),
            "paper_error": b.paper_error,
            "error_source": b.error_source,
        }
        for setting in SETTINGS:
            timing, reference = record.timing(b.id, setting), record.timing(REFERENCE, setting)
            row[setting] = None if timing is None else asdict(timing)
            ratio = None
            if timing is not None and reference is not None:
                ratio = round(timing.median_ms / reference.median_ms, 3)
            row[f"{setting}_ratio"] = ratio
        if row["default"] or row["fp32"]:
            rows.append(row)
    return rows


# -- in the report (`wrn report`) --------------------------------------------------------------


def _ms(timing: dict[str, Any] | None) -> tuple[str, str]:
    if timing is None:
        return "-", "-"
    spread = f"{timing['q1_ms']:.1f}-{timing['q3_ms']:.1f} (n={timing['reps']})"
    return f"{timing['median_ms']:.1f}", spread


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(record: Record) -> list[str]:
    rows = figure_rows(record)
    first = next((r["default"] for r in rows if r["default"]), None)
    setting = first["setting"] if first else "-"
    batch = record.batch_size
    batch_note = "" if batch == PAPER_BATCH else f" (batch {batch}, not the paper's 32)"
    lines = [
        f"**figure4** on {record.device_name} ({record.device}, torch {record.torch}, "
        f"{record.threads} threads){batch_note}: {TITLE}. Paper: "
        f"{PAPER_DEVICE}. Ours: {record.measured}; default = `wrn train`'s setting "
        f"here ({setting}); ratios to pre-act ResNet-1001 in the same setting.",
        "",
        "| network | paper ms | ours ms (default) | quartiles | ours ms (fp32) | quartiles | "
        "paper / 1001 | ours / 1001 (default) | ours / 1001 (fp32) | paper C10 error |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        default, fp32 = _ms(r["default"]), _ms(r["fp32"])
        lines.append(
            f"| {r['label']} | {r['paper_ms']:g} | {default[0]} | {default[1]} | {fp32[0]} | "
            f"{fp32[1]} | {_ratio(r['paper_ratio'])} | {_ratio(r['default_ratio'])} | "
            f"{_ratio(r['fp32_ratio'])} | {r['paper_error']:.2f} ({r['error_source']}) |"
        )
    return [*lines, ""]


def as_json(record: Record) -> dict[str, Any]:
    info = {k: v for k, v in asdict(record).items() if k != "rows"}
    return {**info, "paper_device": PAPER_DEVICE, "rows": figure_rows(record)}
