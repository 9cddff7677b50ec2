"""`wrn`: info, train, eval, data, import-official.

User errors print one line `wrn: error: ...` and exit 2; a failed run exits 1; a run stopped by
SIGTERM/SIGINT saves a checkpoint and exits 128 + the signal number.
"""

from __future__ import annotations

import argparse
import difflib
import json
import signal
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

from wideresnet.models import ModelNameError
from wideresnet.recipes import PRESETS, ConfigError, Recipe

EXIT_USAGE = 2


class UsageError(Exception):
    pass


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


RECIPE_HELP = {
    "model": "model name, e.g. wrn-28-10 (see `wrn info --list`)",
    "dataset": "cifar10 | cifar100 | svhn | folder | npz",
    "data_dir": "the dataset's folder (or .zip / .npz file)",
    "milestones": "comma-separated epochs; epoch m is the first at the lower rate",
    "block": "kernel sizes of the block B(M), e.g. 3,1,3",
    "train_limit": "use only the first N training images (quick runs)",
    "verify": "check the official md5s (--no-verify skips it, with a warning)",
    "precision": "auto (bf16 where supported) | bf16 | fp32",
    "val_size": "hold out the last N training images and test on them instead",
    "checkpoint_every": "also checkpoint every N steps inside an epoch",
    "compile": "torch.compile the model: auto (on for CUDA) | on | off",
    "fused_sgd": "one fused SGD kernel: auto (on for CUDA) | on | off",
    "cuda_graphs": "replay compiled steps as CUDA graphs: auto (on when compiling for CUDA)",
}


def _add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """One option per Recipe field, defaulting to 'not given' so overrides are explicit."""
    for field in fields(Recipe):
        flag = "--" + field.name.replace("_", "-")
        kwargs: dict[str, Any] = {
            "dest": field.name,
            "default": argparse.SUPPRESS,
            "help": RECIPE_HELP.get(field.name),
        }
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag, metavar=field.name.upper(), **kwargs)


def build_parser() -> Parser:
    parser = Parser(prog="wrn", description="Wide Residual Networks: build, train, evaluate.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)

    info = verbs.add_parser("info", help="parameters, MACs and stages of a model")
    info.add_argument("model", nargs="?")
    info.add_argument("--num-classes", type=int, default=10)
    info.add_argument("--block", type=_csv_ints)
    info.add_argument("--blocks-per-group", type=int)
    info.add_argument("--input-size", type=int)
    info.add_argument("--json", action="store_true")
    info.add_argument("--list", action="store_true", help="list the paper's model names")

    train = verbs.add_parser("train", help="train a model (the paper's recipe by default)")
    train.add_argument("--out", help="run directory")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    train.add_argument("--preset", choices=sorted(PRESETS), help="the paper's recipe: cifar|svhn")
    train.add_argument("--config", help="JSON or TOML file of recipe options")
    train.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    train.add_argument("--log-every", type=int, default=0, help="progress line every N steps")
    _add_recipe_options(train)

    evaluate = verbs.add_parser("eval", help="test error of a run or checkpoint")
    evaluate.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument("--dataset")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--split", default=None)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    evaluate.add_argument("--flip", action="store_true", help="also report flip-averaged error")
    evaluate.add_argument("--no-verify", action="store_true")
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
    return parser


# --------------------------------------------------------------------------------------------
# Verbs
# --------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from wideresnet.models import create_model, list_models, model_name_patterns, model_summary

    if args.list or not args.model:
        print("\n".join(list_models()))
        print("\naccepted names:\n  " + "\n  ".join(model_name_patterns()))
        return 0
    kwargs = {"block": args.block, "blocks_per_group": args.blocks_per_group}
    model = create_model(args.model, args.num_classes, **kwargs)
    summary = model_summary(model, args.input_size)
    summary = {"model": args.model.lower(), "num_classes": args.num_classes, **summary}
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


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in fields(Recipe)}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_train(args: argparse.Namespace) -> int:
    from wideresnet import train
    from wideresnet.recipes import _coerce, make_recipe, read_config_file

    given = _recipe_overrides(args)
    if args.resume:
        if args.out or args.preset or args.config or args.overwrite:
            raise UsageError(
                "wrn train: --resume takes the run's own config; drop --out, "
                "--preset, --config and --overwrite"
            )
        asked = {k: _coerce(k, v) for k, v in given.items()}
        asked = {k: list(v) if isinstance(v, tuple) else v for k, v in asked.items()}
        result = train.resume(args.resume, asked, log_every=args.log_every)
    else:
        if not args.out:
            raise UsageError("wrn train: --out RUN_DIR is required (or --resume RUN_DIR)")
        overrides: dict[str, Any] = {}
        preset = args.preset
        if args.config:
            overrides = read_config_file(args.config)
            preset = preset or overrides.pop("preset", None)
            overrides.pop("preset", None)
        overrides.update(given)
        recipe = make_recipe(preset or "cifar", overrides)
        if not recipe.data_dir:
            raise UsageError("wrn train: --data-dir is required")
        result = train.train(recipe, args.out, overwrite=args.overwrite, log_every=args.log_every)
    print(
        f"done: test error {result['test_error']:.2f}% after {result['epochs']} epochs "
        f"(last epoch, {result['test_images']:,} test images), "
        f"{result['wall_seconds']['total']:.0f}s wall clock"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from wideresnet import data as datasets
    from wideresnet import train

    model, recipe, classes = train.load_for_eval(args.run)
    dataset, data_dir = args.dataset or recipe.dataset, args.data_dir or recipe.data_dir
    split = args.split or recipe.test_split
    images, labels, data_classes = datasets.load_dataset(
        dataset,
        data_dir,
        split,
        not args.no_verify,
        labels=recipe.labels,
        image_size=recipe.image_size,
    )
    if len(data_classes) != len(classes):
        raise train.RunError(
            f"{data_dir}: {len(data_classes)} classes, but the model was trained on {len(classes)}"
        )
    device = train.resolve_device(args.device)
    speed = train.Speed(
        str(device),
        args.precision,
        recipe.channels_last,
        compile=False,
        fused_sgd=False,
        cuda_graphs=False,
    )
    mean, std = train._normalisation(recipe)
    if recipe.preprocess == "zca":
        (train_images, _), _, _ = train.training_split(recipe)  # as the run fitted it
        zca_mean, whiten = train.zca_fit(recipe, train_images)
        images = datasets.zca_transform(images, zca_mean, whiten)
    loader = datasets.BatchLoader(
        images, labels, recipe.eval_batch_size, device=device, mean=mean, std=std
    )
    model = model.to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = train.evaluate(model, loader, speed, len(classes), flip=args.flip)
    report = {
        "checkpoint": str(args.run),
        "dataset": dataset,
        "split": split,
        "classes": classes,
        "test_error": result["error"],
        "test_loss": result["loss"],
        "images": result["images"],
        "per_class_error": result["per_class_error"],
        "confusion": result["confusion"],
        "precision": args.precision,
    }
    if args.flip:
        report["flip_test_error"] = result["flip"]["error"]
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{args.run}: test error {result['error']:.2f}% on {result['images']:,} {split} "
        f"images of {dataset}, loss {result['loss']:.4f} ({args.precision})"
    )
    if args.flip:
        print(
            f"with horizontal-flip averaging: {result['flip']['error']:.2f}% (reported "
            "separately; the paper's numbers use no test-time augmentation)"
        )
    for name, error in zip(classes, result["per_class_error"]):
        print(f"  {name:<16} {error:6.2f}%")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    import numpy as np

    from wideresnet import data as datasets

    if args.action == "download":
        where = datasets.download(
            args.dataset, args.data_dir, args.url, args.md5, progress=sys.stdout.isatty()
        )
        print(f"{args.dataset}: downloaded, md5 checked, unpacked to {where}")
        return 0
    splits = {"svhn": ["train", "test", "extra"]}.get(args.dataset, ["train", "test"])
    for split in splits:
        images, labels, classes = datasets.load_dataset(
            args.dataset, args.data_dir, split, not args.no_verify, labels=args.labels
        )
        counts = np.bincount(labels, minlength=len(classes))
        print(
            f"{split}: {len(images):,} images {'x'.join(map(str, images.shape[1:]))}, "
            f"{len(classes)} classes"
        )
        for name, count in zip(classes, counts):
            print(f"  {name:<20} {count:,}")
    if not args.no_verify and args.dataset in datasets.OFFICIAL:
        print("official md5 checksums: OK")
    return 0


