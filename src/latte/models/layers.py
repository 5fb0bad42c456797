"""Building blocks shared by every Latte variant: embeddings, attention, MLP, modulation.

Names of submodules (`qkv`, `proj`, `fc1`, `fc2`, `mlp.0`, `embedding_table`, ...) follow the
official Latte / DiT checkpoints so their state dicts load without renaming.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Fixed position embeddings (MAE-style sin-cos, computed in float64 as the official code does; built
# once per size, when a model is made or a new size first arrives, never per step)


def sincos_1d(dim: int, positions) -> torch.Tensor:
    """[sin(pos * w_i) ..., cos(pos * w_i) ...] with w_i = 1 / 10000^(i / (dim/2)). -> (L, dim) float64"""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    positions = torch.as_tensor(positions, dtype=torch.float64).reshape(-1)
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = torch.outer(positions, omega)  # (L, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, base: tuple[int, int] | None = None,
              scale: float = 1.0) -> torch.Tensor:
    """2-D sin-cos over a row-major token grid: first dim/2 channels = column, last = row. -> (h*w, dim)
    Positions are grid indices; with `base` (trained grid rows, columns) they are normalised as
    PixArt-alpha does (arXiv 2310.00426): index / (grid / base) / scale, so any resolution spans the
    trained range."""
    rows = torch.arange(grid_h, dtype=torch.float32)
    cols = torch.arange(grid_w, dtype=torch.float32)
    if base is not None:  # float32 arithmetic, as PixArt-alpha's positions are computed
        rows, cols = rows / (grid_h / base[0]) / scale, cols / (grid_w / base[1]) / scale
    rows, cols = torch.meshgrid(rows, cols, indexing="ij")  # (h, w) each
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


# ----------------------------------------------------------------------------------------------
# Rotary position embedding (RoFormer, Su et al. 2021) for the temporal axis


def rope_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angles (L, head_dim/2) for integer or float positions (L,)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    return torch.outer(positions.to(torch.float64), inv_freq)


def rope_table(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (L, head_dim/2) float32: computed once per forward and shared by every block."""
    angles = rope_angles(positions, head_dim)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (..., L, head_dim) by the (cos, sin) of rope_table."""
    cos, sin = (r.to(x.dtype) for r in rope)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (..., L, head_dim/2) each
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------------------------
# Attention and MLP


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift; shift and scale already broadcast against x (e.g. (B, F, 1, D)
    per frame or (B, 1, 1, D) per clip over the (B, F, N, D) grid)."""
    return torch.addcmul(shift, x, 1 + scale)  # one fused pass over x


def gated_residual(x: torch.Tensor, out: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """x + gate * out (adaLN-Zero), gate broadcast like modulate's; x + out without a gate."""
    return x + out if gate is None else torch.addcmul(x, gate, out)


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (flash / memory-efficient
    kernels where the backend has them)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S, L, D) -> q, k, v each (S, heads, L, head_dim)."""
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # (S, L, 3, H, hd)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def extra_kv(self, extra: torch.Tensor, sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of extra tokens (S', K, D), each shared by S/S' consecutive sequences of
        `sequences` = S: k, v each (S, H, K, hd)."""
        _, k, v = self.heads(extra)  # (S', H, K, hd)
        repeat = sequences // extra.shape[0]
        if repeat == 1:
            return k, v
        return tuple(e[:, None].expand(-1, repeat, -1, -1, -1).flatten(0, 1) for e in (k, v))

    def forward(self, x: torch.Tensor, rope: tuple | None = None, extra: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (S, L, D), its tokens queries, keys and values; `rope` (cos, sin) rotates their q and k.
        `extra` (S', K, D): condition tokens put in front of the keys and values of S/S' consecutive
        sequences each (not rotated, no output); `mask` (L, K + L) bool: the keys each query sees.
        -> (S, L, D)"""
        q, k, v = self.heads(x)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if extra is not None:
            ke, ve = self.extra_kv(extra, x.shape[0])
            k, v = torch.cat([ke, k], dim=2), torch.cat([ve, v], dim=2)  # (S, H, K+L, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (S, H, L, hd)
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


# ----------------------------------------------------------------------------------------------
# Text conditioning (PixArt-alpha, arXiv 2310.00426, Sec. 2.3)

MASK_BIAS = -10000.0  # additive attention bias of padded caption tokens (PixArt-alpha's value)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """q (S, H, M, hd), k/v (S, H, L, hd), bias (S, L) additive or None -> (S, M, H*hd)."""
    mask = None if bias is None else bias[:, None, None, :].to(q.dtype)  # (S, 1, 1, L)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)


class CrossAttention(nn.Module):
    """Attention of image tokens (queries) to caption tokens (keys, values)."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(S, M, D) -> (S, H, M, hd)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor, text: torch.Tensor, bias: torch.Tensor | None,
                video_frames: int) -> torch.Tensor:
        """x (B, F, N, D); text (B, G, L, D) with G = 1 (one caption per clip) or 1 + images (video
        caption, then one per image frame); bias (B, G, L) or None. -> (B, F, N, D)."""
        batch, frames, n, _ = x.shape
        kv = self.kv(text).unflatten(-1, (2, self.num_heads, self.head_dim))  # (B, G, L, 2, H, hd)
        k, v = kv.permute(3, 0, 1, 4, 2, 5)  # (B, G, H, L, hd) each
        q = self.q(x)  # (B, F, N, D)

        def group(index):  # keys, values, bias of caption group `index` (an int or the image slice)
            pick = (lambda t: t[:, index]) if isinstance(index, int) else (lambda t: t[:, index].flatten(0, 1))
            return pick(k), pick(v), None if bias is None else pick(bias)

        if text.shape[1] == 1:  # every frame attends to the clip's caption: one sequence of F*N queries
            out = masked_attention(self._heads(q.flatten(1, 2)), *group(0))  # (B, F*N, D)
            return self.proj(out).unflatten(1, (frames, n))
        fv = video_frames
        video = masked_attention(self._heads(q[:, :fv].flatten(1, 2)), *group(0)).unflatten(1, (fv, n))
        images = masked_attention(self._heads(q[:, fv:].flatten(0, 1)), *group(slice(1, None)))  # (B*I, N, D)
        return self.proj(torch.cat([video, images.unflatten(0, (batch, -1))], dim=1))


class CaptionProjection(nn.Module):
    """Text encoder features -> hidden size: Linear, GELU (tanh), Linear (PixArt-alpha's caption embedder)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
