"""`wrn`: the verbs, each a thin call into the library; printing happens only here.

User errors print one line `wrn: error: ...` and exit 2 (a failed run exits 1); a run stopped
by SIGTERM/SIGINT saves a checkpoint and exits 128 + the signal number. Anything else is a bug
in wideresnet, reported as one (exit 70); WRN_DEBUG=1 shows the traceback behind any error.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import signal
import sys
import time
import traceback
from typing import Any

from wideresnet.config import FIELDS, SECTIONS, read_config_file
from wideresnet.errors import DOWNLOAD_STOPPED, Interrupted, WrnError, signals_interrupt

EXIT_USAGE, EXIT_BUG = 2, 70


class UsageError(WrnError):
    """A command line that does not parse (argparse's own message)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports one line (with a 'did you mean' for unknown options).

    Abbreviations are off: `--epoch` is an unknown option, not a silent `--epochs`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        if "unrecognized arguments" in message:
            unknown = message.split(":", 1)[1].split()
            options = _all_options(self)
            for word in unknown:
                if word.startswith("-"):
                    hint = difflib.get_close_matches(word.split("=")[0], options, n=1)
                    if hint:
                        message = f"unknown option {word}; did you mean {hint[0]}?"
                        break
        raise UsageError(f"{self.prog}: {message}")


def _all_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of a parser and of its verbs' parsers."""
    options = []
    for action in parser._actions:
        options += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options += _all_options(sub)
    return options


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


METAVARS = {int: "N", float: "X", str: "TEXT", tuple: "N,N,..."}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config field, grouped by section, defaulting to 'not given'."""
    for section in SECTIONS:
        group = parser.add_argument_group(f"{section} options")
        for info in (i for i in FIELDS.values() if i.section == section):
            shown = info.default if info.default is not None else "not given"
            if isinstance(shown, tuple):
                shown = ",".join(map(str, shown))
            if info.default is None and section == "model":
                shown = "the model's own"
            described = "default:" in info.help  # the help says what happens when not given
            kwargs: dict[str, Any] = {
                "dest": info.key,
                "default": argparse.SUPPRESS,
                "help": info.help if described else f"{info.help} [default: {shown}]",
            }
            flag = "--" + info.key.replace("_", "-")
            if info.kind is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            else:
                group.add_argument(flag, metavar=METAVARS[info.kind], **kwargs)


def build_parser() -> Parser:
    from wideresnet.recipes import PRESETS

    parser = Parser(prog="wrn", description="Wide Residual Networks: build, train, evaluate.")
    parser.add_argument("--version", action="version", version=_version())
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)

    info = verbs.add_parser("info", help="parameters, MACs and stages of a model")
    info.add_argument("model", nargs="?")
    info.add_argument("--num-classes", type=int, default=None)
    info.add_argument("--block", type=_csv_ints)
    info.add_argument("--blocks-per-group", type=int)
    info.add_argument("--input-size", type=int)
    info.add_argument("--json", action="store_true")
    info.add_argument("--list", action="store_true", help="list the paper's model names")

    train = verbs.add_parser("train", help="train a model (the paper's recipe by default)")
    train.add_argument("--out", help="run directory")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    train.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe (default cifar)")
    train.add_argument("--config", help="JSON or TOML file of options (a run's config.json too)")
    train.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    train.add_argument("--log-every", type=int, default=0, help="progress line every N steps")
    _add_config_options(train)

    evaluate = verbs.add_parser("eval", help="test error of a run or checkpoint")
    evaluate.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument("--dataset")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--split", default=None)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--precision", default=None, choices=["fp32", "bf16"])
    evaluate.add_argument("--flip", action="store_true", help="also report flip-averaged error")
    evaluate.add_argument("--json", action="store_true")

    data = verbs.add_parser("data", help="download or verify a dataset")
    data.add_argument("action", choices=["verify", "download"])
    data.add_argument("--dataset", required=True)
    data.add_argument("--data-dir", required=True)
    data.add_argument("--url", help="a mirror: the archive's URL (CIFAR) or base URL (SVHN)")
    data.add_argument("--md5", help="expected md5 of the archive fetched from --url")
    data.add_argument("--no-verify", action="store_true")
    data.add_argument("--labels", default="fine", choices=["fine", "coarse"])

    official = verbs.add_parser(
        "import-official", help="convert the authors' PyTorch model.pt7 into a checkpoint"
    )
    official.add_argument("checkpoint")
    official.add_argument("--out", required=True)
    official.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


# --------------------------------------------------------------------------------------------
# Verbs
# --------------------------------------------------------------------------------------------


def _version() -> str:
    import torch

    from wideresnet import __version__

    return f"wrn (wideresnet) {__version__}, torch {torch.__version__}"


def cmd_info(args: argparse.Namespace) -> int:
    from wideresnet.models import create_model, list_models, model_name_patterns, model_summary

    if args.list or not args.model:
        print("\n".join(list_models()))
        print("\naccepted names:\n  " + "\n  ".join(model_name_patterns()))
        return 0
    options = {"block": args.block, "blocks_per_group": args.blocks_per_group}
    model = create_model(args.model, args.num_classes, **options)
    summary = model_summary(model, args.input_size)
    classes = model.fc.out_features
    summary = {"model": args.model.lower(), "num_classes": classes, **summary}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{summary['model']}: {summary['params']:,} parameters, "
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
    from wideresnet.train import resume, train

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
        f"done: test error {result['test_error']:.2f}% after {result['epochs']} epochs "
        f"(last epoch, {result['test_images']:,} test images), "
        f"{result['wall_seconds']['total']:.0f}s wall clock"
    )
    for flag in result["flags"]:
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
    import numpy as np

    from wideresnet.data import OFFICIAL, download, load_dataset

    if args.action == "download":
        with signals_interrupt(DOWNLOAD_STOPPED):
            where = download(args.dataset, args.data_dir, args.url, args.md5)
        print(f"{args.dataset}: downloaded, md5 checked, unpacked to {where}")
        return 0
    splits = {"svhn": ["train", "test", "extra"]}.get(args.dataset, ["train", "test"])
    for split in splits:
        images, labels, classes = load_dataset(
            args.dataset, args.data_dir, split, not args.no_verify, labels=args.labels
        )
        counts = np.bincount(labels, minlength=len(classes))
        print(
            f"{split}: {len(images):,} images {'x'.join(map(str, images.shape[1:]))}, "
            f"{len(classes)} classes"
        )
        for name, count in zip(classes, counts):
            print(f"  {name:<20} {count:,}")
    if not args.no_verify and args.dataset in OFFICIAL:
        print("official md5 checksums: OK")
    return 0


def cmd_import_official(args: argparse.Namespace) -> int:
    from wideresnet.models.official import import_official

    summary = import_official(args.checkpoint, args.out, args.overwrite)
    print(f"{args.checkpoint} -> {args.out}: {summary}")
    return 0


COMMANDS = {
    "info": cmd_info,
    "train": cmd_train,
    "eval": cmd_eval,
    "data": cmd_data,
    "import-official": cmd_import_official,
}


# --------------------------------------------------------------------------------------------
# Printing the library's log
# --------------------------------------------------------------------------------------------


class PrintHandler(logging.Handler):
    """Info to stdout, warnings to stderr; progress records as a bar on a terminal, and as a
    line every PLAIN_PROGRESS_SECONDS (and the last) otherwise."""

    PLAIN_PROGRESS_SECONDS = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.tty = sys.stdout.isatty()
        self.bar_open = False
        self.last_plain: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        key = getattr(record, "progress", None)
        if key is not None:
            self._progress(key, message, record.progress_end)  # type: ignore[attr-defined]
            return
        self._close_bar()
        if record.levelno >= logging.WARNING:
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            print(message, flush=True)

    def _progress(self, key: str, message: str, end: bool) -> None:
        if self.tty:
            print(f"\r\033[K{message}", end="\n" if end else "", flush=True)
            self.bar_open = not end
            return
        now = time.monotonic()
        if end or now - self.last_plain.get(key, -1e9) >= self.PLAIN_PROGRESS_SECONDS:
            self.last_plain[key] = now
            print(message, flush=True)

    def _close_bar(self) -> None:
        if self.bar_open:
            print("\r\033[K", end="", flush=True)
            self.bar_open = False


def _configure_logging() -> None:
    logger = logging.getLogger("wideresnet")
    if not any(isinstance(h, PrintHandler) for h in logger.handlers):
        logger.addHandler(PrintHandler())
    logger.setLevel(logging.DEBUG if os.environ.get("WRN_DEBUG") else logging.INFO)
    logger.propagate = False


def _debug() -> bool:
    return os.environ.get("WRN_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    _configure_logging()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.verb is None:  # a bare `wrn`: the verbs
            parser.print_help()
            return 0
        return COMMANDS[args.verb](args)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except WrnError as error:
        if _debug():
            traceback.print_exc()
        print(f"wrn: error: {error}", file=sys.stderr)
        return error.exit_code
    except Interrupted as error:
        name = signal.Signals(error.signum).name
        print(f"wrn: stopped by {name}; {error.outcome}", file=sys.stderr)
        return 128 + error.signum
    except BrokenPipeError:  # `wrn info ... | head`
        return 0
    except KeyboardInterrupt:
        print("wrn: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as error:  # a bug in wideresnet, never blamed on the user
        if _debug():
            traceback.print_exc()
        print(
            f"wrn: internal error: {type(error).__name__}: {error} (a bug in wideresnet; "
            "WRN_DEBUG=1 shows the traceback; please report it)",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
