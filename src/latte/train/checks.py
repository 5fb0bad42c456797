"""What a run config must satisfy beyond its types: choices, ranges, combinations, model shapes;
`load_config` reads a config (latte.config) and checks it, the one way a training config is made.

Each failure is one LatteError naming the key and what it may be, raised before any data or model
is built (so `--dry-run` catches it too).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from latte.config import PARALLEL_MODES, Config, DataSection, DiffusionSection, ModelSection, read_config
from latte.devices import PRECISIONS
from latte.diffusion.objective import Objective
from latte.diffusion.objectives import objective_class
from latte.errors import LatteError
from latte.models.config import CONDITIONINGS, PATCH_EMBEDS, TEMPORAL_POSITIONS, TEXT_MODELS, VARIANTS
from latte.text_encoder import resolve_text_encoder
from latte.train import frame_masks
from latte.train.build import make_model_config
from latte.train.finetune import validate_finetune
from latte.vae import check_vae_spec


def load_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- preset <- config file <- --set overrides (latte.config.read_config), then checked."""
    config = read_config(preset, config_file, overrides)
    validate(config)
    return config


# Model keys that only one kind of model reads: a changed value for the other kind is an error, not ignored.
CLASS_MODEL_KEYS = ("conditioning", "class_conditional", "class_dropout", "init_from_dit")
TEXT_MODEL_KEYS = ("text_max_length", "caption_dropout", "init_from_pixart", "pooled_text")


def validate_model(m: ModelSection) -> None:
    """Class/unconditional or text-to-video model (model.text_encoder set): names and keys agree."""
    text = m.text_encoder is not None
    defaults = ModelSection()
    if text and m.name not in TEXT_MODELS:
        raise LatteError(f"model.text_encoder is set, so model.name must be a text-to-video model "
                         f"({', '.join(TEXT_MODELS)}), got {m.name!r}")
    if not text and m.name in TEXT_MODELS:
        raise LatteError(f"model {m.name} is text-to-video: set model.text_encoder (minilm, a folder or a hub id)")
    for key in TEXT_MODEL_KEYS if not text else CLASS_MODEL_KEYS:
        if getattr(m, key) != getattr(defaults, key):
            kind = "text-to-video" if not text else "class/unconditional"
            raise LatteError(f"model.{key} applies to {kind} models only; this run's model is "
                             f"{'text-to-video' if text else 'class/unconditional'}")
    if text:
        m.text_encoder = resolve_text_encoder(m.text_encoder)
        if m.depth is not None and m.depth % 2:
            raise LatteError(f"model.depth counts spatial + temporal blocks: a text model needs it even, got {m.depth}")
    check_range("model.caption_dropout", m.caption_dropout, 0, 1, high_open=True)


MNIST_DATA_KEYS = ("mnist_min_speed", "mnist_max_speed", "mnist_bounce", "mnist_digits", "mnist_digit_size")


