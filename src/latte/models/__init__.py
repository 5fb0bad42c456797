"""The Latte model family: `create_model("Latte-XL/2", variant=1, ...)`, `create_model("Latte-1")`
(text-to-video), and checkpoint interop."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from latte.models.checkpoints import (
    TransferReport,
    copy_matching,
    infer_config,
    init_from_dit,
    load_official_checkpoint,
    read_state_dict,
    upgrade_state_dict,
)
from latte.models.config import MODEL_NAMES, SIZES, TEXT_MODELS, ModelConfig, model_config
from latte.models.diffusers_interop import export_diffusers_transformer, init_from_pixart, load_diffusers_transformer
from latte.models.latte import Latte


def create_model(name: str, **options) -> Latte:
    """A registry model (`Latte-S/2` ... `Latte-XL/8`, `Latte-T/2` for tests; text-to-video `Latte-1`,
    `LatteT2V-T`) with options such as variant, patch_embed, tubelet_frames, conditioning,
    temporal_pos, num_classes, learn_sigma, num_frames, input_size, in_channels, caption_channels
    (any ModelConfig field)."""
    return Latte(model_config(name, **options))


def build_model(config: ModelConfig | dict) -> Latte:
    """The model described by a config (as stored in checkpoints)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return Latte(config)


def named_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, block) of every transformer block of the backbone's one list, named as in the state dict."""
    return [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]


def compile_blocks(model: torch.nn.Module, backend: str = "inductor") -> None:
    """Regional compile: each block compiled in place (`nn.Module.compile`: names and state_dict keys
    unchanged), so identical blocks reuse the compiled code."""
    for block in model.blocks:
        block.compile(backend=backend)


def forward_flops(model: Latte | ModelConfig, batch: int = 1, frames: int | None = None, input_size=None,
                  num_images: int = 0, caption_tokens: int = 120) -> int:
    """Forward FLOPs (2 x multiply-adds, attention included) for `batch` clips of `frames` video frames
    plus `num_images` joint-training image frames, counted on the meta device (nothing is computed);
    text models attend to `caption_tokens` caption tokens (120: Latte-1's T5 length), one caption per
    frame group."""
    c = model if isinstance(model, ModelConfig) else model.config
    h, w = c.latent_hw if input_size is None else ((input_size,) * 2 if isinstance(input_size, int) else input_size)
    frames = frames or c.num_frames
    with torch.device("meta"):
        meta = Latte(c).eval()
        x = torch.zeros(batch, c.in_channels, frames + num_images, h, w)
        kwargs = {"num_images": num_images}
        if c.is_text:
            kwargs["encoder_hidden_states"] = torch.zeros(batch, 1 + num_images, caption_tokens, c.caption_channels)
        elif c.num_classes:
            kwargs["y"] = torch.zeros(batch, 1 + num_images, dtype=torch.long)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta(x, torch.zeros(batch, dtype=torch.long), **kwargs)
    return counter.get_total_flops()


__all__ = [
    "Latte", "ModelConfig", "MODEL_NAMES", "SIZES", "TEXT_MODELS", "TransferReport", "build_model", "compile_blocks",
    "copy_matching", "create_model", "forward_flops", "infer_config", "init_from_dit", "load_official_checkpoint",
    "model_config", "named_blocks", "read_state_dict", "upgrade_state_dict",
    "export_diffusers_transformer", "init_from_pixart", "load_diffusers_transformer",
]
