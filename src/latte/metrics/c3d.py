"""C3D (Tran et al. 2015) fine-tuned on UCF101: the classifier of the video Inception Score (TGAN protocol).

Same network as TGAN/TGANv2 (`C3DVersion1UCF101`, Caffe `c3d_ucf101_finetune_whole_iter_20000`)
that StyleGAN-V and Latte report IS with: eight 3x3x3 convolutions (pad 1) with ReLU, max-pools
(1,2,2) then (2,2,2) with Chainer's `cover_all` (= ceil mode, so pool5 gives 512x1x4x4), fc6 8192->4096,
fc7 4096->4096, fc8 4096->101, softmax. Input stage of TGANv2: clip in [-1, 1] -> RGB to BGR,
x * 128 -> each frame resized to 112x112 (bilinear, corners aligned) -> + 128 - mean (Sports-1M
mean clip, BGR, (3, 16, 112, 112)).

Weights are not on any package index; they load from a user file (`--c3d-weights` or
$LATTE_C3D_WEIGHTS): TGAN's Chainer `conv3d_deepnetA_ucf.npz` (keys `conv1a/W`, `conv1a/b`, ...; the
mean is read from `mean2.npz` beside it, key "mean"), or a PyTorch/safetensors state dict of this
module (`conv1a.weight`, ..., optional `mean`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from latte.errors import LatteError
from latte.metrics.weights import resolve_weights

C3D_ENV = "LATTE_C3D_WEIGHTS"
C3D_SIZE = 112
C3D_FRAMES = 16
UCF101_CLASSES = 101
# Per-channel BGR Sports-1M mean (TGANv2's commented fallback), used when no mean clip is available.
C3D_CHANNEL_MEAN_BGR = (90.25164795, 97.65701294, 101.4083252)

_CONVS = [("conv1a", 3, 64), ("conv2a", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
          ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512)]
_POOL_AFTER = {"conv1a": (1, 2, 2), "conv2a": (2, 2, 2), "conv3b": (2, 2, 2), "conv4b": (2, 2, 2), "conv5b": (2, 2, 2)}
_FCS = [("fc6", 512 * 4 * 4, 4096), ("fc7", 4096, 4096), ("fc8", 4096, UCF101_CLASSES)]


class C3D(nn.Module):
    """uint8 clips (B, 16, H, W, 3) -> (B, 101) UCF101 class probabilities."""

    def __init__(self, num_classes: int = UCF101_CLASSES):
        super().__init__()
        for name, cin, cout in _CONVS:
            setattr(self, name, nn.Conv3d(cin, cout, 3, padding=1))
        for name, cin, cout in _FCS:
            setattr(self, name, nn.Linear(cin, cout if name != "fc8" else num_classes))
        mean = torch.tensor(C3D_CHANNEL_MEAN_BGR).view(3, 1, 1, 1).expand(3, C3D_FRAMES, C3D_SIZE, C3D_SIZE)
        self.register_buffer("mean", mean.clone())  # (3, 16, 112, 112), BGR
        self.weights_path = ""
        self.mean_source = "per-channel Sports-1M mean"

    def preprocess(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) RGB -> float (B, 3, T, 112, 112) BGR, mean-subtracted (TGANv2 input stage)."""
        if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"expected uint8 clips (B, T, H, W, 3), got {clips.dtype} {tuple(clips.shape)}")
        b, t, h, w, _ = clips.shape
        if t != self.mean.shape[1]:
            raise ValueError(f"C3D takes {self.mean.shape[1]}-frame clips, got {t}")
        x = clips.flip(-1).permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w).float()  # (B*T, 3, H, W) BGR
        x = (x / 127.5 - 1.0) * 128.0  # the generator range [-1, 1], scaled as TGANv2's `pre` layer
        x = F.interpolate(x, size=(C3D_SIZE, C3D_SIZE), mode="bilinear", align_corners=True)
        x = x.reshape(b, t, 3, C3D_SIZE, C3D_SIZE).permute(0, 2, 1, 3, 4)  # (B, 3, T, 112, 112)
        return x + 128.0 - self.mean

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed (B, 3, 16, 112, 112) -> (B, 101) fc8 outputs."""
        for name, _, _ in _CONVS:
            x = F.relu(getattr(self, name)(x))
            if name in _POOL_AFTER:
                x = F.max_pool3d(x, _POOL_AFTER[name], _POOL_AFTER[name], ceil_mode=True)
        x = x.flatten(1)  # (B, 512*1*4*4), C-order as Chainer's Linear flattens
        x = F.relu(self.fc6(x))
        x = F.relu(self.fc7(x))
        return self.fc8(x)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.logits(self.preprocess(clips)).softmax(dim=-1)


def _mean_clip(array: np.ndarray) -> torch.Tensor:
    """TGANv2 mean: (3, 16, 112, 112) as is, a larger (3, 16, H, W) cropped [8:120, 8:120], or (3,) per channel."""
    mean = torch.as_tensor(np.asarray(array, dtype=np.float32))
    while mean.ndim > 4 and mean.shape[0] == 1:  # e.g. (1, 3, 16, H, W)
        mean = mean[0]
    if mean.shape == (3,):
        return mean.view(3, 1, 1, 1).expand(3, C3D_FRAMES, C3D_SIZE, C3D_SIZE).clone()
    if mean.ndim == 4 and mean.shape[:2] == (3, C3D_FRAMES) and min(mean.shape[2:]) >= C3D_SIZE:
        if tuple(mean.shape[2:]) == (C3D_SIZE, C3D_SIZE):
            return mean.clone()
        if min(mean.shape[2:]) >= C3D_SIZE + 8:
            return mean[:, :, 8:8 + C3D_SIZE, 8:8 + C3D_SIZE].clone()
    raise LatteError(f"C3D mean has shape {tuple(mean.shape)}: expected (3, 16, 112, 112), (3, 16, >=120, >=120) or (3,)")


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict of `C3D`, where its mean came from) from a Chainer npz, a safetensors file or a torch file."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        state = {}
        for key, array in arrays.items():
            parts = key.strip("/").split("/")
            if key == "mean":
                state["mean"] = torch.from_numpy(array)
            elif len(parts) >= 2 and parts[-1] in ("W", "b"):
                state[f"{parts[-2]}.{'weight' if parts[-1] == 'W' else 'bias'}"] = torch.from_numpy(array)
        if "mean" in state:
            return state, path.name
        if (path.parent / "mean2.npz").is_file():
            with np.load(path.parent / "mean2.npz") as data:
                state["mean"] = torch.from_numpy(data["mean"])
            return state, "mean2.npz"
        return state, ""
    if suffix == ".safetensors":
        state = load_file(str(path))
        return state, path.name if "mean" in state else ""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-checkpoint files
        raise LatteError(f"cannot read C3D weights {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LatteError(f"C3D weights {path} hold a {type(state).__name__}, expected a state dict")
    return state, path.name if "mean" in state else ""


def c3d_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """Explicit path -> $LATTE_C3D_WEIGHTS; nothing ships these weights, so there is no package fallback."""
    return resolve_weights(weights, C3D_ENV, None, None, "C3D",
                           "give the UCF101 C3D (TGAN conv3d_deepnetA_ucf.npz) with --c3d-weights or $LATTE_C3D_WEIGHTS")


def load_c3d(weights: str | os.PathLike | None = None) -> C3D:
    """The UCF101 C3D with weights from `weights` / $LATTE_C3D_WEIGHTS, in eval mode."""
    path = c3d_weights_path(weights)
    state, mean_file = _read_state(path)
    model = C3D()
    mean = state.pop("mean", None)
    expected = {k: v for k, v in model.state_dict().items() if k != "mean"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LatteError(f"C3D weights {path} do not match the UCF101 C3D: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise LatteError(f"C3D weights {path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if mean is not None:
        model.mean.copy_(_mean_clip(mean.numpy()))
        model.mean_source = f"mean from {mean_file}"
    else:
        warnings.warn(f"no C3D mean clip with {path} (no 'mean' entry, no mean2.npz beside it): "
                      "using the per-channel Sports-1M mean; IS may differ slightly from TGAN's", stacklevel=2)
    model.weights_path = str(path)
    return model.eval().requires_grad_(False)
