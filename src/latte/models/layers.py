"""Building blocks shared by every Latte variant: embeddings, attention, MLP, modulation.

Names of submodules (`qkv`, `proj`, `fc1`, `fc2`, `mlp.0`, `embedding_table`, ...) follow the
official Latte / DiT checkpoints so their state dicts load without renaming.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Fixed position embeddings (MAE-style sin-cos; computed in float64 as the official code does)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[sin(pos * w_i) ..., cos(pos * w_i) ...] with w_i = 1 / 10000^(i / (dim/2)). -> (L, dim)"""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)  # (L, dim/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """2-D sin-cos over a row-major token grid: first dim/2 channels = column, last = row. -> (h*w, dim)"""
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")  # (h, w) each
    return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)


# ----------------------------------------------------------------------------------------------
# Rotary position embedding (RoFormer, Su et al. 2021) for the temporal axis


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angles (L, head_dim/2) for integer or float positions (L,)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    return torch.outer(positions.to(torch.float64), inv_freq)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (..., L, head_dim) by angles (L, head_dim/2)."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (..., L, head_dim/2) each
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------------------------
# Attention and MLP


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (S, D) conditioning broadcast over the sequence (S, L, D)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))  # one fused pass over x


def gated_residual(x: torch.Tensor, out: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """x + gate * out (adaLN-Zero), gate (S, D) broadcast over the sequence; x + out without a gate."""
    return x + out if gate is None else torch.addcmul(x, gate.unsqueeze(1), out)


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (flash / memory-efficient
    kernels where the backend has them)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S, L, D) -> q, k, v each (S, heads, L, head_dim)."""
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # (S, L, 3, H, hd)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, rope_skip: int = 0) -> torch.Tensor:
        """x (S, L, D). `rope` angles rotate q and k of tokens rope_skip.. (extra tokens stay unrotated)."""
        q, k, v = self.heads(x)
        if rope is not None:
            q = torch.cat([q[:, :, :rope_skip], apply_rope(q[:, :, rope_skip:], rope)], dim=2)
            k = torch.cat([k[:, :, :rope_skip], apply_rope(k[:, :, rope_skip:], rope)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)  # (S, H, L, hd)
        return self.proj(out.transpose(1, 2).flatten(2))  # (S, L, D)


_gelu_inplace = getattr(torch._C._nn, "gelu_", None)  # aten::gelu_, no public Python name


class Mlp(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2, as in DiT/Latte."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (..., hidden)
        if _gelu_inplace is None or (torch.is_grad_enabled() and h.requires_grad):
            return self.fc2(self.act(h))
        # inference: GELU in place, one hidden-size buffer (4x the token grid) less to allocate per block
        return self.fc2(_gelu_inplace(h, approximate=self.act.approximate))


# ----------------------------------------------------------------------------------------------
# Conditioning embedders


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features ([cos, sin], 256 frequencies) -> Linear, SiLU, Linear."""

    def __init__(self, dim: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def features(t: torch.Tensor, size: int, max_period: float = 10000.0) -> torch.Tensor:
        half = size // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]  # (B, half)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = self.features(t, self.frequency_size)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with one extra row (index num_classes) for the null label of classifier-free
    guidance; in training, labels are replaced by the null label with probability `dropout`."""

    def __init__(self, num_classes: int, dim: int, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """`drop` (bool, labels' shape) chooses the dropped labels; without it they are drawn here."""
        if drop is None and self.training and self.dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)
