"""The command line's grammar: every verb's options, config options generated from config.py."""

from __future__ import annotations

import argparse
import difflib
from importlib import metadata
from typing import Any

from wideresnet.config import FIELDS, SECTIONS, ModelConfig
from wideresnet.errors import WrnError
from wideresnet.models.foreign import LAYOUTS
from wideresnet.presets import PRESETS
from wideresnet.version import __version__


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
                    if hint and hint[0] == word.split("=")[0]:  # another verb's option
                        message = f"{word} is not an option of this verb (see its --help)"
                    elif hint:
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


METAVARS = {int: "N", float: "X", str: "TEXT", tuple: "N,N,..."}


def _add_config_options(
    parser: argparse.ArgumentParser, sections=SECTIONS, skip: tuple[str, ...] = ()
) -> None:
    """One option per config field, grouped by section, defaulting to 'not given'."""
    for section in sections:
        group = parser.add_argument_group(f"{section} options")
        for info in (i for i in FIELDS.values() if i.section == section and i.key not in skip):
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


def _version() -> str:
    """The versions, read without importing torch (so that `wrn --version` is quick)."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"wrn (wideresnet) {__version__}, torch {torch_version}"


def _info(verbs) -> None:
    info = verbs.add_parser("info", help="parameters, MACs and stages of a model")
    info.add_argument("model", nargs="?")
    info.add_argument("--num-classes", type=int, default=None)
    info.add_argument("--input-size", type=int)
    info.add_argument("--json", action="store_true")
    info.add_argument("--list", action="store_true", help="list the paper's model names")
    _add_config_options(info, ("model",), skip=ModelConfig.NOT_ARCHITECTURE)  # --norm, ...


def _train(verbs) -> None:
    train = verbs.add_parser("train", help="train a model (the paper's recipe by default)")
    train.add_argument("--out", help="run directory")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    train.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe (default cifar)")
    train.add_argument("--config", help="JSON or TOML file of options (a run's config.json too)")
    train.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    train.add_argument("--log-every", type=int, default=0, help="progress line every N steps")
    _add_config_options(train)


def _eval(verbs) -> None:
    evaluate = verbs.add_parser("eval", help="test error of a run or checkpoint")
    evaluate.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument("--dataset")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--split", default=None)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
    evaluate.add_argument("--flip", action="store_true", help="also report flip-averaged error")
    evaluate.add_argument("--json", action="store_true")


def _data(verbs) -> None:
    data = verbs.add_parser(
        "data",
        help="download, verify, prepare or pack a dataset",
        epilog="wrn data prepare imagenet --data-dir DIR [--val-labels FILE]: sort ImageNet's "
        "flat val/ folder by class; wrn data pack --dataset D --data-dir DIR --out SHARDS",
    )
    data.add_argument("action", choices=["verify", "download", "prepare", "pack"])
    data.add_argument("what", nargs="?", help="prepare: the dataset (imagenet)")
    data.add_argument("--dataset")
    data.add_argument("--data-dir", required=True)
    data.add_argument("--url", help="a mirror: the archive's URL (CIFAR) or base URL (SVHN)")
    data.add_argument("--md5", help="expected md5 of the archive fetched from --url")
    data.add_argument("--no-verify", action="store_true")
    data.add_argument("--labels", default="fine", choices=["fine", "coarse"])
    data.add_argument("--val-labels", help="prepare: LOC_val_solution.csv or the devkit")
    data.add_argument("--out", help="pack: the shards folder to write")
    data.add_argument("--image-size", type=int, help="pack, verify: resize images to N x N")
    data.add_argument("--workers", type=int, help="verify: decoding processes (default: cores)")
    official = verbs.add_parser(
        "import-official", help="convert the authors' PyTorch model.pt7 into a checkpoint"
    )
    official.add_argument("checkpoint")
    official.add_argument("--out", required=True)
    official.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _table(verbs) -> None:
    table = verbs.add_parser(
        "table", help="the paper's tables and your grids: list, show, run, status, save"
    )
    actions = table.add_subparsers(dest="table_action", required=True, parser_class=Parser)
    listing = actions.add_parser("list", help="the tables")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="rows, the paper's numbers, our parameters, the cost")
    show.add_argument("table", help="a paper table (table2 ...) or a grid file (NAME.toml)")
    show.add_argument("--json", action="store_true")
    run = actions.add_parser(
        "run",
        help="run every row of a table or grid file (resumably)",
        epilog="options after -- go to every `wrn train` run (e.g. -- --batch-size 64)",
    )
    run.add_argument("table", help="a paper table (table2 ...) or a grid file (NAME.toml)")
    run.add_argument("--dataset", help="the data (a grid without it: each of its datasets)")
    run.add_argument("--data-dir", help="the dataset's folder (none: the official files, fetched)")
    run.add_argument("--out", required=True, help="the experiment folder")
    run.add_argument("--rows", help="comma-separated row ids (default: every row)")
    run.add_argument("--seeds", help="comma-separated seeds (default: 0, or the grid's)")
    run.add_argument("--epochs", type=int, help="shorten the schedule to N epochs")
    run.add_argument("--schedule-scale", type=float, help="scale epochs and milestones by F")
    run.add_argument("--devices", help="run one process per device at once: 0,1 or cpu,cpu")
    run.add_argument("--print-commands", action="store_true", help="print, do not run")
    run.add_argument("--paper-dataset", help="the paper's column a folder/npz stands for")
    run.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    timing = run.add_argument_group("figure4 (timing, no training)")
    timing.add_argument("--device", help="where to time the networks: auto, cpu, cuda (auto)")
    timing.add_argument(
        "--seconds", type=float, help="timed per network and setting, after warm-up (10)"
    )
    timing.add_argument("--batch-size", type=int, help="images per step (the paper's: 32)")
    cluster = run.add_argument_group("cluster (--launcher submitit: the cluster extra)")
    cluster.add_argument(
        "--launcher",
        choices=["local", "submitit", "submitit-local"],
        default="local",
        help="local: here; submitit: one Slurm job array; submitit-local: submitit on this machine",
    )
    cluster.add_argument("--slurm-partition", help="the partition to submit to")
    cluster.add_argument("--slurm-time", help="each job's time limit: minutes or [D-]HH:MM:SS")
    cluster.add_argument(
        "--slurm-signal-delay",
        type=int,
        metavar="SECONDS",
        help="USR2 (checkpoint and requeue) this long before the time limit (90)",
    )
    cluster.add_argument("--gpus-per-run", type=int, help="GPUs of each job (default 1)")
    cluster.add_argument("--max-parallel", type=int, help="jobs running at once (array cap)")
    cluster.add_argument(
        "--slurm-option", action="append", metavar="KEY=VALUE", help="any other sbatch option"
    )
    status = actions.add_parser("status", help="where each run of an experiment stands")
    status.add_argument("exp_dir", metavar="EXP_DIR")
    status.add_argument("--json", action="store_true")
    save = actions.add_parser("save", help="copy a table run's small files into the ledger")
    save.add_argument("exp_dir")
    save.add_argument("--to", required=True, help="a folder under results/")


def _report(verbs) -> None:
    report = verbs.add_parser("report", help="the tables of run directories, beside the paper")
    report.add_argument("exp_dir", metavar="EXP_DIR")
    report.add_argument("--format", choices=["md", "csv", "json"], default="md")
    report.add_argument("--out", help="write to FILE instead of printing")
    report.add_argument("--plots", metavar="DIR", help="write PNG and SVG plots into DIR")
    report.add_argument("--into", metavar="FILE", help="replace the results section of FILE")
    report.add_argument("--per-seed", action="store_true", help="each seed's error per cell")
    report.add_argument(
        "--last-k",
        type=int,
        metavar="K",
        help="also the mean of each run's last K tested epochs (FixMatch/USB; not the paper's)",
    )


def _bench(verbs) -> None:
    bench = verbs.add_parser("bench", help="training and inference speed against eager fp32")
    bench.add_argument("model")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--batch-size", type=int, default=128)
    bench.add_argument("--steps", type=int, help="timed steps (default: 50 on a GPU, 5 on a CPU)")
    bench.add_argument("--compile-step", action="store_true", help="also the whole step compiled")
    bench.add_argument(
        "--force-bf16", action="store_true", help="also bf16 where the CPU only emulates it"
    )
    bench.add_argument("--dataset", default="folder", help="with --data-dir: the data's kind")
    bench.add_argument("--data-dir", help="real images: the run's loader alone, then with the step")
    bench.add_argument("--loader", choices=["auto", "resident", "stream"], help="as wrn train's")
    bench.add_argument("--workers", type=int, help="streaming: decoding processes")
    bench.add_argument(
        "--calibrate",
        action="store_true",
        help="CPU: first time every training setting here; wrn train then chooses by it",
    )
    bench.add_argument("--json", action="store_true")


def _handover(verbs) -> None:
    export = verbs.add_parser("export", help="a trained model as safetensors or ONNX")
    export.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT")
    export.add_argument("--format", choices=["safetensors", "onnx"], required=True)
    export.add_argument("--out", required=True)
    export.add_argument(
        "--include-preprocessing",
        action="store_true",
        help="ONNX: uint8 images in, probabilities out",
    )
    export.add_argument("--overwrite", action="store_true")
    predict = verbs.add_parser("predict", help="class probabilities for image files")
    predict.add_argument("model", metavar="MODEL_FILE_OR_RUN")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="files, folders or patterns")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--json", action="store_true")
    imports = verbs.add_parser("import", help="another project's checkpoint as ours")
    imports.add_argument("--from", dest="layout", choices=LAYOUTS, required=True)
    imports.add_argument("file")
    imports.add_argument("--out", required=True)
    imports.add_argument("--key", help="the entry holding the state_dict (default: found)")
    imports.add_argument("--mean", help="input mean, comma-separated (0-1 or 0-255 scale)")
    imports.add_argument("--std", help="input std, comma-separated")
    imports.add_argument(
        "--activation", help="the network's activation where the weights cannot say (DeepMind's)"
    )
    imports.add_argument(
        "--entry",
        help="RobustBench: the zoo entry (Carmon2019Unlabeled; default: the file's name)",
    )
    imports.add_argument("--overwrite", action="store_true")


def build_parser() -> Parser:
    parser = Parser(prog="wrn", description="Wide Residual Networks: build, train, evaluate.")
    parser.add_argument("--version", action="version", version=_version())
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    for add in (_info, _train, _eval, _data, _table, _report, _bench, _handover):
        add(verbs)
    return parser


def split_train_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the command line before `--`, the `wrn train` options after it)."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def parse_train_options(words: list[str]) -> dict[str, Any]:
    """`wrn train` config options given as words (after `wrn table run ... --`), as a dict."""
    parser = Parser(prog="wrn table run ... --", add_help=False)
    _add_config_options(parser)
    return {k: v for k, v in vars(parser.parse_args(words)).items() if k in FIELDS}