def cmd_import_official(args: argparse.Namespace) -> int:
    import torch

    from wideresnet import train
    from wideresnet.models import count_params, infer_official_model, load_official_params
    from wideresnet.recipes import make_recipe

    source = Path(args.checkpoint)
    try:
        saved = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise train.RunError(f"{source}: no such file") from None
    except Exception as error:
        raise train.RunError(f"{source}: not loadable as weights ({error})") from None
    params = saved.get("params", saved) if isinstance(saved, dict) else None
    if not isinstance(params, dict):
        raise train.RunError(f"{source}: no params dict inside")
    model = infer_official_model(params)
    load_official_params(model, params)
    n, k = model.blocks_per_group, model.widths[0] / 16
    name = f"wrn-{6 * n + 4}-{int(k) if float(k).is_integer() else k}"
    recipe = make_recipe("cifar", {"model": name, "block": model.block, "blocks_per_group": n})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": 1,
            "config": recipe.to_dict(),
            "model": model.state_dict(),
            "classes": [str(i) for i in range(model.fc.out_features)],
            "source": str(source),
        },
        out,
    )
    print(f"{source} -> {out}: {name}, block {model.block}, {count_params(model):,} parameters")
    return 0


COMMANDS = {
    "info": cmd_info,
    "train": cmd_train,
    "eval": cmd_eval,
    "data": cmd_data,
    "import-official": cmd_import_official,
}


def main(argv: list[str] | None = None) -> int:
    from wideresnet.data import DataError
    from wideresnet.train import Interrupted, RunError

    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.verb](args)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except (ModelNameError, DataError, ConfigError, ValueError) as error:
        print(f"wrn: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RunError as error:
        print(f"wrn: error: {error}", file=sys.stderr)
        return error.exit_code
    except Interrupted as error:
        name = signal.Signals(error.signum).name
        print(
            f"wrn: stopped by {name}; checkpoint saved, continue with `wrn train --resume RUN_DIR`",
            file=sys.stderr,
        )
        return 128 + error.signum
    except BrokenPipeError:  # `wrn info ... | head`
        return 0
    except KeyboardInterrupt:
        print("wrn: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
