"""Conditioning: time, class and caption turned, once per forward, into a per-frame context that
every block and the final layer read (paper Sec. 3.3 and Sec. 5).

Time is per token frame; a time that is one per clip is embedded once ((B, 1, D)) and broadcast over
the frames, and what is then the same for every video frame (S-AdaLN's temporal terms: `clip`) is
computed once, as before per-frame time (so older checkpoints resume bit for bit). One conditioner per kind, chosen once from
`ModelConfig.conditioning` (`CONDITIONERS`):

| kind | conditioner -> context | per token frame | a block reads |
|---|---|---|---|
| `adaln` (S-AdaLN) | `AdaLN` -> `AdaLNContext` | `frames` (B, F, D): time + class | its `adaLN_modulation` of it |
| `tokens` | `Tokens` -> `TokenContext` | `tokens` (B, F, K, D): time (+ class) | the tokens as extra keys |
| `adaln-single` | `AdaLNSingle` -> `SingleContext` | `shared` (B, F, 6D): `t_block` of time | its table + it |

A conditioner adds its parameters under the names of the official Latte checkpoints and diffusers
(`adaLN_modulation`, `scale_shift_table`, `t_block`, `caption_projection`), says how they are
initialised, and makes the context; the context turns a block's own parameters into its adaLN terms,
each (B, frames, 1, D), one row per token frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from latte.errors import LatteError
from latte.models.layers import MASK_BIAS, CaptionProjection

# Order of the chunks in adaLN outputs and scale-shift tables (factorised blocks: 9, others: 6).
CHUNKS = ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp")
FACTORISED_CHUNKS = ("shift_msa", "scale_msa", "gate_msa", "shift_tmsa", "scale_tmsa", "gate_tmsa",
                     "shift_mlp", "scale_mlp", "gate_mlp")
# Rows of the shared adaLN-single vector (6 chunks) each chunk adds to: a factorised block's temporal
# attention takes the attention terms, as its spatial attention does, plus its own table rows.
SINGLE_ROWS = {6: [0, 1, 2, 3, 4, 5], 9: [0, 1, 2, 0, 1, 2, 3, 4, 5]}


class Modulation(NamedTuple):
    """adaLN terms of one block, each (B, frames, 1, D): one row per token frame, broadcast over its
    patches; all None without adaLN (token conditioning)."""

    shift_msa: torch.Tensor | None = None
    scale_msa: torch.Tensor | None = None
    gate_msa: torch.Tensor | None = None
    shift_mlp: torch.Tensor | None = None
    scale_mlp: torch.Tensor | None = None
    gate_mlp: torch.Tensor | None = None
    shift_tmsa: torch.Tensor | None = None  # factorised blocks: their temporal attention
    scale_tmsa: torch.Tensor | None = None
    gate_tmsa: torch.Tensor | None = None

    def first(self, frames: int) -> Modulation:
        """The terms of the first `frames` token frames (the video part)."""
        return Modulation(*[None if m is None else m[:, :frames] for m in self])


# ----------------------------------------------------------------------------------------------
# Contexts: what one forward's blocks read


@dataclass
class Context:
    """Per-forward conditioning shared by every block, over B clips and F token frames (video frames
    first, then image frames). The base gives no adaLN terms and no extra tokens."""

    video_frames: int  # token frames of the video part; frames after it are images
    rope: tuple[torch.Tensor, torch.Tensor] | None  # temporal (cos, sin), each (video_frames, head_dim/2)

    # token conditioning's extra keys (TokenContext sets them): spatial (B*F, K, D), temporal
    # (B, Fv*K, D) with the mask (Fv, Fv*K + Fv) of the keys each video frame's query sees
    spatial_tokens = None
    temporal_tokens = None
    temporal_mask = None

    def modulation(self, block: nn.Module, frames: int) -> Modulation:
        """adaLN terms of `block` (its `chunks`) for its first `frames` token frames."""
        return Modulation()

    def final_modulation(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(shift, scale) of the final layer, each (B, F, 1, D), or None."""
        return None

    def temporal_modulation(self, block: nn.Module, terms: Modulation, frames: int) -> Modulation:
        """The terms of a factorised block's temporal attention over the first `frames` (video) frames,
        given the block's terms of every frame."""
        return terms.first(frames)


