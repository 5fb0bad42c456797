"""The Latte video diffusion transformer: one backbone for every design in the paper and for the
text-to-video model.

A patch embedding turns a clip into the token grid (B, F, N, D); one list of blocks (blocks.py:
spatial / temporal / factorised / split, with or without caption cross-attention) transforms it;
a final layer maps tokens back to patches. What differs between models is the conditioner
(conditioning.py), chosen once by `config.conditioning` (paper Sec. 3.3, Sec. 5): S-AdaLN (`adaln`),
extra tokens (`tokens`) or PixArt-alpha's adaLN-single with captions (`adaln-single`). The timestep
is embedded per token frame, and every block and the final layer are modulated per token frame.
Parameter names follow the official Latte checkpoints (class models) and map one-to-one onto
diffusers' `LatteTransformer3DModel` (text models, diffusers_interop.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from latte.errors import LatteError
from latte.models.blocks import LatteBlock, block_kinds, layer_norm, with_images
from latte.models.conditioning import CONDITIONERS, Context
from latte.models.config import ModelConfig
from latte.models.layers import (
    CrossAttention,
    LabelEmbedder,
    TimestepEmbedder,
    modulate,
    rope_table,
    sincos_1d,
    sincos_2d,
)


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
        # .contiguous(): the convolution writes channels first; left as a view, every residual sum after
        # it would keep that layout and every LayerNorm of the network would copy its input
        if self.tubelet:
            return self.proj(x).flatten(3).permute(0, 2, 3, 1).contiguous()  # (B, D, F/s, h, w) -> (B, F/s, N, D)
        batch = x.shape[0]
        frames = x.transpose(1, 2).flatten(0, 1)  # (B*F, C, H, W)
        tokens = self.proj(frames).flatten(2).transpose(1, 2).contiguous()  # (B*F, N, D)
        return tokens.unflatten(0, (batch, -1))


class FinalLayer(nn.Module):
    """LayerNorm, modulated per token frame by the conditioner (S-AdaLN: its own map; adaLN-single: a
    learned [2, D] table plus the timestep embedding), then a linear map to the patch's output values."""

    def __init__(self, dim: int, out_features: int, conditioning: str):
        super().__init__()
        self.norm_final = layer_norm(dim)
        self.linear = nn.Linear(dim, out_features)
        for name, value in CONDITIONERS[conditioning].final_parameters(dim).items():
            setattr(self, name, value)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """x (B, F, N, D) -> (B, F, N, out_features)."""
        h = self.norm_final(x)
        terms = ctx.final_modulation(self)  # (shift, scale) each (B, F, 1, D), or None (token conditioning)
        if terms is not None:
            h = modulate(h, *terms)
        return self.linear(h)


def check_video_input(x: torch.Tensor, in_channels: int, patch: int, num_images: int) -> None:
    """One-line errors for a video batch (B, C, F, H, W) a model cannot take."""
    if x.ndim != 5:
        raise LatteError(f"model input must be (B, C, F, H, W), got shape {tuple(x.shape)}")
    _, channels, frames, height, width = x.shape
    if channels != in_channels:
        raise LatteError(f"model expects {in_channels} input channels, got {channels}")
    if height % patch or width % patch:
        raise LatteError(f"frame size {height}x{width} is not divisible by patch size {patch}")
    if not 0 <= num_images < frames:
        raise LatteError(f"num_images={num_images} must leave at least one video frame of {frames}")


