"""Text-conditioned Latte ("LatteT2V", paper Sec. 5): the Latte family with PixArt-alpha conditioning.

Spatial blocks are PixArt-alpha blocks (Chen et al. 2023, arXiv 2310.00426, Sec. 2.3): self-attention
over the frame's patches, cross-attention to the caption tokens, feed-forward. Temporal blocks are
self-attention over the video frames at each position plus feed-forward (no text). All blocks are
modulated by adaLN-single: one timestep MLP (`t_block`) gives a 6D vector shared by every block,
to which each block adds its own learned `scale_shift_table` [6, D]. Spatial and temporal blocks
interleave (variant 1), as in the released Latte-1 (layout of diffusers' `LatteTransformer3DModel`;
`diffusers_interop.py` maps names).

Tokens live on a grid x (B, F, N, D) as in `latte.py`: video frames first, then `num_images` image
frames for image-video joint training; image frames skip the temporal blocks. Temporal positions are
absolute sin-cos (computed for any frame count) or RoPE.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from latte.errors import LatteError
from latte.models.config import TEMPORAL_POSITIONS
from latte.models.latte import (PatchEmbed, check_video_input, from_spatial, from_temporal, to_spatial, to_temporal,
                                with_images)
from latte.models.layers import (Attention, Mlp, TimestepEmbedder, gated_residual, modulate, rope_angles,
                                 sincos_1d)

MASK_BIAS = -10000.0  # additive attention bias of padded caption tokens (PixArt-alpha's value)


@dataclass
class T2VConfig:
    """Everything needed to rebuild a LatteT2V network; defaults are the released Latte-1."""

    hidden_size: int = 1152
    num_layers: int = 28  # spatial/temporal block pairs (Latte-1: 28 spatial + 28 temporal blocks)
    num_heads: int = 16
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int = 8  # 2 * in_channels: learned sigma
    sample_size: int = 64  # latent side the spatial positions are normalised to (PixArt-alpha base size)
    caption_channels: int = 4096  # text encoder width (T5-XXL)
    num_frames: int = 16  # default clip length; any count runs
    temporal_pos: str = "absolute"
    norm_eps: float = 1e-6
    attention_bias: bool = True
    grad_checkpointing: bool = False
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        checks = [
            (self.num_layers >= 1, f"num_layers must be >= 1, got {self.num_layers}"),
            (self.hidden_size % self.num_heads == 0,
             f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"),
            (self.hidden_size % 4 == 0, f"hidden_size must be divisible by 4 for 2-D sin-cos, got {self.hidden_size}"),
            (self.temporal_pos in TEMPORAL_POSITIONS,
             f"temporal_pos must be one of {TEMPORAL_POSITIONS}, got {self.temporal_pos!r}"),
            (self.temporal_pos != "rope" or self.head_dim % 2 == 0,
             f"rope needs an even head size, got {self.head_dim}"),
            (self.out_channels in (self.in_channels, 2 * self.in_channels),
             f"out_channels must be in_channels ({self.in_channels}) or twice it (learned sigma), "
             f"got {self.out_channels}"),
            (self.sample_size % self.patch_size == 0,
             f"sample_size {self.sample_size} is not divisible by patch_size {self.patch_size}"),
            (self.caption_channels >= 1, f"caption_channels must be >= 1, got {self.caption_channels}"),
            (self.num_frames >= 1, f"num_frames must be >= 1, got {self.num_frames}"),
            (self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise LatteError(message)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.sample_size, self.sample_size

    @property
    def temporal_stride(self) -> int:
        return 1  # frame patches only

    @property
    def interpolation_scale(self) -> int:
        """PixArt-alpha's position scale: positions shrink by sample_size // 64 for larger models."""
        return max(self.sample_size // 64, 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "T2VConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LatteError(f"unknown text-to-video model option(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(known))}")
        return cls(**data)


# name -> fields; "Latte-1" is the released T2V model, "LatteT2V-T" a tiny debug size for tests and CPU demos
T2V_MODELS: dict[str, dict] = {
    "Latte-1": dict(),
    "LatteT2V-T": dict(hidden_size=64, num_layers=2, num_heads=4, sample_size=8, caption_channels=32, num_frames=4),
}


def t2v_config(name: str = "Latte-1", **options) -> T2VConfig:
    """Config of a named text-to-video model with options overriding its fields."""
    if name not in T2V_MODELS:
        raise LatteError(f"unknown text-to-video model {name!r}; choose one of {', '.join(T2V_MODELS)}")
    return T2VConfig.from_dict({**T2V_MODELS[name], "name": name, **options})


# ----------------------------------------------------------------------------------------------
# Layers


def layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=eps)


