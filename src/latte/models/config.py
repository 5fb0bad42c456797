"""Typed model configuration and the registry of named sizes (`Latte-XL/2` ...).

How `depth` maps onto blocks (the paper's Fig. 2 variants):

| variant | blocks built from `depth` | block contents |
|---|---|---|
| 1 interleaved | depth blocks: spatial, temporal, spatial, ... | attention + MLP |
| 2 late fusion | depth/2 spatial blocks, then depth/2 temporal blocks | attention + MLP |
| 3 factorised attention | depth/2 blocks | spatial attention, temporal attention, MLP |
| 4 split heads | depth blocks | half the heads over space, half over time, one MLP |

Variants 1, 2 and 4 have the same parameter count at equal depth; variant 3 has one MLP per
spatial/temporal pair instead of two, so fewer. `latte info` prints both counts and FLOPs.

Conditioning (paper Sec. 3.3 and Sec. 5): `adaln` (S-AdaLN: every block maps timestep + class to its
own shift/scale/gate), `tokens` (timestep and class join every attended sequence as extra tokens) or
`adaln-single` (PixArt-alpha: one timestep MLP shared by all blocks plus a learned table per block,
with cross-attention to caption tokens in the blocks that attend over space; the text-to-video
model, `caption_channels` > 0).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from latte.errors import LatteError

# name -> (depth = spatial + temporal blocks, hidden size, heads); Table 1 of the paper plus a
# tiny debug size ("T") for tests and CPU demos.
SIZES: dict[str, tuple[int, int, int]] = {
    "T": (4, 64, 4),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCH_SIZES = (2, 4, 8)
MODEL_NAMES = tuple(f"Latte-{size}/{patch}" for size in SIZES for patch in PATCH_SIZES)  # class/unconditional

VARIANTS = (1, 2, 3, 4)
PATCH_EMBEDS = ("frame", "tubelet")
CONDITIONINGS = ("adaln", "tokens", "adaln-single")

# Text-to-video sizes (conditioning adaln-single, captions of `caption_channels` features): the
# released Latte-1 (28 spatial + 28 temporal blocks, 512 px = 64x64 latents, T5-XXL captions) and a
# tiny debug size for tests and CPU demos.
TEXT_MODELS: dict[str, dict] = {
    "Latte-1": dict(depth=56, hidden_size=1152, num_heads=16, patch_size=2, input_size=64, caption_channels=4096),
    "LatteT2V-T": dict(depth=4, hidden_size=64, num_heads=4, patch_size=2, input_size=8, caption_channels=32,
                       num_frames=4),
}
TEMPORAL_POSITIONS = ("absolute", "rope")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a Latte network; stored in every checkpoint."""

    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    patch_size: int = 2
    mlp_ratio: float = 4.0
    input_size: int | tuple[int, int] = 32  # latent H (= W when an int)
    num_frames: int = 16  # frames of the video part; any count runs, this sizes the stored table
    in_channels: int = 4
    variant: int = 1
    patch_embed: str = "frame"
    tubelet_frames: int = 2  # temporal stride s of tubelet patches
    conditioning: str = "adaln"
    temporal_pos: str = "absolute"
    num_classes: int = 0  # 0: unconditional
    class_dropout: float = 0.1  # label dropout for classifier-free guidance
    learn_sigma: bool = True
    caption_channels: int = 0  # text encoder width; > 0 makes a text-to-video model (adaln-single conditioning)
    pooled_text: bool = False  # text models: the caption's mean feature joins the timestep embedding (SD3's pooled path)
    attention_bias: bool = True  # bias of the q/k/v projections (diffusers' attention_bias for text models)
    norm_eps: float = 1e-6  # LayerNorm eps inside the blocks
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.input_size, list):
            self.input_size = tuple(self.input_size)
        checks = [
            (self.variant in VARIANTS, f"variant must be one of {VARIANTS}, got {self.variant!r}"),
            (self.patch_embed in PATCH_EMBEDS, f"patch_embed must be one of {PATCH_EMBEDS}, got {self.patch_embed!r}"),
            (self.conditioning in CONDITIONINGS, f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}"),
            (self.temporal_pos in TEMPORAL_POSITIONS,
             f"temporal_pos must be one of {TEMPORAL_POSITIONS}, got {self.temporal_pos!r}"),
            (self.hidden_size % self.num_heads == 0,
             f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"),
            (self.variant == 4 or self.depth % 2 == 0, f"variant {self.variant} needs an even depth, got {self.depth}"),
            (self.variant != 4 or self.num_heads % 2 == 0, f"variant 4 splits heads in two: num_heads {self.num_heads} is odd"),
            (self.temporal_pos != "rope" or self.head_dim % 2 == 0, f"rope needs an even head size, got {self.head_dim}"),
            (self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}"),
            (0.0 <= self.class_dropout < 1.0, f"class_dropout must be in [0, 1), got {self.class_dropout}"),
            (self.tubelet_frames >= 1, f"tubelet_frames must be >= 1, got {self.tubelet_frames}"),
            (self.patch_embed != "tubelet" or self.num_frames % self.tubelet_frames == 0,
             f"num_frames {self.num_frames} is not divisible by tubelet_frames {self.tubelet_frames}"),
            (all(s % self.patch_size == 0 for s in self.latent_hw),
             f"input_size {'x'.join(map(str, self.latent_hw))} is not divisible by patch_size {self.patch_size}"),
            (self.hidden_size % 4 == 0, f"hidden_size must be divisible by 4 for 2-D sin-cos, got {self.hidden_size}"),
            (self.depth >= 1, f"depth must be >= 1, got {self.depth}"),
            (self.caption_channels >= 0, f"caption_channels must be >= 0, got {self.caption_channels}"),
            ((self.caption_channels > 0) == (self.conditioning == "adaln-single"),
             "conditioning adaln-single and caption_channels > 0 go together (the text-to-video model), got "
             f"conditioning {self.conditioning!r} with caption_channels {self.caption_channels}"),
            (self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}"),
            (not self.pooled_text or self.caption_channels > 0, "pooled_text needs a text-to-video model"),
        ]
        for ok, message in checks:
            if not ok:
                raise LatteError(message)

    @property
    def latent_hw(self) -> tuple[int, int]:
        size = self.input_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def temporal_stride(self) -> int:
        return self.tubelet_frames if self.patch_embed == "tubelet" else 1

    @property
    def tokens_per_clip(self) -> int:
        """Tokens of one clip of the trained shape: patches per frame times frames (or tubelets)."""
        height, width = self.latent_hw
        return (self.num_frames // self.temporal_stride) * (height // self.patch_size) * (width // self.patch_size)

    @property
    def is_text(self) -> bool:
        return self.caption_channels > 0

    @property
    def interpolation_scale(self) -> int:
        """PixArt-alpha's position scale of text models: positions shrink by latent side // 64."""
        return max(self.latent_hw[0] // 64, 1)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.latent_hw) if not isinstance(self.input_size, int) else self.input_size
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if "num_layers" in data:  # a text model config written before the backbones were one (T2VConfig)
            data = upgrade_text_config(data)
        # configs written before issue 28 stored the training switch grad_checkpointing as architecture;
        # it is the run config's model.grad_checkpointing now (applied by train/parallelize.py): ignored
        data = {k: v for k, v in data.items() if k != "grad_checkpointing"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LatteError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**data)


def upgrade_text_config(data: dict) -> dict:
    """T2VConfig fields (num_layers block pairs, sample_size, out_channels) -> ModelConfig fields."""
    data = dict(data)
    data["depth"] = 2 * data.pop("num_layers")
    data["input_size"] = data.pop("sample_size", 64)
    in_channels = data.get("in_channels", 4)
    data["learn_sigma"] = data.pop("out_channels", 2 * in_channels) == 2 * in_channels
    data["conditioning"] = "adaln-single"
    return data


def parse_model_name(name: str) -> tuple[str, int]:
    match = re.fullmatch(r"Latte-(T|S|B|L|XL)/(\d+)", name)
    if not match or int(match.group(2)) not in PATCH_SIZES:
        raise LatteError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES + tuple(TEXT_MODELS))}")
    return match.group(1), int(match.group(2))


def model_config(name: str, **options) -> ModelConfig:
    """Config of a registry model (`Latte-XL/2`, ..., text-to-video `Latte-1`, `LatteT2V-T`) with
    options overriding its fields."""
    if name in TEXT_MODELS:
        base = dict(TEXT_MODELS[name], conditioning="adaln-single", name=name)
    else:
        size, patch = parse_model_name(name)
        depth, hidden, heads = SIZES[size]
        base = dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch, name=name)
    base.update(options)
    return ModelConfig.from_dict(base)
