"""The blocks of the Latte backbone and the per-forward context they share.

Tokens live on a grid x of shape (B, F, N, D): B clips, F token frames (video frames first, then
`num_images` independent image frames for joint training), N = h*w spatial patches, D channels.
Pointwise work (norms, modulation, residuals, MLP) runs on the grid as it is; only attention
regroups tokens into sequences: one per frame over N (spatial, a view) or one per position over
the video frames (temporal). Image frames never reach a temporal module (paper Sec. 3.3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

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


@dataclass
class Context:
    """Per-forward conditioning, built once by the model and shared by every block. Which fields are
    set depends on the conditioning:

    adaln         frames (B, F, D): condition of every frame; video (B, D): of the clip.
    tokens        frame_tokens (B*F, K, D), video_tokens (B, K, D): normalised extra tokens.
    adaln-single  t0 (B, 6D): the shared modulation vector; t_emb (B, D); text (B, G, L, D) projected
                  captions with text_bias (B, G, L) (additive, padded tokens) or None.
    """

    video_frames: int  # token frames of the video part; frames after it are images
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # temporal (cos, sin), each (video_frames, head_dim/2)
    frames: torch.Tensor | None = None
    video: torch.Tensor | None = None
    frame_tokens: torch.Tensor | None = None
    video_tokens: torch.Tensor | None = None
    t0: torch.Tensor | None = None
    t_emb: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_bias: torch.Tensor | None = None


class Modulation(NamedTuple):
    """adaLN terms of one block, each broadcast against the grid it modulates: (B, F, 1, D) per frame
    or (B, 1, 1, D) per clip; all None without adaLN (token conditioning)."""

    shift_msa: torch.Tensor | None = None
    scale_msa: torch.Tensor | None = None
    gate_msa: torch.Tensor | None = None
    shift_mlp: torch.Tensor | None = None
    scale_mlp: torch.Tensor | None = None
    gate_mlp: torch.Tensor | None = None
    shift_tmsa: torch.Tensor | None = None  # factorised blocks: their temporal attention
    scale_tmsa: torch.Tensor | None = None
    gate_tmsa: torch.Tensor | None = None


# Order of the chunks in adaLN outputs and scale-shift tables (factorised blocks: 9, others: 6).
CHUNKS = ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp")
FACTORISED_CHUNKS = ("shift_msa", "scale_msa", "gate_msa", "shift_tmsa", "scale_tmsa", "gate_tmsa",
                     "shift_mlp", "scale_mlp", "gate_mlp")
# Rows of the shared adaLN-single vector (6 chunks) each chunk adds to: a factorised block's temporal
# attention takes the attention terms, as its spatial attention does, plus its own table rows.
SINGLE_ROWS = {6: [0, 1, 2, 3, 4, 5], 9: [0, 1, 2, 0, 1, 2, 3, 4, 5]}


class LatteBlock(nn.Module):
    """One block of kind `spatial`, `temporal` (variants 1, 2), `factorised` (variant 3: spatial
    attention, temporal attention, MLP) or `split` (variant 4: half the heads over space, half over
    time). With adaLN every sublayer is modulated and gated (DiT adaLN-Zero), by the block's own
    linear map (S-AdaLN) or its own table plus the shared vector (adaLN-single); with token
    conditioning the extra tokens join every attended sequence. Blocks that attend over space may
    also attend to caption tokens (PixArt-alpha cross-attention: no norm, no gate)."""

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
        self.conditioning = conditioning
        if conditioning == "adaln":
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, len(self.chunks) * dim))
        elif conditioning == "adaln-single":
            self.scale_shift_table = nn.Parameter(torch.randn(len(self.chunks), dim) / dim**0.5)

    # -- conditioning ---------------------------------------------------------------------------
    def modulation(self, ctx: Context, per_clip: bool) -> Modulation:
        """The block's adaLN terms: per frame (B, F, 1, D) over the whole grid, or per clip (B, 1, 1, D)."""
        if self.conditioning == "tokens":
            return Modulation()
        if self.conditioning == "adaln-single":  # always per clip
            shared = ctx.t0.unflatten(1, (6, -1))[:, SINGLE_ROWS[len(self.chunks)]]  # (B, k, D)
            terms = (self.scale_shift_table[None] + shared)[:, :, None, None].unbind(1)  # k x (B, 1, 1, D)
        elif per_clip:
            terms = [m[:, None, None] for m in self.adaLN_modulation(ctx.video).chunk(len(self.chunks), dim=-1)]
        else:
            terms = [m[:, :, None] for m in self.adaLN_modulation(ctx.frames).chunk(len(self.chunks), dim=-1)]
        return Modulation(**dict(zip(self.chunks, terms)))

    # -- sublayers ----------------------------------------------------------------------------------
    @staticmethod
    def _normed(norm, x, shift, scale) -> torch.Tensor:
        h = norm(x)
        return h if shift is None else modulate(h, shift, scale)

    def _spatial_attention(self, x, shift, scale, gate, ctx: Context) -> torch.Tensor:
        """Residual attention over each frame's patches: sequences (B*F, N, D), a view of the grid."""
        seq = to_spatial(self._normed(self.norm1, x, shift, scale))
        if ctx.frame_tokens is None:
            out = self.attn(seq)
        else:
            k = ctx.frame_tokens.shape[1]
            out = self.attn(torch.cat([ctx.frame_tokens, seq], dim=1))[:, k:]  # (B*F, N, D)
        return gated_residual(x, from_spatial(out, x.shape[0]), gate)

    @staticmethod
    def _temporal_attention(attn, norm, video, shift, scale, gate, ctx: Context) -> torch.Tensor:
        """Residual attention over the video frames at each position: sequences (B*N, Fv, D); token
        conditioning puts the clip's extra tokens in front of each (expanded, one concatenation)."""
        batch, _, n, _ = video.shape
        h = LatteBlock._normed(norm, video, shift, scale)  # (B, Fv, N, D)
        if ctx.video_tokens is None:
            out = attn(to_temporal(h), rope=ctx.rope)
        else:
            k = ctx.video_tokens.shape[1]
            extra = ctx.video_tokens[:, None].expand(-1, n, -1, -1)  # (B, N, K, D)
            seq = torch.cat([extra, h.transpose(1, 2)], dim=2).flatten(0, 1)  # (B*N, K+Fv, D)
            out = attn(seq, rope=ctx.rope, rope_skip=k)[:, k:]
        return gated_residual(video, from_temporal(out, batch), gate)

    def _feed_forward(self, x, m: Modulation) -> torch.Tensor:
        return gated_residual(x, self.mlp(self._normed(self.norm2, x, m.shift_mlp, m.scale_mlp)), m.gate_mlp)

    def _split_heads_attention(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Variant 4: h (B, F, N, D) normalised tokens; the first half of the heads attend over the
        frame's patches, the second half over the video frames at each position. -> (B, F, N, D)"""
        attn, fv, batch = self.attn, ctx.video_frames, h.shape[0]
        half = attn.num_heads // 2
        seq = to_spatial(h)  # (B*F, N, D)
        extra_s = ctx.frame_tokens  # (B*F, K, D) or None
        k = 0 if extra_s is None else extra_s.shape[1]
        q, key, v = attn.heads(seq if extra_s is None else torch.cat([extra_s, seq], dim=1))  # (B*F, H, K+N, hd)
        spatial = F.scaled_dot_product_attention(q[:, :half], key[:, :half], v[:, :half])[:, :, k:]

        def video_sequences(t: torch.Tensor) -> torch.Tensor:  # (B*F, H, K+N, hd) -> (B*N, H/2, Fv, hd)
            t = t[:, half:, k:].unflatten(0, (batch, -1))[:, :fv]  # (B, Fv, H/2, N, hd)
            return t.permute(0, 3, 2, 1, 4).flatten(0, 1)

        qt, kt, vt = video_sequences(q), video_sequences(key), video_sequences(v)
        if ctx.rope is not None:
            qt, kt = apply_rope(qt, ctx.rope), apply_rope(kt, ctx.rope)
        n = h.shape[2]
        if ctx.video_tokens is not None:  # the clip's extra tokens, projected once and shared by its positions
            def per_position(e: torch.Tensor) -> torch.Tensor:  # (B, H, K, hd) -> (B*N, H/2, K, hd)
                return e[:, None, half:].expand(-1, n, -1, -1, -1).flatten(0, 1)

            qe, ke, ve = attn.heads(ctx.video_tokens)  # (B, H, K, hd)
            qt, kt, vt = (torch.cat([per_position(e), t], dim=2) for e, t in ((qe, qt), (ke, kt), (ve, vt)))
        kv = 0 if ctx.video_tokens is None else ctx.video_tokens.shape[1]
        temporal = F.scaled_dot_product_attention(qt, kt, vt)[:, :, kv:]  # (B*N, H/2, Fv, hd)
        temporal = temporal.unflatten(0, (batch, -1)).permute(0, 3, 2, 1, 4)  # (B, Fv, H/2, N, hd)
        images = v[:, half:, k:].unflatten(0, (batch, -1))[:, fv:]  # image frames: no temporal mixing
        temporal = torch.cat([temporal, images], dim=1).flatten(0, 1)  # (B*F, H/2, N, hd)
        out = torch.cat([spatial, temporal], dim=1)  # (B*F, H, N, hd)
        return from_spatial(attn.proj(out.transpose(1, 2).flatten(2)), batch)  # (B, F, N, D)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """x (B, F, N, D) -> (B, F, N, D)."""
        fv = ctx.video_frames
        if self.kind == "temporal":  # video frames only; image frames pass through
            m = self.modulation(ctx, per_clip=True)
            video = self._temporal_attention(self.attn, self.norm1, x[:, :fv], m.shift_msa, m.scale_msa,
                                             m.gate_msa, ctx)
            return with_images(self._feed_forward(video, m), x, fv)
        m = self.modulation(ctx, per_clip=False)
        if self.kind == "split":
            h = self._normed(self.norm1, x, m.shift_msa, m.scale_msa)
            x = gated_residual(x, self._split_heads_attention(h, ctx), m.gate_msa)
        else:
            x = self._spatial_attention(x, m.shift_msa, m.scale_msa, m.gate_msa, ctx)
        if hasattr(self, "cross_attn"):
            x = x + self.cross_attn(x, ctx.text, ctx.text_bias, fv)
        if self.kind == "factorised":
            t = m if self.conditioning != "adaln" else self.modulation(ctx, per_clip=True)
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