def self_attention(dim: int, num_heads: int, bias: bool) -> Attention:
    """The family's fused-qkv attention; without `bias`, q/k/v have none (the output projection keeps its own)."""
    attn = Attention(dim, num_heads)
    if not bias:  # Attention.forward only calls self.qkv, so a bias-free linear drops in
        attn.qkv = nn.Linear(dim, 3 * dim, bias=False)
    return attn


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """q (S, H, M, hd), k/v (S, H, L, hd), bias (S, L) additive or None -> (S, M, H*hd)."""
    mask = None if bias is None else bias[:, None, None, :].to(q.dtype)  # (S, 1, 1, L)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)


class CrossAttention(nn.Module):
    """Attention of image tokens (queries) to caption tokens (keys, values), PixArt-alpha Sec. 2.3."""

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
            out = attend(self._heads(q.flatten(1, 2)), *group(0))  # (B, F*N, D)
            return self.proj(out).unflatten(1, (frames, n))
        fv = video_frames
        video = attend(self._heads(q[:, :fv].flatten(1, 2)), *group(0)).unflatten(1, (fv, n))  # (B, Fv, N, D)
        images = attend(self._heads(q[:, fv:].flatten(0, 1)), *group(slice(1, None)))  # (B*I, N, D)
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


@dataclass
class TextContext:
    """Per-forward inputs shared by all blocks."""

    text: torch.Tensor  # (B, G, L, D) projected captions
    text_bias: torch.Tensor | None  # (B, G, L) additive attention bias of padded tokens
    video_frames: int  # frames before the image frames
    rope: torch.Tensor | None  # (video_frames, head_dim/2) temporal rotation angles


