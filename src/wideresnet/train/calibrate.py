"""CPU settings by measurement: each candidate timed once per machine, chosen per run.

A CPU's best training setting depends on its instructions (bf16 units, AVX-512 or AVX2 only),
its cores and the torch build; none of them is known in advance. So each candidate (fp32 or
bf16, NCHW or channels_last, eager, the model compiled or the whole step compiled) is timed
on REFERENCE at batch 128: training images/s and the seconds compiling costs (the training
graph and the evaluation graph). `wrn bench MODEL --device cpu --calibrate` measures this
machine (`wrn train` never does: a benchmark inside a run would draw weights and reseed); the
figures go to $WRN_CACHE_DIR/cpu-settings.json under the machine's key (the
CPU's model name, its instruction class, the threads and the torch version): another CPU, an
ISA cap (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY), a thread count or a torch version has no
figures until it is measured.

With figures, a run's choice is the candidate with the least estimated time: its compile
seconds (scaled by the network's depth) plus the run's eager fp32 training time (from its
multiply-accumulates and images) over the candidate's speed-up. A short run never pays for
compiling; where the crossover lies is in the reason config.json records. Without figures, a
rule by instruction class (RULES): eager bf16 channels_last where the CPU has bf16 units,
eager fp32 channels_last elsewhere; compiling only when asked for.
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from wideresnet.config import Config, OptimConfig
from wideresnet.data.cache import cache_dir, read_record, write_record
from wideresnet.models import create_model, model_summary
from wideresnet.train.cpu import BASELINE, CANDIDATES, Candidate, cpu_class, cpu_model
from wideresnet.train.optim import build_optimizer
from wideresnet.train.runtime import Runtime
from wideresnet.train.step import EpochSums, Step, make_step

log = logging.getLogger(__name__)

RECORD = "cpu-settings.json"
REFERENCE, REFERENCE_BATCH = "wrn-16-2", 128
ROUNDS = 3  # of `steps` steps per candidate, interleaved; the median is kept
WARMUP_STEPS = {False: 2, True: 5}  # with CUDA graphs: recorded on a later call than the first

# Without figures of this machine: the candidates by preference, the first one the run's
# options allow. The medians of `wrn bench wrn-16-2 --device cpu --calibrate` on this
# project's 2-core AMD EPYC (Zen 4, AVX512-BF16), torch 2.13, 2026-12-02, each class emulated
# below its own: eager bf16 channels_last 2.53x eager fp32 NCHW (compiled bf16: 2.47x); eager
# fp32 channels_last 1.36x under avx512 (the best compiled one 1.46x, after 14-34 s of
# compiling) and 1.19x under avx2 (1.22x): the eager choice is within 0-7% of the best.
EAGER_FIRST = ("eager fp32 channels_last", "eager fp32 NCHW", "compiled fp32 channels_last")
EAGER_FIRST += ("whole step compiled fp32 channels_last", "compiled fp32 NCHW")
RULES = {
    "avx512-bf16": ("eager bf16 channels_last", "compiled bf16 channels_last", *EAGER_FIRST),
    "avx512": EAGER_FIRST,
    "avx2": EAGER_FIRST,
}
RULES_MEASURED = "eager within 0-7% of compiled on each class, measured on a 2-core EPYC"


# -- timing one setting (wrn bench and the calibration) --------------------------------------


@dataclass
class Measured:
    setting: str
    images_per_second: float
    warmup_seconds: float
    inference_images_per_second: float
    inference_warmup_seconds: float


def synthetic(runtime: Runtime, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    return x.to(runtime.device), y.to(runtime.device)


def build_for_bench(model_name: str, runtime: Runtime) -> tuple[torch.nn.Module, Step]:
    """(model, its training step) for `runtime`, seeded: what a benchmark trains."""
    torch.manual_seed(0)
    model = runtime.prepare(create_model(model_name, 10))
    optimizer = build_optimizer(model, OptimConfig(), runtime.fused_sgd)
    return model, make_step(runtime.compiled(model), optimizer, runtime)


def timed(run, steps: int, runtime: Runtime) -> tuple[float, float]:
    """(seconds for `steps` calls after warm-up, warm-up seconds); run(i) is call i."""
    warmup_steps = WARMUP_STEPS[runtime.cuda_graphs]
    start = time.perf_counter()
    for index in range(warmup_steps):
        run(index)
    runtime.sync()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for index in range(warmup_steps, warmup_steps + steps):
        run(index)
    runtime.sync()
    return time.perf_counter() - start, warmup


class Held:
    """One setting's model and training step on one synthetic batch held on the device."""

    def __init__(self, model_name: str, runtime: Runtime, batch: int) -> None:
        self.runtime = runtime
        self.model, self.step = build_for_bench(model_name, runtime)
        self.x, self.y = synthetic(runtime, batch, getattr(self.model, "input_size", 32))
        self.sums = EpochSums.start(runtime.torch_device)
        self.calls = 0

    def train(self, steps: int) -> float:
        """Wall seconds of `steps` training steps, the device synchronised at the end."""
        self.model.train()
        start = time.perf_counter()
        for _ in range(steps):
            self.step(self.x, self.y, self.sums, self.calls)
            self.calls += 1
        self.runtime.sync()
        return time.perf_counter() - start

    @torch.no_grad()
    def infer(self, steps: int) -> float:
        """Wall seconds of `steps` forwards in eval mode (the step's model: compiled or not)."""
        self.model.eval()
        start = time.perf_counter()
        for _ in range(steps):
            with self.runtime.autocast():
                self.step.model(self.runtime.input(self.x))
        self.runtime.sync()
        return time.perf_counter() - start


