"""`wrn import`: other projects' checkpoints (and the authors' own) converted into ours.

models/official.py and models/foreign.py say how each project's keys map onto our networks;
this module reads their files, builds our model for them, checks the weights fit, and writes
a model-only checkpoint that records where it came from and the input normalisation it
expects (so that `wrn eval`, `predict` and `export` use the right one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from wideresnet.data.preprocess import check_normalization, normalisation
from wideresnet.errors import ModelNameError, RunError
from wideresnet.models import count_params, create_model
from wideresnet.models.foreign import (
    LAYOUTS,
    ROBUSTBENCH,
    Imported,
    from_pytorchcv,
    from_torchvision,
    from_xternalz_layout,
    scaled_to_255,
    state_dict_of,
    zoo_rows,
)
from wideresnet.models.official import infer_official_model, load_official_params
from wideresnet.recipes import make_config
from wideresnet.train.checkpoint import (
    Checkpoint,
    load_weights_file,
    nonfinite_tensor,
    weight_mismatch,
    write_checkpoint,
)


def _write(out: Path, model: nn.Module, options: dict, **record) -> None:
    """Our model-only checkpoint of an imported model (the cifar recipe as its config)."""
    config = make_config("cifar", {"model": model.name, **options})
    classes = [str(i) for i in range(model.fc.out_features)]
    write_checkpoint(out, Checkpoint(config.to_dict(), classes, model.state_dict(), **record))


def import_official(source: str | Path, out: str | Path, overwrite: bool = False) -> str:
    """Convert an authors' model.pt7 into our checkpoint format at `out`; a one-line summary.
    An existing `out` is replaced only with overwrite."""
    source, out = Path(source), Path(out)
    saved = load_weights_file(source, out, overwrite)
    params = saved.get("params", saved) if isinstance(saved, dict) else None
    if not isinstance(params, dict):
        raise RunError(f"{source}: no params dict inside")
    try:
        name, options = infer_official_model(params)
        model = create_model(name, **options)
        load_official_params(model, params)
    except (ValueError, ModelNameError) as error:
        raise RunError(f"{source}: {error}") from None
    bad = nonfinite_tensor(model.state_dict())
    if bad:
        raise RunError(f"{source}: {bad} holds NaN or infinite values; refusing to import it")
    del options["num_classes"]
    _write(out, model, options, source=str(source))
    return f"{name}, block {model.block}, {count_params(model):,} parameters"


def _entry(layout: str, entry: str | None, source: Path) -> tuple[str | None, str]:
    """RobustBench's zoo entry: --entry, else the file's name where it is one (RobustBench
    saves each checkpoint as ENTRY.pt); and a note saying which."""
    if entry is not None or layout not in ROBUSTBENCH:
        return entry, ""
    if not zoo_rows(source.stem):
        return None, ""
    return source.stem, f"the entry from the file's name ({source.name})"  # or refused by it


def _imported(
    layout: str,
    saved: object,
    key: str | None,
    source: Path,
    activation: str | None = None,
    entry: str | None = None,
) -> tuple[Imported, nn.Module]:
    """(the foreign weights as ours, our model built for them), or RunError naming the file."""
    try:
        state = state_dict_of(saved, key)
        entry, note = _entry(layout, entry, source)
        if layout == "torchvision":
            imported = from_torchvision(state)
        elif layout == "pytorchcv":
            imported = from_pytorchcv(state)
        else:
            imported = from_xternalz_layout(state, layout, entry)
        imported.notes += [note] if note else []
        if activation:
            imported.options["activation"] = activation
        classes = imported.weights["fc.weight"].shape[0]
        model = create_model(imported.model, classes, **imported.options)
    except (ValueError, KeyError, ModelNameError) as error:
        raise RunError(f"{source}: not a {layout} checkpoint ({error})") from None
    problem = weight_mismatch(model.state_dict(), imported.weights)
    if problem:
        raise RunError(f"{source}: does not fit {imported.model}: {problem}")
    bad = nonfinite_tensor(imported.weights)
    if bad:
        raise RunError(f"{source}: {bad} holds NaN or infinite values; refusing to import it")
    model.load_state_dict(imported.weights, strict=False)
    return imported, model


def import_checkpoint(
    layout: str,
    source: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    key: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    activation: str | None = None,
    entry: str | None = None,
) -> str:
    """Convert another project's checkpoint into ours at `out`; a one-line summary. `mean`
    and `std` (on the 0-1 or the 0-255 scale) replace the normalisation the layout implies;
    `activation` the one it implies (the DeepMind layout: swish or relu); `entry` names
    RobustBench's zoo entry, which fixes the architecture, activation and normalisation."""
    if entry is not None and layout not in ROBUSTBENCH:
        raise RunError(f"--entry is RobustBench's; not for --from {layout}")
    if layout not in LAYOUTS:
        raise RunError(f"--from {layout}: choose from {', '.join(LAYOUTS)}")
    if layout == "authors":
        return import_official(source, out, overwrite)
    source, out = Path(source), Path(out)
    saved = load_weights_file(source, out, overwrite)
    imported, model = _imported(layout, saved, key, source, activation, entry)
    if isinstance(saved, dict):  # RepDistiller's *_last.pth: its argparse options as 'opt'
        skipped = [k for k, v in saved.items() if isinstance(v, argparse.Namespace)]
        imported.notes += [
            f"its pickled options ({k!r}) read as plain values, not used" for k in skipped
        ]
    given = [scaled_to_255(v) if v else None for v in (mean, std)]
    if imported.preprocess == "unknown" and not all(given):
        raise RunError(
            f"{source}: DeepMind's layout keeps its mean/std outside the state dict: give "
            "--entry NAME (its RobustBench entry) or --mean and --std"
        )
    ours = normalisation("meanstd" if imported.preprocess == "unknown" else imported.preprocess)
    mean, std = check_normalization(
        given[0] or imported.mean or ours[0], given[1] or imported.std or ours[1], str(source)
    )
    normalization = {"mean": mean, "std": std}
    _write(
        out, model, imported.options, source=str(source), layout=layout, normalization=normalization
    )
    notes = "".join(f"; {note}" for note in imported.notes)
    return f"{imported.model} {imported.options or ''}, {count_params(model):,} parameters{notes}"
