"""The blocks of the Latte backbone.

Tokens live on a grid x of shape (B, F, N, D): B clips, F token frames (video frames first, then
`num_images` independent image frames for joint training), N = h*w spatial patches, D channels.
Pointwise work (norms, modulation, residuals, MLP) runs on the grid as it is; only attention
regroups tokens into sequences: one per frame over N (spatial, a view) or one per position over
the video frames (temporal). Image frames never reach a temporal module (paper Sec. 3.3). What a
block is conditioned on comes per token frame from the forward's context (conditioning.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from latte.models.conditioning import CHUNKS, CONDITIONERS, FACTORISED_CHUNKS, Context, Modulation
from latte.models.layers import Attention, CrossAttention, Mlp, apply_rope, gated_residual, modulate

# ----------------------------------------------------------------------------------------------
# The space <-> time regrouping, written once


def to_spatial(x: torch.Tensor) -> torch.Tensor:
    """(B, F, N, D) -> (B*F, N, D): one sequence per frame."""
    return x.flatten(0, 1)


def from_spatial(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*F, N, D) -> (B, F, N, D)."""
    return x.unflatten(0, (batch, -1))


def to_temporal(x: torch.Tensor) -> torch.Tensor:
    """(B, F, N, D) -> (B*N, F, D): one sequence per spatial position."""
    return x.transpose(1, 2).flatten(0, 1)


def from_temporal(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*N, F, D) -> (B, F, N, D)."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)


def with_images(video: torch.Tensor, grid: torch.Tensor, video_frames: int) -> torch.Tensor:
    """Video frames (B, Fv, N, D) followed by the image frames of grid (B, F, N, D) (no copy without images)."""
    if grid.shape[1] == video_frames:
        return video
    return torch.cat([video, grid[:, video_frames:]], dim=1)


def layer_norm(dim: int, eps: float = 1e-6) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=eps)