class T2VBlock(nn.Module):
    """adaLN-single block (PixArt-alpha Sec. 2.3). `spatial`: self-attention over each frame's
    patches, cross-attention to the caption (no norm, no gate, as in PixArt-alpha), feed-forward.
    `temporal`: self-attention over the video frames at each position, feed-forward."""

    def __init__(self, kind: str, dim: int, num_heads: int, eps: float, bias: bool):
        super().__init__()
        self.kind = kind
        self.norm1 = layer_norm(dim, eps)
        self.attn = self_attention(dim, num_heads, bias)
        if kind == "spatial":
            self.cross_attn = CrossAttention(dim, num_heads, bias)
        self.norm2 = layer_norm(dim, eps)
        self.mlp = Mlp(dim, 4 * dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def _self_attention(self, h: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        """h (B, F, N, D) -> attention along the block's axis, (B, F, N, D)."""
        batch = h.shape[0]
        if self.kind == "spatial":
            return from_spatial(self.attn(to_spatial(h)), batch)  # (B*F, N, D) sequences
        return from_temporal(self.attn(to_temporal(h), rope=ctx.rope), batch)  # (B*N, Fv, D) sequences

    def forward(self, x: torch.Tensor, t0: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        """x (B, F, N, D), t0 (B, 6D) the shared adaLN-single vector -> (B, F, N, D)."""
        grid = x
        if self.kind == "temporal":
            x = x[:, :ctx.video_frames]  # image frames skip temporal blocks
        mods = (self.scale_shift_table[None] + t0.unflatten(1, (6, -1))).split(1, dim=1)  # 6 x (B, 1, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = gated_residual(x, self._self_attention(modulate(self.norm1(x), shift_msa, scale_msa), ctx), gate_msa)
        if self.kind == "spatial":
            x = x + self.cross_attn(x, ctx.text, ctx.text_bias, ctx.video_frames)
        x = gated_residual(x, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)), gate_mlp)
        return x if self.kind == "spatial" else with_images(x, grid, ctx.video_frames)


class FinalLayer(nn.Module):
    """LayerNorm modulated by the timestep embedding plus a learned [2, D] table, then a linear map."""

    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.norm = layer_norm(dim, 1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """x (B, F, N, D), t_emb (B, D) -> (B, F, N, out_features)."""
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).split(1, dim=1)  # 2 x (B, 1, D)
        return self.linear(modulate(self.norm(x), shift, scale))


# ----------------------------------------------------------------------------------------------
# The model


class LatteT2V(nn.Module):
    """Text-to-video Latte: x (B, C, F, H, W), t (B,), captions (B, L, C_text) -> (B, C_out, F, H, W)."""

    def __init__(self, config: T2VConfig):
        super().__init__()
        self.config = c = config
        dim = c.hidden_size
        self.x_embedder = PatchEmbed(c.in_channels, dim, c.patch_size, 1, tubelet=False)
        self.t_embedder = TimestepEmbedder(dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))  # adaLN-single, shared by all blocks
        self.caption_projection = CaptionProjection(c.caption_channels, dim)
        args = (dim, c.num_heads, c.norm_eps, c.attention_bias)
        self.spatial_blocks = nn.ModuleList(T2VBlock("spatial", *args) for _ in range(c.num_layers))
        self.temporal_blocks = nn.ModuleList(T2VBlock("temporal", *args) for _ in range(c.num_layers))
        self.final_layer = FinalLayer(dim, c.patch_size**2 * c.out_channels)
        self._tables: dict = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """PixArt-alpha initialisation: xavier-uniform linears with zero bias, the patch projection as a
        linear, N(0, 0.02) timestep and caption MLPs, zero cross-attention output and final linear (a
        fresh model outputs exactly zero); scale-shift tables N(0, 1/D) from construction."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1],
                      self.caption_projection.fc1, self.caption_projection.fc2):
            nn.init.normal_(layer.weight, std=0.02)
        for layer in [b.cross_attn.proj for b in self.spatial_blocks] + [self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- position tables (not stored: computed for whatever size arrives, then cached) -----------
    def _cached(self, key: tuple, make) -> torch.Tensor:
        if key not in self._tables:
            self._tables[key] = torch.tensor(make(), dtype=torch.float32, device=key[-1])
        return self._tables[key]

    def spatial_table(self, h: int, w: int, device) -> torch.Tensor:
        """2-D sin-cos (first half columns, second half rows) at PixArt-alpha's resolution-normalised
        positions: index / (grid / base_size) / interpolation_scale. -> (h*w, D)"""
        c = self.config
        base, scale = c.sample_size // c.patch_size, c.interpolation_scale

        def make() -> np.ndarray:
            rows = (torch.arange(h, dtype=torch.float32) / (h / base) / scale).numpy()
            cols = (torch.arange(w, dtype=torch.float32) / (w / base) / scale).numpy()
            rows, cols = np.meshgrid(rows, cols, indexing="ij")  # (h, w) each
            return np.concatenate([sincos_1d(c.hidden_size // 2, cols), sincos_1d(c.hidden_size // 2, rows)], axis=1)

        return self._cached(("pos", h, w, device), make)

    def temporal_table(self, frames: int, device) -> torch.Tensor:
        """1-D sin-cos over frame index 0 .. frames-1. -> (frames, D)"""
        return self._cached(("temp", frames, device), lambda: sincos_1d(self.config.hidden_size, np.arange(frames)))

    # -- inputs ---------------------------------------------------------------------------------
    def _captions(self, text: torch.Tensor, mask: torch.Tensor | None, batch: int, num_images: int):
        """(B, L, C) or (B, 1 + num_images, L, C) captions and (B, L) / (B, G, L) masks (1 keep, 0 pad)
        -> projected (B, G, L, D), additive bias (B, G, L) or None."""
        c = self.config
        if text is None:
            raise LatteError("the text-to-video model needs encoder_hidden_states (caption features)")
        if text.ndim == 3:
            text = text[:, None]
        if text.ndim != 4 or text.shape[0] != batch or text.shape[1] not in (1, 1 + num_images) \
                or text.shape[-1] != c.caption_channels:
            raise LatteError(f"encoder_hidden_states must be (B={batch}, L, {c.caption_channels}) or "
                             f"(B, 1 + num_images={1 + num_images}, L, {c.caption_channels}), got {tuple(text.shape)}")
        bias = None
        if mask is not None:
            groups = 1 if mask.ndim == 2 else mask.shape[1]
            if mask.ndim not in (2, 3) or mask.shape[0] != batch or mask.shape[-1] != text.shape[2] \
                    or groups not in (1, text.shape[1]):
                raise LatteError(f"encoder_attention_mask must be (B, L) or (B, G, L) matching captions "
                                 f"{tuple(text.shape[:3])}, got {tuple(mask.shape)}")
            mask = mask.reshape(batch, -1, mask.shape[-1]).expand(-1, text.shape[1], -1)  # (B, G, L)
            bias = (1 - mask.float()) * MASK_BIAS
        return self.caption_projection(text), bias

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, num_images: int = 0,
                enable_temporal_attentions: bool = True) -> torch.Tensor:
        """x (B, C, F, H, W) noisy latents whose last `num_images` frames are independent images;
        t (B,) or scalar timesteps; encoder_hidden_states (B, L, C_text), or (B, 1 + num_images, L,
        C_text) for one caption per image frame; encoder_attention_mask (B, L) 1 = keep, 0 = pad.
        With one video frame the temporal blocks still run on length-1 sequences (diffusers and
        Latte-1 text-to-image); `enable_temporal_attentions=False` skips them (Latte-0)."""
        c = self.config
        batch, channels, frames, height, width = x.shape
        p = c.patch_size
        check_video_input(x, c.in_channels, p, num_images)
        video_frames, h, w = frames - num_images, height // p, width // p
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t
        tokens = self.x_embedder(x) + self.spatial_table(h, w, x.device).to(x.dtype)  # (B, F, N, D)
        t_emb = self.t_embedder(t)  # (B, D)
        t0 = self.t_block(t_emb)  # (B, 6D)
        text, bias = self._captions(encoder_hidden_states, encoder_attention_mask, batch, num_images)
        rope = None
        if c.temporal_pos == "rope":
            rope = rope_angles(torch.arange(video_frames, device=x.device), c.head_dim)
        ctx = TextContext(text, bias, video_frames, rope)
        temp = None  # absolute positions join the video frames right before the first temporal block
        if enable_temporal_attentions and c.temporal_pos == "absolute" and video_frames > 1:
            temp = self.temporal_table(video_frames, x.device).to(x.dtype)[None, :, None]  # (1, Fv, 1, D)
        for spatial, temporal in zip(self.spatial_blocks, self.temporal_blocks):
            tokens = self._run(spatial, tokens, t0, ctx)
            if not enable_temporal_attentions:
                continue
            if temp is not None:
                tokens = with_images(tokens[:, :video_frames] + temp, tokens, video_frames)
                temp = None
            tokens = self._run(temporal, tokens, t0, ctx)
        out = self.final_layer(tokens, t_emb)  # (B, F, N, p*p*Co)
        out = out.reshape(batch, frames, h, w, p, p, c.out_channels)
        out = out.permute(0, 6, 1, 2, 4, 3, 5)  # (B, Co, F, h, p, w, p)
        return out.reshape(batch, c.out_channels, frames, height, width)

    def _run(self, block: T2VBlock, tokens: torch.Tensor, t0: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        return block(tokens, t0, ctx)  # activation checkpointing: applied from outside (train/parallelize.py)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def create_t2v_model(name: str = "Latte-1", **options) -> LatteT2V:
    """A named text-to-video model (`Latte-1`, `LatteT2V-T` for tests) with options overriding any
    T2VConfig field (num_layers, hidden_size, caption_channels, temporal_pos, ...)."""
    return LatteT2V(t2v_config(name, **options))


def build_t2v_model(config: T2VConfig | dict) -> LatteT2V:
    """The model described by a config (as stored in checkpoints)."""
    return LatteT2V(T2VConfig.from_dict(config) if isinstance(config, dict) else config)