def measure(model_name: str, setting: str, runtime: Runtime, batch: int, steps: int) -> Measured:
    """Training, then inference, images/s of `runtime` on one batch held on the device."""
    held, warmup = Held(model_name, runtime, batch), WARMUP_STEPS[runtime.cuda_graphs]
    train_warmup, train = held.train(warmup), held.train(steps)
    infer_warmup, infer = held.infer(warmup), held.infer(steps)
    return Measured(
        setting, batch * steps / train, train_warmup, batch * steps / infer, infer_warmup
    )


# -- the figures of this machine ----------------------------------------------------------------


def runtime_of(candidate: Candidate) -> Runtime:
    """The runtime of a candidate on the CPU."""
    step = candidate.compile == "step"
    return Runtime(
        "cpu",
        candidate.precision,
        candidate.channels_last,
        compile=candidate.compile != "off",
        fused_sgd=step,
        whole_step=step,
    )


def machine_key() -> dict[str, Any]:
    """What a calibration holds for: another value of any of them needs measuring again."""
    return {
        "cpu": cpu_model() or "unknown CPU",
        "class": cpu_class(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def key_text(key: dict[str, Any]) -> str:
    return f"{key['cpu']} | {key['class']} | {key['threads']} threads | torch {key['torch']}"


@dataclass(frozen=True)
class Figures:
    """Speed-ups against eager fp32 NCHW and compile seconds, per candidate, on REFERENCE."""

    eager_images_per_second: float
    rows: dict[str, tuple[float, float]]  # candidate name -> (speed-up, compile seconds)
    source: str  # how they were obtained


def candidates_here() -> list[Candidate]:
    """The candidates worth timing on this CPU: bf16 only with bf16 instructions."""
    bf16 = cpu_class() == "avx512-bf16"  # the class that has bf16 instructions, uncapped
    return [c for c in CANDIDATES if c.precision == "fp32" or bf16]


def calibrate(
    reference: str = REFERENCE,
    batch: int = REFERENCE_BATCH,
    steps: int = 5,
    candidates: list[Candidate] | None = None,
) -> Figures:
    """Time every candidate on this machine now and cache the figures under its key."""
    chosen = [c for c in candidates or candidates_here() if c != BASELINE]
    key = machine_key()
    log.info(
        f"timing {len(chosen) + 1} CPU training settings on {reference}, once for this "
        f"machine ({key_text(key)}); cached in {cache_dir() / RECORD}"
    )
    start = time.perf_counter()
    helds, compiling, rates = {}, {}, {}
    for candidate in (BASELINE, *chosen):  # built and warmed up (compiled) once each
        held = helds[candidate.name] = Held(reference, runtime_of(candidate), batch)
        warm = held.train(WARMUP_STEPS[False]) + held.infer(WARMUP_STEPS[False])
        compiling[candidate.name] = warm if candidate.compile != "off" else 0.0
        rates[candidate.name] = []
    for _ in range(ROUNDS):  # interleaved, so that a slower spell of the machine hits each one
        for name, held in helds.items():
            rates[name].append(batch * steps / held.train(steps))
    rows = {}
    for name, measured in rates.items():
        median = statistics.median(measured)
        rows[name] = {"images_per_second": median, "compile_seconds": compiling[name]}
        log.info(f"  {name}: {median:.0f} train img/s (median of {ROUNDS} rounds)")
    entry = {
        "key": key,
        "reference": reference,
        "batch_size": batch,
        "steps": steps,
        "rounds": ROUNDS,
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    write_record(RECORD, {"entries": {**_entries(), key_text(key): entry}})
    figures = _figures(entry)
    assert figures is not None  # what was just measured reads back
    return figures


def _entries() -> dict[str, Any]:
    entries = read_record(RECORD).get("entries")
    return entries if isinstance(entries, dict) else {}


def _figures(entry: Any) -> Figures | None:
    """The figures of one cached entry; None when it is not one this version wrote."""
    try:
        rows, names = entry["rows"], {c.name for c in CANDIDATES}
        eager = float(rows[BASELINE.name]["images_per_second"])
        speeds = {
            name: (float(row["images_per_second"]) / eager, float(row["compile_seconds"]))
            for name, row in rows.items()
            if name in names
        }
        source = (
            f"measured on this machine {entry['measured_at']} ({entry['reference']}, batch "
            f"{entry['batch_size']}; {key_text(entry['key'])})"
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    plausible = (
        math.isfinite(eager)
        and eager > 0
        and all(
            math.isfinite(x) and math.isfinite(s) and x > 0 and s >= 0 for x, s in speeds.values()
        )
    )
    if not plausible:  # a speed of zero or below, or infinite: not a measurement
        log.warning("the cached CPU figures hold a speed or a time no run can have; ignored")
        return None
    return Figures(eager, speeds, source)


def cached() -> Figures | None:
    """This machine's figures, when measured under its present key (CPU, class, threads,
    torch); any other entry is another machine's."""
    key = machine_key()
    entry = _entries().get(key_text(key))
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    return _figures(entry)


def by_rule(allowed: list[Candidate]) -> tuple[Candidate, str]:
    """The setting RULES give this CPU's class among the allowed, with the reason."""
    name = cpu_class()
    order = RULES.get(name, ("eager fp32 NCHW",))
    best = next((c for n in order for c in allowed if c.name == n), None)
    best = best or (allowed[0] if allowed else BASELINE)
    return best, (
        f"{best.name}: the {name} class's rule ({RULES_MEASURED}); `wrn bench MODEL --device "
        "cpu --calibrate` measures this machine, and compiling is then chosen where it pays"
    )


@dataclass(frozen=True)
class Work:
    """A run's size, for the estimate: images trained, and the network against REFERENCE."""

    images: int  # training images over the whole run (epochs x images per epoch)
    macs_ratio: float  # the network's multiply-accumulates per image over REFERENCE's
    depth_ratio: float  # its weighted layers over REFERENCE's (compile time grows with them)

    @classmethod
    def of(cls, model: torch.nn.Module, images: int) -> Work:
        macs, layers = _size(model)
        reference_macs, reference_layers = _reference_size()
        return cls(images, macs / reference_macs, layers / max(1, reference_layers))

    def eager_seconds(self, figures: Figures) -> float:
        return self.images * self.macs_ratio / figures.eager_images_per_second


def _size(model: torch.nn.Module) -> tuple[int, int]:
    """(multiply-accumulates per image, weighted layers) of a network."""
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    return model_summary(model)["macs"], layers


@functools.cache
def _reference_size() -> tuple[int, int]:
    # building it draws initial weights: the run's own random streams must not see that
    with torch.random.fork_rng(devices=[]):
        return _size(create_model(REFERENCE, 10))


def choose(figures: Figures, work: Work | None, allowed: list[Candidate]) -> tuple[Candidate, str]:
    """The allowed candidate of least estimated run time (compiling counted), and why."""
    allowed = [c for c in allowed if c.name in figures.rows] or [BASELINE]
    speed = {c.name: figures.rows.get(c.name, (1.0, 0.0)) for c in allowed}
    plain = [c for c in allowed if c.compile == "off"]
    if work is None:  # no run to weigh compiling against: the fastest eager candidate
        best = max(plain or allowed, key=lambda c: speed[c.name][0])
        return best, f"{_speed(best, speed)}; {figures.source}"
    eager = work.eager_seconds(figures)

    def total(c: Candidate) -> float:
        return speed[c.name][1] * work.depth_ratio + eager / speed[c.name][0]

    best = min(allowed, key=total)
    why = f"{_speed(best, speed)}; this run ~{_duration(eager)} in eager fp32 NCHW"
    if plain:
        why += f"; {_crossover(max(plain, key=lambda c: speed[c.name][0]), allowed, speed, work)}"
    return best, f"{why}; {figures.source}"


def _crossover(plain: Candidate, allowed: list[Candidate], speed, work: Work) -> str:
    """The run length (eager fp32 time) past which compiling beats the best eager setting."""
    ties = []
    for c in allowed:
        gain = 1 / speed[plain.name][0] - 1 / speed[c.name][0]
        if c.compile != "off" and gain > 0:
            ties.append((speed[c.name][1] * work.depth_ratio / gain, c.name))
    if not ties:
        return f"compiling never beats {plain.name} here"
    at, name = min(ties)
    return f"{name} beats {plain.name} past ~{_duration(at)} of eager training"


def _speed(c: Candidate, speed) -> str:
    speedup, seconds = speed[c.name]
    compiled = f", compiling ~{seconds:.0f} s on the reference" if c.compile != "off" else ""
    return f"{c.name} ({speedup:.2f}x eager fp32 NCHW{compiled})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def allowed_by(config: Config) -> list[Candidate]:
    """The candidates the run's explicit options leave (auto leaves every one)."""
    runtime = config.runtime
    bf16 = cpu_class() == "avx512-bf16" or runtime.precision == "bf16"
    return [
        c
        for c in CANDIDATES
        if runtime.precision in ("auto", c.precision)
        and runtime.channels_last in (None, c.channels_last)
        and runtime.compile in ("auto", c.compile)
        and (c.precision == "fp32" or bf16)
    ]


def cpu_choice(
    config: Config, model: torch.nn.Module | None = None, images: int = 0
) -> tuple[Candidate, str]:
    """The CPU setting of a run of `model` over `images` training images (no model: eager
    only), with the reason; by this machine's cached figures (`wrn bench --calibrate` measures
    them), sizing the run only then, else by its class's rule. Nothing is measured here: a
    benchmark inside `wrn train` would draw weights and reseed, and the same command would
    then train differently once the figures are cached."""
    figures = cached()
    if figures is None:
        return by_rule(allowed_by(config))
    work = None if model is None else Work.of(model, images)
    return choose(figures, work, allowed_by(config))


def describe(figures: Figures) -> list[dict[str, Any]]:
    """The figures as rows: each candidate's setting, speed-up and compile seconds."""
    rows = []
    for c in CANDIDATES:
        if c.name in figures.rows:
            speedup, seconds = figures.rows[c.name]
            rows.append({**asdict(c), "speedup": speedup, "compile_seconds": seconds})
    return rows


def kept_cpu_setting(recorded: dict | None) -> tuple[Candidate, str] | None:
    """The CPU setting a resumed run started with (config.json `resolved`), kept so that it
    resumes bit for bit whatever this machine's figures say now; None if not a CPU run's."""
    recorded = recorded or {}
    try:
        if not str(recorded["device"]).startswith("cpu"):
            return None
        compile = "step" if recorded["whole_step"] else "on" if recorded["compile"] else "off"
        precision, channels_last = str(recorded["precision"]), bool(recorded["channels_last"])
        kept = Candidate("kept", precision, channels_last, compile)
    except KeyError:
        return None
    if kept.precision not in ("fp32", "bf16"):
        return None
    return kept, (
        f"kept from the run's start ({kept.precision}, channels_last {kept.channels_last}, "
        f"compile {kept.compile}), so that it resumes bit for bit"
    )