@dataclass
class AdaLNContext(Context):
    """S-AdaLN: each block maps the condition vector of each frame to its own terms (DiT adaLN-Zero).
    When the video frames share one condition (one time per clip), `clip` holds it and temporal
    blocks map it once, their terms broadcast over the frames (B, 1, 1, D)."""

    frames: torch.Tensor  # (B, F, D): timestep + class embedding of every token frame
    clip: torch.Tensor | None = None  # (B, D): the video frames' shared condition, or None

    def modulation(self, block: nn.Module, frames: int) -> Modulation:
        if block.kind == "temporal" and self.clip is not None:
            terms = block.adaLN_modulation(self.clip).chunk(len(block.chunks), dim=-1)  # (B, D) each
            return Modulation(**{name: m[:, None, None] for name, m in zip(block.chunks, terms)})
        terms = block.adaLN_modulation(self.frames[:, :frames]).chunk(len(block.chunks), dim=-1)  # (B, f, D) each
        return Modulation(**{name: m[:, :, None] for name, m in zip(block.chunks, terms)})

    def temporal_modulation(self, block: nn.Module, terms: Modulation, frames: int) -> Modulation:
        if self.clip is None:
            return terms.first(frames)
        clip = block.adaLN_modulation(self.clip).chunk(len(block.chunks), dim=-1)  # (B, D) each, once per clip
        return Modulation(**{name: m[:, None, None] for name, m in zip(block.chunks, clip)})

    def final_modulation(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale = layer.adaLN_modulation(self.frames).chunk(2, dim=-1)  # (B, F, D) each
        return shift[:, :, None], scale[:, :, None]


@dataclass
class TokenContext(Context):
    """Token conditioning: each frame's normalised time (and class) tokens are extra keys and values
    of every attention. A spatial sequence (one frame) attends to its frame's tokens; a temporal
    sequence holds the tokens of every video frame, and the query of frame f sees only frame f's
    (plus every frame), so one time per clip gives the clip's tokens in front of each temporal
    sequence, as before per-frame time."""

    tokens: torch.Tensor  # (B, F, K, D)

    def __post_init__(self) -> None:
        fv, k = self.video_frames, self.tokens.shape[2]
        self.spatial_tokens = self.tokens.flatten(0, 1)  # (B*F, K, D)
        self.temporal_tokens = self.tokens[:, :fv].flatten(1, 2)  # (B, Fv*K, D), frame-major
        own = torch.eye(fv, dtype=torch.bool, device=self.tokens.device).repeat_interleave(k, dim=1)  # (Fv, Fv*K)
        self.temporal_mask = torch.cat([own, own.new_ones(fv, fv)], dim=1)  # (Fv, Fv*K + Fv)


@dataclass
class SingleContext(Context):
    """adaLN-single (PixArt-alpha): each block adds its own table to the shared vector of each frame;
    the final layer adds its [2, D] table to each frame's timestep embedding. Captions are attended
    by the blocks' cross-attention."""

    shared: torch.Tensor  # (B, F or 1, 6D): t_block of each frame's timestep embedding (1: one per clip)
    t_emb: torch.Tensor  # (B, F or 1, D)
    text: torch.Tensor  # (B, G, L, D) projected captions
    text_bias: torch.Tensor | None  # (B, G, L) additive bias of padded caption tokens

    def modulation(self, block: nn.Module, frames: int) -> Modulation:
        shared = self.shared[:, :frames].unflatten(-1, (6, -1))[:, :, SINGLE_ROWS[len(block.chunks)]]  # (B, f, k, D)
        terms = (block.scale_shift_table + shared).unbind(2)  # k x (B, f, D)
        return Modulation(**{name: m[:, :, None] for name, m in zip(block.chunks, terms)})

    def final_modulation(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale = (layer.scale_shift_table + self.t_emb[:, :, None]).unbind(2)  # (B, F, D) each
        return shift[:, :, None], scale[:, :, None]


# ----------------------------------------------------------------------------------------------
# Conditioners: the parameters of a kind and the context it makes


class Conditioner:
    """One kind of conditioning. Parameters come back as {official name: module or parameter}; the
    model, each block and the final layer register them last, in the order the official code does."""

    def __init__(self, config):
        self.config = config

    def model_modules(self) -> dict[str, nn.Module]:
        """Modules of the whole model besides the timestep and class embedders."""
        return {}

    @staticmethod
    def block_parameters(dim: int, chunks: int) -> dict:
        return {}

    @staticmethod
    def final_parameters(dim: int) -> dict:
        return {}

    def normal_init(self, model: nn.Module) -> list[torch.Tensor]:
        """Weights drawn from N(0, 0.02) (after the timestep MLP and class table)."""
        return []

    def zero_init(self, model: nn.Module) -> list[nn.Linear]:
        """Linears whose weight and bias start at zero (adaLN-Zero)."""
        return []

    def context(self, model: nn.Module, t_emb: torch.Tensor, frames: int, video_frames: int, rope, y=None,
                drop=None, captions=None, caption_mask=None) -> Context:
        """t_emb (B, F, D): timestep embedding of each of the F token frames, or (B, 1, D): one per clip,
        broadcast over them -> the forward's context."""
        raise NotImplementedError


class ClassConditioner(Conditioner):
    """Shared by the class / unconditional kinds: the condition of each frame is its timestep
    embedding and, with classes, its label embedding."""

    def conditions(self, model, t_emb, frames: int, video_frames: int, y, drop, captions):
        """[time, label] embeddings of every frame, each (B, F, D), the label only in class models; and
        the video frames' shared condition (B, D) when the time is one per clip (t_emb (B, 1, D)), else None."""
        if captions is not None:
            raise LatteError("this model is not text-conditioned: it takes class labels, not captions")
        per_frame = [t_emb.expand(-1, frames, -1)]
        clip = [t_emb[:, 0]] if t_emb.shape[1] == 1 else None
        if self.config.num_classes:
            labels, clip_label = frame_labels(model.y_embedder, y, drop, t_emb.shape[0], frames, video_frames,
                                              t_emb.device)
            per_frame.append(labels)
            clip = None if clip is None else clip + [clip_label]
        return per_frame, None if clip is None else sum(clip)


class AdaLN(ClassConditioner):
    """S-AdaLN: every block and the final layer map each frame's time + class vector to their terms."""

    @staticmethod
    def block_parameters(dim: int, chunks: int) -> dict:
        return {"adaLN_modulation": nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))}

    @staticmethod
    def final_parameters(dim: int) -> dict:
        return {"adaLN_modulation": nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))}

    def zero_init(self, model) -> list[nn.Linear]:
        return [layer.adaLN_modulation[-1] for layer in (*model.blocks, model.final_layer)]

    def context(self, model, t_emb, frames, video_frames, rope, y=None, drop=None, captions=None, caption_mask=None):
        parts, clip = self.conditions(model, t_emb, frames, video_frames, y, drop, captions)
        return AdaLNContext(video_frames, rope, frames=sum(parts), clip=clip)  # (B, F, D), (B, D) or None


