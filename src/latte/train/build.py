"""What a training config builds: the training data (clips, or latents from a cache), the
model config for the data's clip shape, and the objective (latte.diffusion.objectives)."""
from __future__ import annotations

import torch

from latte.config import Config
from latte.data import build_dataset
from latte.data.cache import LatentCacheDataset
from latte.models import ModelConfig, model_config
from latte.vae import load_vae


def build_training_data(config: Config):
    """(dataset, vae or None, encode): clips decoded on the fly (encoded by the VAE when one is set:
    encode=True), or latents from a cache (its VAE is loaded only to decode samples: encode=False)."""
    data = config.data
    if data.cache:
        dataset = LatentCacheDataset(data.cache, images_per_clip=data.images_per_clip, seed=config.train.seed)
        return dataset, load_vae(dataset.manifest.get("vae", "none")), False
    own = data.mnist_kwargs() if data.is_moving_mnist else {}
    dataset = build_dataset(data.dataset, data.root, num_frames=data.num_frames, frame_interval=data.frame_interval,
                            resolution=data.resolution, images_per_clip=data.images_per_clip, seed=config.train.seed,
                            **own)
    return dataset, load_vae(data.vae), True


def dataset_num_classes(dataset) -> int:
    return int(getattr(dataset, "num_classes", 0) or 0)


def make_model_config(config: Config, sample: torch.Tensor, num_classes: int, caption_channels: int = 0) -> ModelConfig:
    """Model config for clips shaped like `sample` (C, F, H, W) (latents when a VAE is used): a class /
    unconditional model, or a text-to-video one reading `caption_channels`-wide caption features."""
    m = config.model
    options = dict(variant=m.variant, patch_embed=m.patch_embed, tubelet_frames=m.tubelet_frames,
                   temporal_pos=m.temporal_pos, mlp_ratio=m.mlp_ratio, learn_sigma=m.learn_sigma,
                   in_channels=sample.shape[0], num_frames=sample.shape[1], input_size=tuple(sample.shape[2:]))
    if caption_channels:  # the text conditioner (adaln-single with cross-attention) comes with the name
        options.update(caption_channels=caption_channels, pooled_text=m.pooled_text)
    else:
        options.update(conditioning=m.conditioning, class_dropout=m.class_dropout,
                       num_classes=num_classes if m.class_conditional else 0)
    for key in ("hidden_size", "depth", "num_heads", "patch_size"):
        if getattr(m, key) is not None:
            options[key] = getattr(m, key)
    return model_config(m.name, **options)

