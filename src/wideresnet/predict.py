"""`wrn predict`: class probabilities for image files, with the model's own input transform.

Any image Pillow reads is converted to 8-bit RGB (16-bit grey scaled, alpha dropped, 32-bit
images refused) and resized with bilinear filtering to the model's input size, without
cropping; then normalised as the model's run normalised its data. A file that cannot be read
is reported by name while the others are still predicted.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wideresnet.data.folders import IMAGE_SUFFIXES, decode_image, read_image_file
from wideresnet.errors import DataError
from wideresnet.export import load_model

BATCH = 64


def expand(inputs: list[str]) -> list[Path]:
    """Files as given; a folder gives its image files (recursively, sorted); a pattern the
    shell did not expand is expanded here."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif not path.exists() and glob.has_magic(item):
            paths += sorted(Path(p) for p in glob.glob(item, recursive=True))
        else:
            paths.append(path)
    return paths


def read_image(path: Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3) from an image file, or DataError naming it."""
    return decode_image(read_image_file(path), str(path), size)


def predict(model_source: str | Path, inputs: list[str], top_k: int = 5) -> list[dict[str, Any]]:
    """One entry per image, in order: {"file", "top": [{"class", "probability"}]} or
    {"file", "error"}."""
    if top_k < 1:
        raise DataError(f"--top-k {top_k}: give 1 or more")
    model = load_model(model_source)
    paths = expand(inputs)
    if not paths:
        raise DataError(f"no images in {', '.join(inputs)} (files, folders or patterns)")
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, np.ndarray]] = []
    for path in paths:
        try:
            pending.append((len(results), read_image(path, model.input_size)))
            results.append({"file": str(path)})
        except DataError as error:
            results.append({"file": str(path), "error": str(error)})
    k = min(top_k, len(model.classes))
    for start in range(0, len(pending), BATCH):
        chunk = pending[start : start + BATCH]
        images = torch.from_numpy(np.stack([image for _, image in chunk]))
        with torch.no_grad():
            probabilities = model(model.input_transform(images)).softmax(1)
        values, indices = probabilities.topk(k, dim=1)
        for (where, _), p, i in zip(chunk, values.tolist(), indices.tolist()):
            top = [{"class": model.classes[c], "probability": v} for v, c in zip(p, i)]
            results[where]["top"] = top
    return results