class Tokens(ClassConditioner):
    """Each frame's time (and class) embeddings, layer-normalised, as extra tokens of every attention."""

    def context(self, model, t_emb, frames, video_frames, rope, y=None, drop=None, captions=None, caption_mask=None):
        parts, _ = self.conditions(model, t_emb, frames, video_frames, y, drop, captions)
        # the same normalised tokens enter every block (its norms have no affine terms)
        tokens = F.layer_norm(torch.stack(parts, dim=2), (t_emb.shape[-1],), eps=self.config.norm_eps)  # (B, F, K, D)
        return TokenContext(video_frames, rope, tokens=tokens)


class AdaLNSingle(Conditioner):
    """PixArt-alpha's adaLN-single: one `t_block` of each frame's timestep embedding, shared by every
    block; captions projected once for the blocks' cross-attention."""

    def model_modules(self) -> dict[str, nn.Module]:
        dim = self.config.hidden_size
        modules = {"t_block": nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)),  # shared by every block
                   "caption_projection": CaptionProjection(self.config.caption_channels, dim)}
        if self.config.pooled_text:  # the caption's mean feature -> a vector added to the timestep embedding
            modules["pooled_projection"] = CaptionProjection(self.config.caption_channels, dim)
        return modules

    @staticmethod
    def block_parameters(dim: int, chunks: int) -> dict:
        return {"scale_shift_table": nn.Parameter(torch.randn(chunks, dim) / dim**0.5)}

    @staticmethod
    def final_parameters(dim: int) -> dict:
        return {"scale_shift_table": nn.Parameter(torch.randn(2, dim) / dim**0.5)}

    def normal_init(self, model) -> list[torch.Tensor]:
        projections = [model.caption_projection] + ([model.pooled_projection] if self.config.pooled_text else [])
        return [model.t_block[1].weight] + [w for p in projections for w in (p.fc1.weight, p.fc2.weight)]

    def context(self, model, t_emb, frames, video_frames, rope, y=None, drop=None, captions=None, caption_mask=None):
        text, keep = self.checked_captions(captions, caption_mask, t_emb.shape[0], frames - video_frames)
        if self.config.pooled_text:
            t_emb = t_emb + self.pooled(model.pooled_projection, text, keep, frames, video_frames)  # (B, F or 1, D)
        bias = None if keep is None else (1 - keep) * MASK_BIAS  # (B, G, L)
        return SingleContext(video_frames, rope, shared=model.t_block(t_emb), t_emb=t_emb,
                             text=model.caption_projection(text), text_bias=bias)

    @staticmethod
    def pooled(projection, text, keep, frames: int, video_frames: int) -> torch.Tensor:
        """Mean feature of each caption's kept tokens, projected: (B, 1, D) for one caption per clip, else
        (B, F, D): the video's caption for its frames, then each image frame's own."""
        if keep is None:
            mean = text.mean(dim=2)  # (B, G, C)
        else:
            mean = (text * keep[..., None]).sum(dim=2) / keep.sum(dim=2, keepdim=True).clamp(min=1)
        vector = projection(mean.to(text.dtype))  # (B, G, D)
        if vector.shape[1] == 1:
            return vector
        return torch.cat([vector[:, :1].expand(-1, video_frames, -1), vector[:, 1:]], dim=1)  # (B, F, D)

    def checked_captions(self, text, mask, batch: int, num_images: int):
        """(B, L, C) or (B, 1 + num_images, L, C) captions and (B, L) / (B, G, L) masks (1 keep, 0 pad)
        -> captions (B, G, L, C) and the float mask (B, G, L) or None."""
        channels = self.config.caption_channels
        if text is None:
            raise LatteError("the text-to-video model needs encoder_hidden_states (caption features)")
        if text.ndim == 3:
            text = text[:, None]
        if text.ndim != 4 or text.shape[0] != batch or text.shape[1] not in (1, 1 + num_images) \
                or text.shape[-1] != channels:
            raise LatteError(f"encoder_hidden_states must be (B={batch}, L, {channels}) or "
                             f"(B, 1 + num_images={1 + num_images}, L, {channels}), got {tuple(text.shape)}")
        if mask is not None:
            groups = 1 if mask.ndim == 2 else mask.shape[1]
            if mask.ndim not in (2, 3) or mask.shape[0] != batch or mask.shape[-1] != text.shape[2] \
                    or groups not in (1, text.shape[1]):
                raise LatteError(f"encoder_attention_mask must be (B, L) or (B, G, L) matching captions "
                                 f"{tuple(text.shape[:3])}, got {tuple(mask.shape)}")
            mask = mask.reshape(batch, -1, mask.shape[-1]).expand(-1, text.shape[1], -1).float()  # (B, G, L)
        return text, mask


