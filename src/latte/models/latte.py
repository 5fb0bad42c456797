"""The Latte video diffusion transformer: one model family covering every design in the paper.

Tokens live on a grid x of shape (B, F, N, D): B clips, F token frames (video frames first, then
`num_images` independent image frames for joint training), N = h*w spatial patches, D channels.
Spatial modules attend over N within each frame; temporal modules attend over the video frames
at each spatial position; image frames never reach a temporal module (paper Sec. 3.3, joint
training). The variants of Sec. 3.1 differ only in which blocks they stack (see config.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from latte.errors import LatteError
from latte.models.config import ModelConfig
from latte.models.layers import (Attention, LabelEmbedder, Mlp, TimestepEmbedder, apply_rope, gated_residual,
                                 modulate, rope_angles, sincos_1d, sincos_2d)


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


@dataclass
class Context:
    """Per-forward conditioning shared by all blocks.

    adaln:  frames (B, F, D) condition of every frame, video (B, D) condition of the clip.
    tokens: frames (B, F, K, D) extra tokens of every frame, video (B, K, D) those of the clip.
    """

    frames: torch.Tensor
    video: torch.Tensor
    video_frames: int  # token frames of the video part; frames after it are images
    grid: int  # N
    rope: torch.Tensor | None  # (video_frames, head_dim/2) rotation angles, or None
    adaln: bool

    def spatial(self) -> torch.Tensor:
        """Condition per frame sequence: (B*F, D) or extra tokens (B*F, K, D)."""
        return self.frames.flatten(0, 1)

    def temporal(self) -> torch.Tensor:
        """Extra tokens per temporal sequence (B*N, K, D) (adaLN modulates the (B, Fv, N, D) grid directly)."""
        return self.video.repeat_interleave(self.grid, dim=0)


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class LatteBlock(nn.Module):
    """One transformer block of kind `spatial`, `temporal` (variants 1, 2), `factorised`
    (variant 3: spatial attention, temporal attention, MLP) or `split` (variant 4: half the heads
    over space, half over time). With S-AdaLN every sublayer is modulated and gated (DiT
    adaLN-Zero); with token conditioning the extra tokens join every attended sequence."""

    def __init__(self, kind: str, dim: int, num_heads: int, mlp_ratio: float, adaln: bool):
        super().__init__()
        self.kind = kind
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        if kind == "factorised":
            self.norm_temporal = layer_norm(dim)
            self.temporal_attn = Attention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.num_mods = 9 if kind == "factorised" else 6
        if adaln:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.num_mods * dim))

    # -- conditioning: shift/scale/gate tensors per sequence, or None without adaLN -------------
    def _spatial_mods(self, ctx: Context) -> list:
        if not ctx.adaln:
            return [None] * self.num_mods
        mods = self.adaLN_modulation(ctx.frames).chunk(self.num_mods, dim=-1)  # each (B, F, D)
        return [m.flatten(0, 1) for m in mods]

    def _temporal_mods(self, ctx: Context) -> list:
        """Per clip, (B, 1, D) each: broadcast over the (B, Fv, N, D) grid, never repeated per position."""
        if not ctx.adaln:
            return [None] * self.num_mods
        return [m[:, None] for m in self.adaLN_modulation(ctx.video).chunk(self.num_mods, dim=-1)]

    # -- sublayers: pointwise work (norm, modulation, residual, MLP) stays in the layout it gets --------
    @staticmethod
    def _attention(attn, norm, h, extra, rope=None) -> torch.Tensor:
        """Attention over sequences h (S, L, D); `extra` (S, K, D) tokens are attended, then dropped."""
        if extra is None:
            return attn(h, rope=rope)
        k = extra.shape[1]
        return attn(torch.cat([norm(extra), h], dim=1), rope=rope, rope_skip=k)[:, k:]  # (S, L, D)

    def _attend(self, attn, norm, seq, shift, scale, gate, extra) -> torch.Tensor:
        """Residual spatial attention sublayer on per-frame sequences (B*F, N, D)."""
        h = norm(seq)
        if shift is not None:
            h = modulate(h, shift, scale)
        return gated_residual(seq, self._attention(attn, norm, h, extra), gate)

    def _temporal_attend(self, attn, norm, video, shift, scale, gate, ctx) -> torch.Tensor:
        """Residual temporal attention on the video grid (B, Fv, N, D): only the attention itself
        regroups tokens into per-position sequences (B*N, Fv, D)."""
        h = norm(video)
        if shift is not None:
            h = modulate(h, shift, scale)
        out = self._attention(attn, norm, to_temporal(h), None if ctx.adaln else ctx.temporal(), ctx.rope)
        return gated_residual(video, from_temporal(out, video.shape[0]), gate)

    def _feed_forward(self, x, shift, scale, gate) -> torch.Tensor:
        h = self.norm2(x)
        if shift is not None:
            h = modulate(h, shift, scale)
        return gated_residual(x, self.mlp(h), gate)

    def _split_heads_attention(self, h: torch.Tensor, ctx: Context, batch: int) -> torch.Tensor:
        """Variant 4: h (B*F, N, D) normalised tokens; first half of the heads attend over the
        frame's patches, second half over the video frames at each position."""
        attn, fv = self.attn, ctx.video_frames
        half = attn.num_heads // 2
        extra_s = None if ctx.adaln else self.norm1(ctx.spatial())  # (B*F, K, D)
        k = 0 if extra_s is None else extra_s.shape[1]
        q, key, v = attn.heads(h if extra_s is None else torch.cat([extra_s, h], dim=1))  # (B*F, H, K+N, hd)
        spatial = F.scaled_dot_product_attention(q[:, :half], key[:, :half], v[:, :half])[:, :, k:]

        def video_sequences(t: torch.Tensor) -> torch.Tensor:  # (B*F, H, K+N, hd) -> (B*N, H/2, Fv, hd)
            t = t[:, half:, k:].unflatten(0, (batch, -1))[:, :fv]  # (B, Fv, H/2, N, hd)
            return t.permute(0, 3, 2, 1, 4).flatten(0, 1)

        qt, kt, vt = video_sequences(q), video_sequences(key), video_sequences(v)
        if ctx.rope is not None:
            qt, kt = apply_rope(qt, ctx.rope), apply_rope(kt, ctx.rope)
        if not ctx.adaln:
            qe, ke, ve = attn.heads(self.norm1(ctx.temporal()))  # (B*N, H, K, hd)
            qt, kt, vt = (torch.cat([e[:, half:], t], dim=2) for e, t in ((qe, qt), (ke, kt), (ve, vt)))
        temporal = F.scaled_dot_product_attention(qt, kt, vt)[:, :, k:]  # (B*N, H/2, Fv, hd)
        temporal = temporal.unflatten(0, (batch, -1)).permute(0, 3, 2, 1, 4)  # (B, Fv, H/2, N, hd)
        images = v[:, half:, k:].unflatten(0, (batch, -1))[:, fv:]  # image frames: no temporal mixing
        temporal = torch.cat([temporal, images], dim=1).flatten(0, 1)  # (B*F, H/2, N, hd)
        out = torch.cat([spatial, temporal], dim=1)  # (B*F, H, N, hd)
        return attn.proj(out.transpose(1, 2).flatten(2))  # (B*F, N, D)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """x (B, F, N, D) -> (B, F, N, D)."""
        batch = x.shape[0]
        extra_s = None if ctx.adaln else ctx.spatial()
        if self.kind == "temporal":  # video frames only; image frames pass through
            mods, fv = self._temporal_mods(ctx), ctx.video_frames
            video = self._temporal_attend(self.attn, self.norm1, x[:, :fv], *mods[:3], ctx)
            return with_images(self._feed_forward(video, *mods[3:]), x, fv)
        mods = self._spatial_mods(ctx)
        seq = to_spatial(x)  # (B*F, N, D)
        if self.kind == "spatial":
            seq = self._attend(self.attn, self.norm1, seq, *mods[:3], extra_s)
        elif self.kind == "factorised":
            seq = self._attend(self.attn, self.norm1, seq, *mods[:3], extra_s)
            grid, fv = from_spatial(seq, batch), ctx.video_frames
            video = self._temporal_attend(self.temporal_attn, self.norm_temporal, grid[:, :fv],
                                          *self._temporal_mods(ctx)[3:6], ctx)
            seq = to_spatial(with_images(video, grid, fv))
            mods = mods[:3] + mods[6:]
        else:  # split heads
            shift, scale, gate = mods[:3]
            h = self.norm1(seq)
            if shift is not None:
                h = modulate(h, shift, scale)
            out = self._split_heads_attention(h, ctx, batch)
            seq = gated_residual(seq, out, gate)
        seq = self._feed_forward(seq, *mods[3:6])
        return from_spatial(seq, batch)


