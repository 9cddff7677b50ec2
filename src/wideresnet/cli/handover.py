"""The verbs that take a trained model away: `wrn export`, `wrn predict`, `wrn import`."""

from __future__ import annotations

import argparse
import json
import sys

from wideresnet.cli.parser import UsageError
from wideresnet.errors import RunError
from wideresnet.files import refuse_existing


def cmd_export(args: argparse.Namespace) -> int:
    from wideresnet.export import export_onnx, export_safetensors

    refuse_existing(args.out, args.overwrite)
    if args.format == "safetensors":
        if args.include_preprocessing:
            raise RunError("--include-preprocessing is for --format onnx")
        print(f"{args.source} -> {args.out}: {export_safetensors(args.source, args.out)}")
        return 0
    summary, difference = export_onnx(args.source, args.out, args.include_preprocessing)
    print(
        f"{args.source} -> {args.out}: {summary}; largest difference from PyTorch {difference:.2e}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from wideresnet.predict import predict

    results = predict(args.model, args.images, args.top_k)
    if args.json:
        print(json.dumps(results))
    for entry in results:
        if "error" in entry:
            print(f"wrn: error: {entry['error']}", file=sys.stderr)
        elif not args.json:
            best = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in entry["top"])
            print(f"{entry['file']}: {best}")
    return 2 if any("error" in entry for entry in results) else 0


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"wrn import: {option} {text!r}: expected comma-separated numbers"
        ) from None


def cmd_import(args: argparse.Namespace) -> int:
    from wideresnet.convert import import_checkpoint

    summary = import_checkpoint(
        args.layout,
        args.file,
        args.out,
        overwrite=args.overwrite,
        key=args.key,
        mean=_floats(args.mean, "--mean"),
        std=_floats(args.std, "--std"),
        activation=args.activation,
        entry=args.entry,
    )
    print(f"{args.file} -> {args.out}: {summary}")
    return 0


HANDOVER_COMMANDS = {"export": cmd_export, "predict": cmd_predict, "import": cmd_import}
