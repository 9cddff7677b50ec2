"""The verbs for models, runs and data: each a thin call into the library, then printing."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from wideresnet.cli.parser import UsageError
from wideresnet.config import FIELDS, coerce, read_config_file
from wideresnet.errors import DOWNLOAD_STOPPED, signals_interrupt


def cmd_info(args: argparse.Namespace) -> int:
    from wideresnet.models import create_model, list_models, model_name_patterns, model_summary

    if args.list or not args.model:
        print("\n".join(list_models()))
        print("\naccepted names:\n  " + "\n  ".join(model_name_patterns()))
        return 0
    given = {k: v for k, v in _given(args).items() if k not in ("model", "num_classes")}
    options = {k: coerce(k, v) for k, v in given.items()}
    model = create_model(args.model, args.num_classes, **options)
    summary = model_summary(model, args.input_size)
    classes = model.fc.out_features
    summary = {"model": args.model.lower(), "num_classes": classes, **summary}
    shown = ", ".join(f"{k}={v}" for k, v in given.items())
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{summary['model']}{f' ({shown})' if shown else ''}: {summary['params']:,} parameters, "
        f"{summary['macs'] / 1e9:.3f} G multiply-accumulates per "
        f"{summary['input'][1]}x{summary['input'][2]} image (convs + linear, counted by "
        "running the built module)"
    )
    print(f"{'stage':<8} {'output':<16} {'blocks':>6} {'params':>12}")
    for row in summary["stages"]:
        shape = "x".join(str(v) for v in row["output"])
        print(f"{row['stage']:<8} {shape:<16} {row['blocks']:>6} {row['params']:>12,}")
    return 0


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in FIELDS}


def cmd_train(args: argparse.Namespace) -> int:
    from wideresnet.recipes import make_config
    from wideresnet.train.run import resume, train

    given = _given(args)
    if args.resume:
        if args.out or args.preset or args.config or args.overwrite:
            raise UsageError(
                "wrn train: --resume takes the run's own config; drop --out, "
                "--preset, --config and --overwrite"
            )
        result = resume(args.resume, given, log_every=args.log_every)
    else:
        if not args.out:
            raise UsageError("wrn train: --out RUN_DIR is required (or --resume RUN_DIR)")
        overrides: dict[str, Any] = {}
        preset = args.preset
        if args.config:
            overrides = read_config_file(args.config)
            preset = preset or overrides.get("preset")
            overrides.pop("preset", None)
        overrides.update(given)
        config = make_config(preset or "cifar", overrides)
        result = train(config, args.out, overwrite=args.overwrite, log_every=args.log_every)
    print(
        f"done: test error {result.test_error:.2f}% after {result.epochs} epochs "
        f"(last epoch, {result.test_images:,} test images), "
        f"{result.total_seconds:.0f}s wall clock"
    )
    for flag in result.flags:
        print(f"  flagged: {flag}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from wideresnet.train import evaluate_run

    report = evaluate_run(
        args.run,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        device=args.device,
        precision=args.precision,
        flip=args.flip,
    )
    if args.json:
        print(json.dumps(report))
        return 0
    if report["finished"]:
        state = f"finished run ({report['epochs']} epochs)"
    else:
        state = f"UNFINISHED run: stopped after epoch {report['epoch']} of {report['epochs']}" + (
            f", step {report['step_in_epoch']} of the next" if report["step_in_epoch"] else ""
        )
    print(
        f"{args.run}: {state}; test error {report['test_error']:.2f}% (top-5 "
        f"{report['test_top5_error']:.2f}%) on {report['images']:,} {report['split']} images "
        f"of {report['dataset']}, loss {report['test_loss']:.4f} ({report['precision']})"
    )
    if args.flip:
        print(
            f"with horizontal-flip averaging: {report['flip_test_error']:.2f}% (reported "
            "separately; the paper's numbers use no test-time augmentation)"
        )
    for name, error in zip(report["classes"], report["per_class_error"]):
        print(f"  {name:<16} {error:6.2f}%")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "prepare":
        return _data_prepare(args)
    if not args.dataset:
        raise UsageError(f"wrn data {args.action}: --dataset is required")
    if args.action == "download":
        from wideresnet.data import download

        with signals_interrupt(DOWNLOAD_STOPPED):
            where = download(args.dataset, args.data_dir, args.url, args.md5)
        print(f"{args.dataset}: downloaded, md5 checked, unpacked to {where}")
        return 0
    if args.action == "pack":
        from wideresnet.data.pack import pack

        if not args.out:
            raise UsageError("wrn data pack: --out SHARDS is required")
        summary = pack(
            args.dataset,
            args.data_dir,
            args.out,
            image_size=args.image_size,
            verify=not args.no_verify,
        )
        print(f"packed: {summary}")
        return 0
    if args.dataset == "imagenet":
        return _verify_files(args)
    return _verify_arrays(args)


def _data_prepare(args: argparse.Namespace) -> int:
    from wideresnet.data.imagenet import prepare_imagenet

    if args.what != "imagenet":
        raise UsageError("wrn data prepare: the dataset to prepare is imagenet")
    print(prepare_imagenet(args.data_dir, args.val_labels))
    return 0


def _verify_files(args: argparse.Namespace) -> int:
    """Decode every file of an ImageNet-style folder in processes; list those that fail."""
    from pathlib import Path

    from wideresnet.data.imagenet import listing, verify_files
    from wideresnet.data.stream import FileImages

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"wrn data verify: --workers {args.workers}: at least 1 process")
    root, failed = Path(args.data_dir).expanduser(), []
    for split in ("train", "val"):
        paths, labels, classes = listing(root, split)
        failed += verify_files(FileImages(root, paths, labels), args.workers)
        print(f"{split}: {len(paths):,} images, {len(classes)} classes")
    for line in failed:
        print(f"wrn: error: {line}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) do not decode", file=sys.stderr)
        return 2
    print("every file decodes")
    return 0


def _verify_arrays(args: argparse.Namespace) -> int:
    import numpy as np

    from wideresnet.data import OFFICIAL, load_dataset

    official = OFFICIAL.get(args.dataset)
    splits = [s for s in official.splits if "+" not in s] if official else ["train", "test"]
    for split in splits:
        images, labels, classes = load_dataset(
            args.dataset,
            args.data_dir,
            split,
            not args.no_verify,
            labels=args.labels,
            image_size=args.image_size,
        )
        counts = np.bincount(labels, minlength=len(classes))
        print(
            f"{split}: {len(images):,} images {'x'.join(map(str, images.shape[1:]))}, "
            f"{len(classes)} classes"
        )
        for name, count in zip(classes, counts):
            print(f"  {name:<20} {count:,}")
    if not args.no_verify and official:
        print("official md5 checksums: OK")
    return 0


def cmd_import_official(args: argparse.Namespace) -> int:
    from wideresnet.convert import import_official

    summary = import_official(args.checkpoint, args.out, args.overwrite)
    print(f"{args.checkpoint} -> {args.out}: {summary}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from wideresnet.bench import BENCH_RUN, bench

    result = bench(
        args.model,
        args.device,
        args.batch_size,
        args.steps,
        compile_step=args.compile_step,
        force_bf16=args.force_bf16,
        dataset=args.dataset,
        data_dir=args.data_dir,
        data_options={
            k: v for k, v in (("loader", args.loader), ("workers", args.workers)) if v is not None
        },
        calibrate_cpu=args.calibrate,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['model']}, batch {result['batch_size']}, {result['steps']} timed steps, "
        f"{result['device_name']}, torch {result['torch']}, {result['threads']} threads"
    )
    columns = f"{'train img/s':>11} {'ratio':>6} {'infer img/s':>11} {'ratio':>6} {'MFU':>6}"
    print(f"{'setting':<52} {columns}")
    for row in result["rows"]:
        mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
        print(
            f"{row['setting']:<52} {row['images_per_second']:>11,.0f} {row['ratio']:>5.2f}x "
            f"{row['inference_images_per_second']:>11,.0f} {row['inference_ratio']:>5.2f}x {mfu:>6}"
        )
    if result["calibration"]:
        print("calibrated (cached for wrn train):")
        for row in result["calibration"]:
            seconds = row["compile_seconds"]
            compiling = f", compiling {seconds:.0f} s" if row["compile"] != "off" else ""
            print(f"  {row['name']:<40} {row['speedup']:>5.2f}x{compiling}")
    print(f"wrn train's default, for {BENCH_RUN[0]}: {result['default_reason']}")
    if "loader" in result:
        loader = result["loader"]
        print(
            f"the run's loader alone: {loader['images_per_second']:,.0f} img/s with "
            f"{loader['workers']} workers ({loader['images_per_second_per_worker']:,.0f} per "
            f"worker), {loader['loader']}"
        )
    if "end_to_end" in result:
        print(f"end to end, real batches: {result['end_to_end']['images_per_second']:,.0f} img/s")
    print(f"measured: {result['measured']}")
    for precision, assumed in result["peaks"].items():
        print(f"peak assumed for {precision}: {assumed}")
    return 0


COMMANDS = {
    "info": cmd_info,
    "train": cmd_train,
    "eval": cmd_eval,
    "data": cmd_data,
    "import-official": cmd_import_official,
    "bench": cmd_bench,
}