class Latte(nn.Module):
    """Latte (arXiv 2401.03048): x (B, C, F, H, W), t (B,) or (B, F) and the condition -> (B, C_out, F, H, W).
    Class models take y (B,) or (B, 1 + num_images); text models take caption features (B, L, C_text)
    or (B, 1 + num_images, L, C_text) with a mask (B, L) / (B, G, L) (1 keep, 0 pad)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        dim, stride, cond = c.hidden_size, c.temporal_stride, c.conditioning
        self.x_embedder = PatchEmbed(c.in_channels, dim, c.patch_size, stride, c.patch_embed == "tubelet")
        self.t_embedder = TimestepEmbedder(dim)
        if c.num_classes > 0:
            self.y_embedder = LabelEmbedder(c.num_classes, dim, c.class_dropout)
        self.conditioner = CONDITIONERS[cond](c)
        for name, module in self.conditioner.model_modules().items():  # adaLN-single: t_block, caption_projection
            setattr(self, name, module)
        # Position tables of the trained size; official class checkpoints store them, diffusers' do not.
        for name, table in self._stored_tables().items():
            self.register_buffer(name, table, persistent=not c.is_text)
        kinds = block_kinds(c.variant, c.depth)
        self.blocks = nn.ModuleList(
            LatteBlock(k, dim, c.num_heads, c.mlp_ratio, cond, cross_attention=c.is_text and k != "temporal",
                       qkv_bias=c.attention_bias, eps=c.norm_eps) for k in kinds)
        self.temporal_start = next(i for i, k in enumerate(kinds) if k != "spatial")
        self.final_layer = FinalLayer(dim, stride * c.patch_size**2 * c.out_channels, cond)
        self._tables: dict = {}  # position tables of other sizes, made once per size and device
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT / PixArt-alpha initialisation: xavier-uniform linears with zero bias, the patch projection
        as a linear, N(0, 0.02) timestep MLP, class table, shared adaLN-single map and caption
        projection; zero adaLN outputs, cross-attention outputs and final linear, so a fresh model
        outputs exactly zero. Scale-shift tables keep their N(0, 1/D) draw from construction."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        normal = [self.t_embedder.mlp[0].weight, self.t_embedder.mlp[2].weight]
        normal += [m.embedding_table.weight for m in self.modules() if isinstance(m, LabelEmbedder)]
        for weight in normal + self.conditioner.normal_init(self):
            nn.init.normal_(weight, std=0.02)
        zero = [self.final_layer.linear] + [m.proj for m in self.modules() if isinstance(m, CrossAttention)]
        for layer in zero + self.conditioner.zero_init(self):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- position tables ---------------------------------------------------------------------------
    def _stored_tables(self) -> dict[str, torch.Tensor]:
        """pos_embed (1, N, D) and, with absolute temporal positions, temp_embed (1, F', D)."""
        c = self.config
        tables = {"pos_embed": self._spatial_positions(*self._trained_grid())[None]}
        if c.temporal_pos == "absolute":
            frames = torch.arange(c.num_frames // c.temporal_stride)
            tables["temp_embed"] = sincos_1d(c.hidden_size, frames).float()[None]
        return tables

    def reset_position_tables(self) -> None:
        """Make the stored tables again, on the device of the weights (after building on the meta device)."""
        device = self.x_embedder.proj.weight.device
        for name, table in self._stored_tables().items():
            setattr(self, name, table.to(device))

    def _spatial_positions(self, h: int, w: int) -> torch.Tensor:
        """(h*w, D): grid indices (class models, as the official code) or PixArt-alpha's positions
        normalised to the trained grid (text models, as diffusers)."""
        c = self.config
        if not c.is_text:
            return sincos_2d(c.hidden_size, h, w).float()
        return sincos_2d(c.hidden_size, h, w, base=self._trained_grid(), scale=c.interpolation_scale).float()

    def _table(self, stored: torch.Tensor, size: tuple, make) -> torch.Tensor:
        """The stored table when it has the asked length, else one made for that size (cached)."""
        length = size[0] if len(size) == 1 else size[0] * size[1]
        if stored.shape[1] == length and (len(size) == 1 or size == self._trained_grid()):
            return stored
        key = (len(size), *size, stored.device)
        if key not in self._tables:
            self._tables[key] = make().to(stored.device)[None]
        return self._tables[key]

    def _trained_grid(self) -> tuple[int, int]:
        return tuple(s // self.config.patch_size for s in self.config.latent_hw)

    def spatial_table(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, D)"""
        return self._table(self.pos_embed, (h, w), lambda: self._spatial_positions(h, w))

    def temporal_table(self, frames: int) -> torch.Tensor:
        """(1, frames, D)"""
        return self._table(self.temp_embed, (frames,), lambda: sincos_1d(self.config.hidden_size, torch.arange(frames)).float())

    # -- conditioning ---------------------------------------------------------------------------
    def frame_times(self, t: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """t as a scalar, (B,) or (B, F) over the input's F frames (video, then image frames) -> (B, F')
        one time per token frame, a tubelet token (s frames) taking the time of its first frame; or
        (B, 1) when the time is one per clip (a scalar, (B,), or (B, F) broadcast from it, stride 0):
        the clip's time is then embedded once and broadcast over the frames (read from the shape
        alone, no device sync)."""
        if t.numel() == 1:
            return t.reshape(1, 1).expand(batch, 1)
        if t.shape == (batch,):
            return t[:, None]
        if t.shape != (batch, frames):
            raise LatteError(f"timesteps must be a scalar, (B={batch},) or (B, F={frames}), got {tuple(t.shape)}")
        if frames == 1 or t.stride(1) == 0:
            return t[:, :1]
        return t[:, ::self.config.temporal_stride]  # (B, F')

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, num_images: int = 0,
                drop_labels: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None,
                enable_temporal_attentions: bool = True) -> torch.Tensor:
        """x (B, C, F, H, W) whose last `num_images` frames are independent images; t a scalar, (B,) one
        time per clip, or (B, F) one time per frame (see `frame_times`).
        `drop_labels` (bool, y's shape) replaces the chosen labels by the null class (training code
        passes it to draw label dropout from its own generator; without it the model draws it).
        `enable_temporal_attentions=False` skips the temporal blocks (text-to-image, Latte-0)."""
        c = self.config
        check_video_input(x, c.in_channels, c.patch_size, num_images)
        batch, _, frames, height, width = x.shape
        stride, p = c.temporal_stride, c.patch_size
        video_frames = frames - num_images
        if stride > 1 and (num_images or video_frames % stride):
            raise LatteError(f"tubelet patches need a frame count divisible by {stride} and no image frames")
        if y is not None and c.is_text:
            raise LatteError("this is a text-to-video model: it takes captions, not class labels")
        times = self.frame_times(t, batch, frames)  # (B, F') or (B, 1)
        h, w = height // p, width // p
        tokens = self.x_embedder(x) + self.spatial_table(h, w).to(x.dtype)[:, None]  # (B, F', N, D)
        video_tokens = video_frames // stride
        t_emb = self.t_embedder(times.reshape(-1)).unflatten(0, times.shape)  # (B, F' or 1, D)
        rope = None
        if c.temporal_pos == "rope":
            rope = rope_table(torch.arange(video_tokens, device=x.device), c.head_dim)
        ctx = self.conditioner.context(self, t_emb, tokens.shape[1], video_tokens, rope, y=y, drop=drop_labels,
                                       captions=encoder_hidden_states, caption_mask=encoder_attention_mask)
        # absolute temporal positions join the video frames right before the first temporal mixing;
        # diffusers' text model adds none to a single frame (text-to-image)
        add_temporal = c.temporal_pos == "absolute" and enable_temporal_attentions \
            and (video_tokens > 1 or not c.is_text)
        for i, block in enumerate(self.blocks):
            if not enable_temporal_attentions and block.kind != "spatial":
                if block.kind != "temporal":
                    raise LatteError(f"variant {c.variant} mixes time inside every block: temporal attention "
                                     "cannot be switched off")
                continue
            if i == self.temporal_start and add_temporal:
                temp = self.temporal_table(video_tokens).to(x.dtype)[:, :, None]  # (1, Fv', 1, D)
                tokens = with_images(tokens[:, :video_tokens] + temp, tokens, video_tokens)
            tokens = block(tokens, ctx)  # activation checkpointing: applied from outside (train/parallelize.py)
        out = self.final_layer(tokens, ctx)  # (B, F', N, s*p*p*Co)
        out = out.reshape(batch, -1, h, w, stride, p, p, c.out_channels)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, Co, F', s, h, p, w, p)
        return out.reshape(batch, c.out_channels, frames, height, width)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