def validate(config: Config) -> None:
    validate_model(config.model)
    validate_finetune(config.model)
    if config.model.trainable != "all" and config.train.parallel == "fsdp":
        raise LatteError(f"model.trainable={config.model.trainable} runs with train.parallel=ddp: FSDP shards "
                         "whole models, and a partly frozen one gains little from it")
    if not config.data.is_moving_mnist:
        for key in MNIST_DATA_KEYS:
            if getattr(config.data, key) != getattr(DataSection(), key):
                raise LatteError(f"data.{key} applies to the moving-mnist dataset only, not {config.data.dataset}")
    objective = objective_class(config.diffusion.objective)  # one-line error naming the registered ones
    check_objective_keys(config, objective)
    choices = {
        ("model", "variant"): VARIANTS,
        ("model", "patch_embed"): PATCH_EMBEDS,
        ("model", "conditioning"): tuple(c for c in CONDITIONINGS if c != "adaln-single"),  # text models: by name
        ("model", "temporal_pos"): TEMPORAL_POSITIONS,
        **{("diffusion", key): valid for key, valid in objective.choices.items()},
        ("train", "mixed_precision"): ("auto", *PRECISIONS),
        ("train", "device"): ("auto", "cpu", "cuda"),
        ("train", "parallel"): PARALLEL_MODES,
        ("sample", "sampler"): objective.samplers,
    }
    for (section, key), valid in choices.items():
        value = getattr(getattr(config, section), key)
        if value not in valid:
            whose = f" (the samplers of diffusion.objective={objective.name})" if key == "sampler" else ""
            raise LatteError(f"{section}.{key} must be one of {', '.join(map(str, valid))}{whose}, got {value!r}")
    ranges = {**RANGES, **{("diffusion", key): span for key, span in objective.ranges.items()}}
    for (section, key), (low, high, low_open, high_open) in ranges.items():
        check_range(f"{section}.{key}", getattr(getattr(config, section), key), low, high, low_open, high_open)
    check_finite(config)
    if config.train.batch_size % config.train.grad_accum:
        raise LatteError(f"train.batch_size {config.train.batch_size} must be divisible by train.grad_accum "
                         f"{config.train.grad_accum}")
    size = config.data.mnist_digit_size
    if config.data.is_moving_mnist and size is not None and size > config.data.resolution:
        raise LatteError(f"data.mnist_digit_size {size} must fit the {config.data.resolution} px canvas")
    if config.data.mnist_min_speed > config.data.mnist_max_speed:
        raise LatteError(f"data.mnist_min_speed {config.data.mnist_min_speed} must be <= data.mnist_max_speed "
                         f"{config.data.mnist_max_speed}")
    objective.check_settings(dataclasses.asdict(config.diffusion))
    if config.train.fsdp_cpu_offload and config.train.parallel != "fsdp":
        raise LatteError("train.fsdp_cpu_offload needs train.parallel=fsdp")
    if not 0 <= config.optim.decay_steps <= config.train.max_steps:
        raise LatteError(f"optim.decay_steps must be in [0, train.max_steps={config.train.max_steps}], "
                         f"got {config.optim.decay_steps}")
    check_held_out(config)
    check_model_shape(config)
    unit = config.model.tubelet_frames if config.model.patch_embed == "tubelet" else 1
    frame_masks.check(config.train, config.data.num_frames, unit,
                      f"data.num_frames {config.data.num_frames}" + (", model.patch_embed tubelet" if unit > 1 else ""))


def check_objective_keys(config: Config, objective) -> None:
    """A run's diffusion keys that its objective does not read keep their defaults (one line naming them
    all), and model.learn_sigma is set only for an objective whose models may learn a variance."""
    defaults = DiffusionSection()
    foreign = [f"diffusion.{key}={value}" for key, value in dataclasses.asdict(config.diffusion).items()
               if key != "objective" and key not in objective.settings and value != getattr(defaults, key)]
    if foreign:
        raise LatteError(f"{', '.join(foreign)} do{'es' if len(foreign) == 1 else ''} not apply to "
                         f"diffusion.objective={objective.name}: leave {'it' if len(foreign) == 1 else 'them'} "
                         "at the default")
    if config.model.learn_sigma and not objective.learns_variance:
        raise LatteError(f"model.learn_sigma applies to diffusion.objective=ddpm only: a {objective.name} model "
                         "learns no variance; set model.learn_sigma=false")


def held_out_refusal(config: Config) -> str | None:
    """Why this config cannot have a held-out loss (train.eval_every > 0), or None when it can."""
    if config.data.cache:
        return ("train.eval_every needs clips the run does not train on, and a latent cache has no held-out "
                "slice yet: set train.eval_every=0 or train on the data folder")
    if objective_class(config.diffusion.objective).held_out_times is Objective.held_out_times:
        return f"diffusion.objective {config.diffusion.objective} defines no held-out times: set train.eval_every=0"
    return None


def check_held_out(config: Config) -> None:
    reason = held_out_refusal(config) if config.train.eval_every else None
    if reason:
        raise LatteError(reason)


