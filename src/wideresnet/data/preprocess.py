"""Preprocessing of the paper: mean/std (CIFAR), /255 (SVHN), GCN + ZCA (Table 4), and
ImageNet's mean/std (fb.resnet.torch's)."""

from __future__ import annotations

import numpy as np
import torch

from wideresnet.data.cache import cached_arrays, fingerprint
from wideresnet.errors import DataError

# The paper's normalisation on the 0-255 scale (PAPER.md "Training recipes").
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # fb.resnet.torch's, on 0-255
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
GCN_SCALE = 55.0
GCN_MIN_NORM = 1e-8  # a flat image (zero contrast) keeps norm 1: divided by nothing
ZCA_FILTER_BIAS = 0.01
ZCA_CHUNK = 4096  # images whitened at a time


def normalisation(preprocess: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) on the 0-255 scale that the loader applies; (None, None) after ZCA."""
    if preprocess == "div255":
        return (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)
    if preprocess == "meanstd":
        return CIFAR_MEAN, CIFAR_STD
    if preprocess == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return None, None  # zca: images are whitened beforehand


def check_normalization(mean, std, where: str) -> tuple[list[float], list[float]]:
    """A mean/std an input transform may use: three finite values each, the std positive
    (anything else makes every output NaN or infinite); DataError naming `where` otherwise."""
    try:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: mean and std must be numbers, got {mean!r} and {std!r}"
        ) from None
    if len(mean) != 3 or len(std) != 3:
        raise DataError(
            f"{where}: mean and std need 3 values each (RGB), got {len(mean)} and {len(std)}"
        )
    if not all(np.isfinite(mean)) or not all(np.isfinite(std)) or min(std) <= 0:
        raise DataError(f"{where}: mean {mean} and std {std} must be finite, the std > 0")
    return mean, std


def gcn(x: np.ndarray, scale: float = GCN_SCALE) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.sqrt((x**2).sum(axis=1, keepdims=True)) / scale
    norms[norms < GCN_MIN_NORM] = 1.0
    return x / norms


def fit_zca(images: np.ndarray, filter_bias: float = ZCA_FILTER_BIAS, scale: float = GCN_SCALE):
    """Global contrast normalisation then ZCA, as pylearn2's make_cifar10_gcn_whitened.py:
    GCN(scale=55) per image, ZCA(filter_bias=0.01) fitted on these images.
    Returns (mean (D,), whitening matrix (D, D)) as float32."""
    x = gcn(images.reshape(len(images), -1).astype(np.float64), scale)
    mean = x.mean(axis=0)
    x -= mean
    covariance = x.T @ x / len(x)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    whiten = (eigenvectors / np.sqrt(eigenvalues + filter_bias)) @ eigenvectors.T
    return mean.astype(np.float32), whiten.astype(np.float32)


def zca_transform(images: np.ndarray, mean: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """Whiten uint8 (N, H, W, C) images; returns float32 of the same shape."""
    out = np.empty(images.shape, dtype=np.float32)
    flat, result = images.reshape(len(images), -1), out.reshape(len(images), -1)
    for start in range(0, len(images), ZCA_CHUNK):
        chunk = gcn(flat[start : start + ZCA_CHUNK].astype(np.float32)) - mean
        result[start : start + ZCA_CHUNK] = chunk @ whiten
    return out


def cached_zca(images: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
    """fit_zca on the training images, cached by a fingerprint of their bytes."""
    sample = images[:: max(1, len(images) // 512)].tobytes()
    digest = fingerprint([key, str(images.shape), sample])

    def fit() -> dict[str, np.ndarray]:
        mean, whiten = fit_zca(images)
        return {"mean": mean, "whiten": whiten}

    name = "zca-" + fingerprint([key])[:8]  # a new fit for the same source replaces the old
    arrays = cached_arrays("zca", name, digest, fit)
    return arrays["mean"], arrays["whiten"]


class InputTransform(torch.nn.Module):
    """uint8 images (N, H, W, 3) -> the float (N, 3, H, W) input a model was trained on: the
    run's mean/std (on the 0-255 scale), or GCN + ZCA with the run's fit (gcn() and
    zca_transform() in torch, so that it exports; tests hold the two equal)."""

    def __init__(self, mean=None, std=None, zca_mean=None, zca_whiten=None) -> None:
        super().__init__()
        self.zca = zca_whiten is not None
        if self.zca:
            self.register_buffer("zca_mean", torch.as_tensor(zca_mean, dtype=torch.float32))
            self.register_buffer("zca_whiten", torch.as_tensor(zca_whiten, dtype=torch.float32))
        else:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.zca:
            flat = x.reshape(x.shape[0], -1)
            flat = flat - flat.mean(dim=1, keepdim=True)
            norms = torch.sqrt((flat * flat).sum(dim=1, keepdim=True)) / GCN_SCALE
            flat = flat / torch.where(norms < GCN_MIN_NORM, torch.ones_like(norms), norms)
            x = ((flat - self.zca_mean) @ self.zca_whiten).reshape(x.shape)
        else:
            x = (x - self.mean) / self.std
        return x.permute(0, 3, 1, 2)