CONDITIONERS: dict[str, type[Conditioner]] = {"adaln": AdaLN, "tokens": Tokens, "adaln-single": AdaLNSingle}


def frame_labels(embedder: nn.Module, y, drop, batch: int, frames: int, video_frames: int, device):
    """Label embeddings per token frame (B, F, D) and of the video (B, D), label dropout applied: y (B,)
    labels the clip, y (B, 1 + num_images) the video and then each image frame; None is the null class."""
    num_images = frames - video_frames
    if y is None:  # unconditional sampling: the null class
        y = torch.full((batch,), embedder.num_classes, dtype=torch.long, device=device)
    y = y.reshape(batch, -1)  # (B, 1) or (B, 1 + num_images)
    if y.shape[1] not in (1, 1 + num_images):
        raise LatteError(f"labels must be (B,) or (B, 1 + num_images={1 + num_images}), got {tuple(y.shape)}")
    drop = None if drop is None else drop.reshape(y.shape)
    y_emb = embedder(y, drop)  # (B, 1 or 1+I, D): one draw of label dropout per label
    images = y_emb[:, 1:] if y.shape[1] > 1 else y_emb[:, :1].expand(-1, num_images, -1)
    return torch.cat([y_emb[:, :1].expand(-1, video_frames, -1), images], dim=1), y_emb[:, 0]