INF = float("inf")
# (section, key): (low, high, low excluded, high excluded); None values (optional keys) are not checked.
# The diffusion section's come from its objective (`ranges`).
RANGES = {
    ("model", "tubelet_frames"): (1, INF, False, False),
    ("model", "hidden_size"): (1, INF, False, False),
    ("model", "depth"): (1, INF, False, False),
    ("model", "num_heads"): (1, INF, False, False),
    ("model", "patch_size"): (1, INF, False, False),
    ("model", "mlp_ratio"): (0, INF, True, True),
    ("model", "class_dropout"): (0, 1, False, True),
    ("model", "text_max_length"): (1, INF, False, False),
    ("model", "lora_alpha"): (0, INF, True, True),
    ("data", "num_frames"): (1, INF, False, False),
    ("data", "frame_interval"): (1, INF, False, False),
    ("data", "resolution"): (1, INF, False, False),
    ("data", "images_per_clip"): (0, INF, False, False),
    ("data", "num_workers"): (0, INF, False, False),
    ("data", "mnist_min_speed"): (0, INF, False, True),
    ("data", "mnist_max_speed"): (0, INF, False, True),
    ("data", "mnist_digits"): (1, INF, False, False),
    ("data", "mnist_digit_size"): (4, INF, False, False),
    ("optim", "lr"): (0, INF, True, True),
    ("optim", "beta1"): (0, 1, False, True),
    ("optim", "beta2"): (0, 1, False, True),
    ("optim", "weight_decay"): (0, INF, False, True),
    ("optim", "warmup_steps"): (0, INF, False, False),
    ("optim", "grad_clip"): (0, INF, False, True),
    ("optim", "clip_from_step"): (0, INF, False, False),
    ("train", "max_steps"): (1, INF, False, False),
    ("train", "batch_size"): (1, INF, False, False),
    ("train", "grad_accum"): (1, INF, False, False),
    ("train", "ema_decay"): (0, 1, False, True),
    ("train", "seed"): (0, 2**31 - 1, False, False),
    ("train", "checkpoint_every"): (1, INF, False, False),
    ("train", "keep_checkpoints"): (1, INF, False, False),
    ("train", "log_every"): (1, INF, False, False),
    ("train", "sample_every"): (0, INF, False, False),
    ("train", "eval_every"): (0, INF, False, False),
    ("train", "eval_clips"): (1, INF, False, False),
    ("train", "peak_tflops"): (0, INF, True, True),
    **{("train", key): (0, 1, False, False) for key in frame_masks.KEYS},
    ("train", "mask_prefix_frames"): (0, INF, False, False),
    ("sample", "num_videos"): (1, INF, False, False),
    ("sample", "steps"): (1, INF, False, False),
    ("sample", "cfg_scale"): (0, INF, False, True),
    ("sample", "fps"): (1, INF, False, False),
}


def check_finite(config: Config) -> None:
    """No float key is nan or inf, ranged or not (such a value only surfaces later, as a non-finite loss)."""
    for section in dataclasses.fields(config):
        for key, value in dataclasses.asdict(getattr(config, section.name)).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise LatteError(f"{section.name}.{key} must be a finite number, got {value}")


def check_range(name: str, value, low, high, low_open: bool = False, high_open: bool = False) -> None:
    """One-line error naming the key and its valid range (NaN and infinities are never in range)."""
    if value is None:
        return
    inside = math.isfinite(value) and (low < value if low_open else low <= value) and \
        (value < high if high_open else value <= high)
    if not inside:
        def bound(b):
            return "inf" if b == INF else (f"{b:g}" if isinstance(b, float) else str(b))

        span = f"{'(' if low_open else '['}{bound(low)}, {bound(high)}{')' if high_open or high == INF else ']'}"
        raise LatteError(f"{name} must be in {span}, got {value}")


def check_model_shape(config: Config) -> None:
    """Build the model config the run will build (on pixels or on-the-fly latents), so sizes the model
    refuses (a resolution its patch size does not divide, heads that do not divide the width) are
    refused here, by --dry-run too, and not after the data are loaded."""
    m, d = config.model, config.data
    if d.cache:
        return
    if d.vae not in (None, "", "none"):  # a missing VAE folder is named before the shapes it would decide
        check_vae_spec(str(d.vae))
    factor = 8 if d.vae != "none" else 1  # the Stable Diffusion VAE downsamples 8x
    if d.resolution % factor:
        raise LatteError(f"data.resolution {d.resolution} must be divisible by the VAE's factor {factor}")
    side = d.resolution // factor
    probe = torch.empty(4, d.num_frames, side, side, device="meta")  # (C, F, H, W): channels do not matter here
    try:
        make_model_config(config, probe, num_classes=0, caption_channels=1 if m.text_encoder else 0)
    except LatteError as exc:
        raise LatteError(f"model: {exc} (data.resolution {d.resolution}"
                         f"{', VAE latents 1/8 of it' if factor > 1 else ''})") from None