class LatteBlock(nn.Module):
    """One block of kind `spatial`, `temporal` (variants 1, 2), `factorised` (variant 3: spatial
    attention, temporal attention, MLP) or `split` (variant 4: half the heads over space, half over
    time). With adaLN every sublayer is modulated and gated (DiT adaLN-Zero) per token frame, by
    terms the context makes from the block's own parameters (conditioning.py); with token
    conditioning each frame's tokens are extra keys of every attention. Blocks that attend over space
    may also attend to caption tokens (PixArt-alpha cross-attention: no norm, no gate)."""

    def __init__(self, kind: str, dim: int, num_heads: int, mlp_ratio: float, conditioning: str,
                 cross_attention: bool = False, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.kind = kind
        self.norm1 = layer_norm(dim, eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        if kind == "factorised":
            self.norm_temporal = layer_norm(dim, eps)
            self.temporal_attn = Attention(dim, num_heads, qkv_bias)
        if cross_attention:
            self.cross_attn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm2 = layer_norm(dim, eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.chunks = FACTORISED_CHUNKS if kind == "factorised" else CHUNKS
        # the conditioner's parameters (adaLN_modulation or scale_shift_table), last, as the official code
        for name, value in CONDITIONERS[conditioning].block_parameters(dim, len(self.chunks)).items():
            setattr(self, name, value)

    # -- sublayers ----------------------------------------------------------------------------------
    @staticmethod
    def _normed(norm, x, shift, scale) -> torch.Tensor:
        h = norm(x)
        return h if shift is None else modulate(h, shift, scale)

    def _spatial_attention(self, x, shift, scale, gate, ctx: Context) -> torch.Tensor:
        """Residual attention over each frame's patches: sequences (B*F, N, D), a view of the grid."""
        seq = to_spatial(self._normed(self.norm1, x, shift, scale))
        out = self.attn(seq, extra=ctx.spatial_tokens)  # (B*F, N, D)
        return gated_residual(x, from_spatial(out, x.shape[0]), gate)

    @staticmethod
    def _temporal_attention(attn, norm, video, shift, scale, gate, ctx: Context) -> torch.Tensor:
        """Residual attention over the video frames at each position: sequences (B*N, Fv, D); token
        conditioning puts the clip's per-frame tokens in front of the keys (each query sees its own frame's)."""
        h = LatteBlock._normed(norm, video, shift, scale)  # (B, Fv, N, D)
        out = attn(to_temporal(h), rope=ctx.rope, extra=ctx.temporal_tokens, mask=ctx.temporal_mask)
        return gated_residual(video, from_temporal(out, video.shape[0]), gate)

    def _feed_forward(self, x, m: Modulation) -> torch.Tensor:
        return gated_residual(x, self.mlp(self._normed(self.norm2, x, m.shift_mlp, m.scale_mlp)), m.gate_mlp)

    def _split_heads_attention(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Variant 4: h (B, F, N, D) normalised tokens; the first half of the heads attend over the
        frame's patches, the second half over the video frames at each position. -> (B, F, N, D)"""
        attn, fv, batch, n = self.attn, ctx.video_frames, h.shape[0], h.shape[2]
        half = attn.num_heads // 2
        q, key, v = attn.heads(to_spatial(h))  # (B*F, H, N, hd)
        ks, vs = key[:, :half], v[:, :half]
        if ctx.spatial_tokens is not None:  # each frame's tokens: extra keys of its spatial heads
            ke, ve = attn.extra_kv(ctx.spatial_tokens, q.shape[0])  # (B*F, H, K, hd)
            ks, vs = torch.cat([ke[:, :half], ks], dim=2), torch.cat([ve[:, :half], vs], dim=2)
        spatial = F.scaled_dot_product_attention(q[:, :half], ks, vs)  # (B*F, H/2, N, hd)

        def video_sequences(t: torch.Tensor) -> torch.Tensor:  # (B*F, H, N, hd) -> (B*N, H/2, Fv, hd)
            t = t[:, half:].unflatten(0, (batch, -1))[:, :fv]  # (B, Fv, H/2, N, hd)
            return t.permute(0, 3, 2, 1, 4).flatten(0, 1)

        qt, kt, vt = video_sequences(q), video_sequences(key), video_sequences(v)
        if ctx.rope is not None:
            qt, kt = apply_rope(qt, ctx.rope), apply_rope(kt, ctx.rope)
        if ctx.temporal_tokens is not None:  # every video frame's tokens, projected once per clip
            ke, ve = attn.extra_kv(ctx.temporal_tokens, batch * n)  # (B*N, H, Fv*K, hd)
            kt, vt = torch.cat([ke[:, half:], kt], dim=2), torch.cat([ve[:, half:], vt], dim=2)
        temporal = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=ctx.temporal_mask)  # (B*N, H/2, Fv, hd)
        temporal = temporal.unflatten(0, (batch, -1)).permute(0, 3, 2, 1, 4)  # (B, Fv, H/2, N, hd)
        images = v[:, half:].unflatten(0, (batch, -1))[:, fv:]  # image frames: no temporal mixing
        temporal = torch.cat([temporal, images], dim=1).flatten(0, 1)  # (B*F, H/2, N, hd)
        out = torch.cat([spatial, temporal], dim=1)  # (B*F, H, N, hd)
        return from_spatial(attn.proj(out.transpose(1, 2).flatten(2)), batch)  # (B, F, N, D)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """x (B, F, N, D) -> (B, F, N, D); every adaLN term is per token frame, (B, F, 1, D)."""
        fv = ctx.video_frames
        if self.kind == "temporal":  # video frames only; image frames pass through
            m = ctx.modulation(self, fv)  # (B, Fv, 1, D) terms
            video = self._temporal_attention(self.attn, self.norm1, x[:, :fv], m.shift_msa, m.scale_msa,
                                             m.gate_msa, ctx)
            return with_images(self._feed_forward(video, m), x, fv)
        m = ctx.modulation(self, x.shape[1])
        if self.kind == "split":
            h = self._normed(self.norm1, x, m.shift_msa, m.scale_msa)
            x = gated_residual(x, self._split_heads_attention(h, ctx), m.gate_msa)
        else:
            x = self._spatial_attention(x, m.shift_msa, m.scale_msa, m.gate_msa, ctx)
        if hasattr(self, "cross_attn"):
            x = x + self.cross_attn(x, ctx.text, ctx.text_bias, fv)
        if self.kind == "factorised":
            t = ctx.temporal_modulation(self, m, fv)  # the video frames' terms
            video = self._temporal_attention(self.temporal_attn, self.norm_temporal, x[:, :fv], t.shift_tmsa,
                                             t.scale_tmsa, t.gate_tmsa, ctx)
            x = with_images(video, x, fv)
        return self._feed_forward(x, m)


def block_kinds(variant: int, depth: int) -> list[str]:
    """Sequence of block kinds for a variant (see the table in config.py)."""
    return {
        1: ["spatial", "temporal"] * (depth // 2),
        2: ["spatial"] * (depth // 2) + ["temporal"] * (depth // 2),
        3: ["factorised"] * (depth // 2),
        4: ["split"] * depth,
    }[variant]
