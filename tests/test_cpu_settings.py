"""The CPU training setting chosen by measurement (train/calibrate.py): the CPU class, the
calibration cached under the machine's key and invalidated by another CPU, class or torch,
the choice weighed against the run's length, and its record in config.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import cli, cli_with, metrics, one_line_error, tiny_config, train_argv

from wideresnet.config import Config
from wideresnet.data.cache import cache_dir
from wideresnet.models import create_model
from wideresnet.train import calibrate as cal
from wideresnet.train.checkpoint import load_checkpoint
from wideresnet.train.cpu import BASELINE, CANDIDATES, cpu_bf16, cpu_class, cpu_flags
from wideresnet.train.run import make_trainer
from wideresnet.train.rundir import RunDir
from wideresnet.train.runtime import Runtime

BY_NAME = {c.name: c for c in CANDIDATES}
EAGER_CL, COMPILED = BY_NAME["eager fp32 channels_last"], BY_NAME["compiled fp32 NCHW"]
BF16 = {"avx512f", "avx512_bf16", "avx2"}


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        (BF16, {}, "avx512-bf16"),
        (BF16 | {"amx_bf16"}, {}, "avx512-bf16"),
        ({"avx512f", "avx2"}, {}, "avx512"),  # the AVX-512 Xeon without bf16
        ({"avx2", "fma"}, {}, "avx2"),  # the EPYC
        (BF16, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "avx512"),
        (BF16, {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, "avx2"),
        (BF16, {"ATEN_CPU_CAPABILITY": "avx2"}, "avx2"),
        (BF16, {"ATEN_CPU_CAPABILITY": "default"}, "other"),
        ({"neon", "asimd"}, {}, "other"),
    ],
)
def test_the_cpu_class_follows_the_instructions_and_their_caps(flags, env, expected, monkeypatch):
    for key in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cpu_class(flags) == expected


@pytest.mark.parametrize(
    "flags, cap, bf16, reason",
    [
        ({"avx512f", "avx512bw"}, None, False, "no AMX bf16 or AVX512-BF16"),
        ({"avx2", "fma"}, None, False, "no AMX bf16 or AVX512-BF16"),
        ({"avx512f", "avx512_bf16"}, None, True, "AVX512-BF16"),
        ({"avx512f", "avx512_bf16", "amx_bf16"}, None, True, "AMX bf16"),
        ({"avx512f", "avx512_bf16"}, "AVX512_CORE", False, "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
    ],
)
def test_bf16_is_a_candidate_only_where_the_cpu_has_bf16_instructions(flags, cap, bf16, reason):
    chosen, why = cpu_bf16(flags, cap or "")
    assert chosen is bf16 and reason in why


FIGURES = cal.Figures(
    100.0,
    {
        BASELINE.name: (1.0, 0.0),
        EAGER_CL.name: (1.2, 0.0),
        COMPILED.name: (1.5, 60.0),
    },
    "test figures",
)


def test_compiling_is_chosen_only_where_the_run_pays_for_it():
    # eager time of a run: images x macs_ratio / 100 img/s; compiling costs 60 s x depth
    short = cal.Work(images=10_000, macs_ratio=1.0, depth_ratio=1.0)  # 100 s of eager
    long = cal.Work(images=1_000_000, macs_ratio=1.0, depth_ratio=1.0)  # 10,000 s
    chosen, why = cal.choose(FIGURES, short, list(CANDIDATES))
    assert chosen == EAGER_CL and "this run ~100 s in eager fp32 NCHW" in why
    # 1/1.2 - 1/1.5 = 1/6 of the eager time is saved: 60 s / (1/6) = 360 s = 6 min
    assert f"{COMPILED.name} beats {EAGER_CL.name} past ~6 min of eager training" in why
    assert cal.choose(FIGURES, long, list(CANDIDATES))[0] == COMPILED
    deeper = cal.Work(images=30_000, macs_ratio=1.0, depth_ratio=10.0)  # 600 s to compile
    assert cal.choose(FIGURES, deeper, list(CANDIDATES))[0] == EAGER_CL
    # no run to weigh compiling against (the cost estimate, inference): the fastest eager one
    assert cal.choose(FIGURES, None, list(CANDIDATES))[0] == EAGER_CL
    # explicit options narrow the candidates: --channels-last off leaves NCHW ones
    assert cal.choose(FIGURES, long, [BASELINE, COMPILED])[0] == COMPILED
    assert cal.choose(FIGURES, short, [BASELINE, COMPILED])[0] == BASELINE


def test_the_default_is_never_slower_than_plain_pytorch_by_the_figures():
    slower = cal.Figures(
        100.0,
        {BASELINE.name: (1.0, 0.0), EAGER_CL.name: (0.55, 0.0), COMPILED.name: (0.9, 5.0)},
        "",
    )
    for images in (1_000, 10**6, 10**9):
        work = cal.Work(images, 1.0, 1.0)
        assert cal.choose(slower, work, list(CANDIDATES))[0] == BASELINE
    assert "compiling never beats eager fp32 NCHW" in cal.choose(slower, work, list(CANDIDATES))[1]


def calibrate_small() -> cal.Figures:
    """A real calibration, small: WRN-10-1 at batch 8, one timed step, one compiled setting."""
    return cal.calibrate("wrn-10-1", batch=8, steps=1, candidates=[EAGER_CL, COMPILED])


def entries() -> dict:
    return json.loads((cache_dir() / cal.RECORD).read_text())["entries"]


@pytest.mark.compiles
@pytest.mark.spawns
def test_a_calibration_is_cached_for_this_machine_only(monkeypatch):
    assert cal.cached() is None  # a new cache: nothing measured yet
    (cache_dir() / cal.RECORD).write_text("{not json")  # a damaged record counts as none
    assert cal.cached() is None
    measured = calibrate_small()
    assert set(measured.rows) == {BASELINE.name, EAGER_CL.name, COMPILED.name}
    assert measured.rows[BASELINE.name][0] == 1.0 and measured.rows[EAGER_CL.name][1] == 0.0
    assert measured.rows[COMPILED.name][1] > 0  # compiling was timed (train and eval graphs)
    assert cal.cached() == measured
    ((key, entry),) = entries().items()
    assert entry["key"] == cal.machine_key() and entry["key"]["torch"] == torch.__version__
    assert entry["key"]["threads"] == torch.get_num_threads()

    # a cache shared between machines (one $WRN_CACHE_DIR on a network disk): the entries of
    # another CPU and of another torch sit beside this one's and are never used for it
    other_cpu = {**entry, "key": {**entry["key"], "cpu": "Intel(R) Xeon(R) Platinum 8480+"}}
    other_torch = {**entry, "key": {**entry["key"], "torch": "2.11.0"}}
    for other in (other_cpu, other_torch):
        other["rows"] = {
            **entry["rows"],
            COMPILED.name: {"images_per_second": 1e9, "compile_seconds": 0},
        }
    record = {"entries": {cal.key_text(e["key"]): e for e in (entry, other_cpu, other_torch)}}
    (cache_dir() / cal.RECORD).write_text(json.dumps(record))
    assert cal.cached() == measured
    del record["entries"][key]
    (cache_dir() / cal.RECORD).write_text(json.dumps(record))
    assert cal.cached() is None  # only the other machine's and the other torch's remain

    # this machine's entry with a speed no run can have (negative, zero, infinite): ignored
    for speed in (-100.0, 0.0, float("inf")):
        bad = {**entry, "rows": {**entry["rows"], COMPILED.name: {
            "images_per_second": speed, "compile_seconds": 10}}}  # fmt: skip
        (cache_dir() / cal.RECORD).write_text(json.dumps({"entries": {key: bad}}))
        assert cal.cached() is None, speed

    # this torch upgraded to the other entry's version: its figures, and not ours
    (cache_dir() / cal.RECORD).write_text(json.dumps({"entries": {key: entry}}))
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    assert cal.cached() is None


@pytest.mark.compiles
@pytest.mark.spawns
def test_another_cpu_class_does_not_use_the_cached_calibration():
    calibrate_small()
    code = "from wideresnet.train import calibrate as c; print(c.cpu_class(), c.cached() is None)"
    here = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert here.stdout.split() == [cpu_class(), "False"], here.stderr
    # the same machine with oneDNN and ATen capped at AVX2 is another class: measured again
    capped = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=capped)
    flags = cpu_flags() or set()
    if "avx2" not in flags or cpu_class() == "avx2":
        pytest.skip(f"capping at AVX2 makes no other class on this {cpu_class()} CPU")
    assert other.stdout.split() == ["avx2", "True"], other.stderr


@pytest.mark.compiles
@pytest.mark.spawns
def test_the_cpu_choice_and_its_reason_are_recorded(npz, tmp_path):
    measured = calibrate_small()
    out = tmp_path / "run"
    args = ["train", "--model", "wrn-10-1", "--dataset", "npz", "--data-dir", npz]
    result = cli(*args, "--epochs", "1", "--batch-size", "32", "--out", out)
    assert result.returncode == 0, result.stderr
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    why = resolved["reasons"]["compile"]
    assert "measured on this machine" in why and "this run ~" in why and measured.source in why
    chosen = cal.choose(measured, None, cal.allowed_by(tiny_config(npz, precision="auto")))[0]
    assert chosen.compile == "off" and resolved["compile"] is False  # one short epoch
    assert resolved["channels_last"] is chosen.channels_last
    assert resolved["precision"] == chosen.precision
    assert resolved["reasons"]["precision"] == resolved["reasons"]["channels_last"] == why

    # explicit options are kept and said to be asked for
    plain = tmp_path / "plain"
    args += ["--epochs", "1", "--batch-size", "32", "--out", plain]
    assert cli(*args, "--precision", "fp32", "--compile", "off").returncode == 0
    resolved = json.loads((plain / "config.json").read_text())["resolved"]
    assert resolved["precision"] == "fp32" and "asked for" in resolved["reasons"]["precision"]
    assert resolved["compile"] is False and "compile" not in resolved["reasons"]


def test_without_figures_of_this_machine_the_classs_rule_decides(npz, tmp_path):
    trainer = make_trainer(tiny_config(npz, precision="auto"), RunDir(tmp_path))
    why = trainer.runtime.reasons["compile"]
    assert f"the {cpu_class()} class's rule" in why and trainer.runtime.compile is False
    assert not (cache_dir() / cal.RECORD).exists()  # a run measures nothing
    bf16 = cpu_class() == "avx512-bf16"
    assert trainer.runtime.precision == ("bf16" if bf16 else "fp32")


@pytest.mark.parametrize(
    "cls, options, expected",
    [
        ("avx512-bf16", {}, "eager bf16 channels_last"),
        ("avx512-bf16", {"compile": "on"}, "compiled bf16 channels_last"),
        ("avx512-bf16", {"precision": "fp32"}, "eager fp32 channels_last"),
        ("avx512-bf16", {"channels_last": False}, "eager fp32 NCHW"),
        ("avx512", {}, "eager fp32 channels_last"),
        ("avx512", {"compile": "step"}, "whole step compiled fp32 channels_last"),
        ("avx2", {}, "eager fp32 channels_last"),
        ("other", {}, "eager fp32 NCHW"),
    ],
)
def test_the_rule_by_class_never_compiles_unless_asked(monkeypatch, cls, options, expected):
    """Without figures (whatever the run's length), eager: bf16 channels_last with bf16 units,
    fp32 channels_last without; compiled only when --compile asks, in the rule's order."""
    monkeypatch.setattr(cal, "cpu_class", lambda: cls)
    config = Config.from_dict({"device": "cpu", **options})
    with torch.device("meta"):
        model = create_model("wrn-10-1", 10)
    chosen, why = cal.cpu_choice(config, model, images=10**9)
    assert chosen.name == expected and f"the {cls} class's rule" in why


def test_a_resumed_run_keeps_the_cpu_setting_it_started_with(npz, tmp_path):
    started = {"device": "cpu", "precision": "fp32", "channels_last": False}
    started |= {"compile": False, "whole_step": False, "loader": "resident"}
    trainer = make_trainer(tiny_config(npz, precision="auto"), RunDir(tmp_path), recorded=started)
    runtime = trainer.runtime
    assert (runtime.precision, runtime.channels_last, runtime.compile) == ("fp32", False, False)
    assert "kept from the run's start" in runtime.reasons["compile"]


def test_plain_runtime_is_the_baseline_without_a_choice():
    runtime = Runtime.resolve(tiny_config(Path("x"), precision="auto"), torch.device("cpu"))
    assert (runtime.precision, runtime.channels_last, runtime.compile) == ("fp32", False, False)


# --------------------------------------------------------------------------------------------
# Opt-ins measured on a GPU (bench/gpu_check.sh): fp16 with loss scaling, max-autotune
# --------------------------------------------------------------------------------------------


def fp16_args(npz: Path, out: Path, *extra: str) -> list:
    options = "--model wrn-10-1 --dataset npz --epochs 2 --batch-size 16 --precision fp16"
    return ["train", *options.split(), "--data-dir", npz, "--out", out, *extra]


def test_fp16_trains_with_a_loss_scale_that_resumes_bit_for_bit(npz, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    result = cli(*fp16_args(npz, straight))
    assert result.returncode == 0, result.stderr
    rows = metrics(straight, timing=False)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # the tiny set is learnable
    scaler = load_checkpoint(straight / "checkpoint.pt").training.scaler
    assert scaler is not None and scaler["scale"] > 0
    assert json.loads((straight / "config.json").read_text())["resolved"]["precision"] == "fp16"
    assert cli_with("sigterm", 6, *fp16_args(npz, stopped)).returncode == 143
    assert load_checkpoint(stopped / "checkpoint.pt").training.scaler is not None
    assert cli("train", "--resume", stopped).returncode == 0
    assert metrics(stopped, timing=False) == rows
    assert json.loads(cli("eval", straight, "--json").stdout)["precision"] == "fp16"


@pytest.mark.parametrize("extra", [["--compile", "step"], ["--sam-rho", "0.05"]])
def test_fp16_refuses_what_it_does_not_combine_with(npz, tmp_path, extra):
    line = one_line_error(cli(*fp16_args(npz, tmp_path / "r", *extra)))
    assert "--precision fp16 does not combine with --compile step or SAM" in line


@pytest.mark.compiles
@pytest.mark.parametrize(
    "mode, graphs, expected",
    [
        ("default", False, None),
        ("default", True, "reduce-overhead"),
        ("max-autotune", False, "max-autotune-no-cudagraphs"),
        ("max-autotune", True, "max-autotune"),
    ],
)
def test_the_compile_mode_reaches_torch_compile(npz, mode, graphs, expected):
    config = tiny_config(npz, compile="on", compile_mode=mode)
    runtime = Runtime.resolve(config, torch.device("cpu"), 1, None)
    assert runtime.compile_mode == mode and runtime.record()["compile_mode"] == mode
    assert replace(runtime, cuda_graphs=graphs).torch_compile_mode == expected


@pytest.mark.parametrize(
    "flags, per_cycle",
    [
        ({"avx512f", "avx512_bf16", "amx_bf16"}, 1024),  # AMX: its tile unit, not AVX-512's
        ({"avx512f", "avx512_bf16"}, 128),
        ({"avx2"}, 32),
    ],
    ids=["amx", "avx512-bf16", "avx2"],
)
def test_the_assumed_cpu_peak_counts_the_units_bf16_runs_on(monkeypatch, flags, per_cycle):
    """An MFU is measured against the peak of the units that do the work: a CPU with AMX
    is not held to AVX-512's peak (an MFU above 100% would follow)."""
    from wideresnet import bench

    monkeypatch.setattr(bench, "cpu_flags", lambda: flags)
    monkeypatch.setattr(bench, "cpu_ghz", lambda: 2.0)
    monkeypatch.setattr(bench, "cpu_bf16", lambda: (bool(flags & {"avx512_bf16", "amx_bf16"}), ""))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    if "amx_bf16" not in flags:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    value, said = bench.peak("cpu", "bf16")
    assert value == 2 * 2.0e9 * per_cycle and f"{per_cycle}" in said


@pytest.mark.compiles
def test_a_runs_metrics_do_not_depend_on_what_the_cache_holds(npz, tmp_path, monkeypatch):
    """The same one-process run with dropout and a teacher, first with no figures of this
    machine, then with a real calibration cached, each estimated as a paper-length run (the
    case that once benchmarked inside the run): identical metrics. No run measures anything,
    and dropout is seeded right before training, after every part is built."""
    teacher = tmp_path / "teacher"
    assert cli(*train_argv(npz, teacher, epochs=1)).returncode == 0
    monkeypatch.setattr(cal.Work, "of", lambda model, images: cal.Work(10**9, 1.0, 1.0))
    pinned = ["--precision", "fp32", "--no-channels-last", "--compile", "off"]
    pinned += ["--dropout", "0.3", "--teacher", teacher]
    runs = []
    for cached in (False, True):
        if cached:
            calibrate_small()
        assert (cal.cached() is not None) is cached
        out = tmp_path / f"cached-{cached}"
        result = cli(*train_argv(npz, out, *pinned, epochs=2))
        assert result.returncode == 0, result.stderr
        runs.append(metrics(out, timing=False))
    assert runs[0] == runs[1]