class PatchEmbed(nn.Module):
    """Frame patches (Conv2d, kernel = stride = p, per frame) or tubelets (Conv3d, s x p x p)."""

    def __init__(self, in_channels: int, dim: int, patch: int, frames_per_token: int, tubelet: bool):
        super().__init__()
        self.tubelet = tubelet
        if tubelet:
            kernel = (frames_per_token, patch, patch)
            self.proj = nn.Conv3d(in_channels, dim, kernel_size=kernel, stride=kernel)
        else:
            self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) -> (B, F', N, D), tokens row-major over the (H/p, W/p) grid."""
        if self.tubelet:
            return self.proj(x).flatten(3).permute(0, 2, 3, 1)  # (B, D, F/s, h, w) -> (B, F/s, N, D)
        batch = x.shape[0]
        frames = x.transpose(1, 2).flatten(0, 1)  # (B*F, C, H, W)
        tokens = self.proj(frames).flatten(2).transpose(1, 2)  # (B*F, N, D)
        return tokens.unflatten(0, (batch, -1))


class FinalLayer(nn.Module):
    """LayerNorm (adaLN-modulated with S-AdaLN) then a linear map to the patch's output values."""

    def __init__(self, dim: int, out_features: int, adaln: bool):
        super().__init__()
        self.norm_final = layer_norm(dim)
        self.linear = nn.Linear(dim, out_features)
        if adaln:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.norm_final(x)
        if cond is not None:
            shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
            h = modulate(h, shift, scale)
        return self.linear(h)


def check_video_input(x: torch.Tensor, in_channels: int, patch: int, num_images: int) -> None:
    """One-line errors for a video batch (B, C, F, H, W) a model cannot take."""
    _, channels, frames, height, width = x.shape
    if channels != in_channels:
        raise LatteError(f"model expects {in_channels} input channels, got {channels}")
    if height % patch or width % patch:
        raise LatteError(f"frame size {height}x{width} is not divisible by patch size {patch}")
    if not 0 <= num_images < frames:
        raise LatteError(f"num_images={num_images} must leave at least one video frame of {frames}")


def block_kinds(variant: int, depth: int) -> list[str]:
    """Sequence of block kinds for a variant (see the table in config.py)."""
    return {
        1: ["spatial", "temporal"] * (depth // 2),
        2: ["spatial"] * (depth // 2) + ["temporal"] * (depth // 2),
        3: ["factorised"] * (depth // 2),
        4: ["split"] * depth,
    }[variant]


class Latte(nn.Module):
    """Latte (arXiv 2401.03048): x (B, C, F, H, W), t (B,), y (B,) or (B, 1 + num_images) -> (B, C_out, F, H, W)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c, dim = config, config.hidden_size
        self.adaln = c.conditioning == "adaln"
        stride = c.temporal_stride
        self.x_embedder = PatchEmbed(c.in_channels, dim, c.patch_size, stride, c.patch_embed == "tubelet")
        self.t_embedder = TimestepEmbedder(dim)
        if c.num_classes > 0:
            self.y_embedder = LabelEmbedder(c.num_classes, dim, c.class_dropout)
        h, w = (s // c.patch_size for s in c.latent_hw)
        self.register_buffer("pos_embed", torch.tensor(sincos_2d(dim, h, w), dtype=torch.float32)[None])
        if c.temporal_pos == "absolute":
            frames = np.arange(c.num_frames // stride)
            self.register_buffer("temp_embed", torch.tensor(sincos_1d(dim, frames), dtype=torch.float32)[None])
        kinds = block_kinds(c.variant, c.depth)
        self.blocks = nn.ModuleList(LatteBlock(k, dim, c.num_heads, c.mlp_ratio, self.adaln) for k in kinds)
        self.temporal_start = next(i for i, k in enumerate(kinds) if k != "spatial")
        self.final_layer = FinalLayer(dim, stride * c.patch_size**2 * c.out_channels, self.adaln)
        self._table_cache: dict = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation: xavier-uniform linears with zero bias, the patch projection as a
        linear, N(0, 0.02) timestep MLP and class table, zero adaLN outputs and final linear, so a
        fresh model outputs exactly zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if hasattr(self, "y_embedder"):
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        zero_layers = [self.final_layer.linear]
        if self.adaln:
            zero_layers += [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1]]
        for layer in zero_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- position tables, computed for whatever size arrives -------------------------------------
    def _table(self, key: tuple, stored: torch.Tensor | None, make) -> torch.Tensor:
        if stored is not None and stored.shape[1] == key[1]:
            return stored
        cache_key = key + (stored.device if stored is not None else self.pos_embed.device,)
        if cache_key not in self._table_cache:
            self._table_cache[cache_key] = torch.tensor(make(), dtype=torch.float32, device=cache_key[-1])[None]
        return self._table_cache[cache_key]

    def spatial_table(self, h: int, w: int) -> torch.Tensor:
        stored = self.pos_embed if (h, w) == tuple(s // self.config.patch_size for s in self.config.latent_hw) else None
        return self._table(("pos", h * w, w), stored, lambda: sincos_2d(self.config.hidden_size, h, w))

    def temporal_table(self, frames: int) -> torch.Tensor:
        return self._table(("temp", frames), getattr(self, "temp_embed", None),
                           lambda: sincos_1d(self.config.hidden_size, np.arange(frames)))

    # -- conditioning ---------------------------------------------------------------------------
    def _context(self, t: torch.Tensor, y, drop, frames: int, video_frames: int, grid: int) -> Context:
        batch, num_images = t.shape[0], frames - video_frames
        t_emb = self.t_embedder(t)  # (B, D)
        parts = [t_emb[:, None].expand(-1, frames, -1)]  # (B, F, D) per conditioning token
        video = [t_emb]
        if hasattr(self, "y_embedder"):
            if y is None:  # unconditional sampling: the null class
                y = torch.full((batch,), self.config.num_classes, dtype=torch.long, device=t.device)
            y = y.reshape(batch, -1)  # (B, 1) or (B, 1 + num_images)
            if y.shape[1] not in (1, 1 + num_images):
                raise LatteError(f"labels must be (B,) or (B, 1 + num_images={1 + num_images}), got {tuple(y.shape)}")
            drop = None if drop is None else drop.reshape(y.shape)
            y_emb = self.y_embedder(y, drop)  # (B, 1 or 1+I, D): one draw of label dropout per label
            images = y_emb[:, 1:] if y.shape[1] > 1 else y_emb[:, :1].expand(-1, num_images, -1)
            parts.append(torch.cat([y_emb[:, :1].expand(-1, video_frames, -1), images], dim=1))
            video.append(y_emb[:, 0])
        rope = None
        if self.config.temporal_pos == "rope":
            positions = torch.arange(video_frames, device=t.device)
            rope = rope_angles(positions, self.config.head_dim)
        if self.adaln:
            return Context(sum(parts), sum(video), video_frames, grid, rope, True)
        return Context(torch.stack(parts, dim=2), torch.stack(video, dim=1), video_frames, grid, rope, False)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, num_images: int = 0,
                drop_labels: torch.Tensor | None = None) -> torch.Tensor:
        """`drop_labels` (bool, y's shape) replaces the chosen labels by the null class (training code
        passes it to draw label dropout from its own generator); without it the model draws it."""
        c = self.config
        batch, channels, frames, height, width = x.shape
        stride, p = c.temporal_stride, c.patch_size
        video_frames = frames - num_images
        check_video_input(x, c.in_channels, p, num_images)
        if stride > 1 and (num_images or video_frames % stride):
            raise LatteError(f"tubelet patches need a frame count divisible by {stride} and no image frames")
        h, w = height // p, width // p
        tokens = self.x_embedder(x) + self.spatial_table(h, w)[:, None]  # (B, F', N, D)
        video_tokens = video_frames // stride
        ctx = self._context(t, y, drop_labels, tokens.shape[1], video_tokens, h * w)
        for i, block in enumerate(self.blocks):
            if i == self.temporal_start and c.temporal_pos == "absolute":
                temp = self.temporal_table(video_tokens)[:, :, None]  # (1, Fv', 1, D)
                tokens = with_images(tokens[:, :video_tokens] + temp, tokens, video_tokens)
            tokens = block(tokens, ctx)  # activation checkpointing: applied from outside (train/parallelize.py)
        out = self.final_layer(to_spatial(tokens), ctx.spatial() if self.adaln else None)  # (B*F', N, s*p*p*Co)
        out = out.reshape(batch, -1, h, w, stride, p, p, c.out_channels)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, Co, F', s, h, p, w, p)
        return out.reshape(batch, c.out_channels, frames, height, width)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
