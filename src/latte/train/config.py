"""Typed training configuration: dataclass sections, YAML presets, `--set section.key=value` overrides.

Every key is checked: an unknown key or a value of the wrong type is a one-line LatteError that
names it and the valid choices. The resolved config is printed at start and stored in every
checkpoint, so `latte sample` can rebuild the run from the checkpoint alone.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from latte.errors import LatteError

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


@dataclass
class ModelSection:
    name: str = "Latte-T/2"  # registry size/patch (text-to-video: LatteT2V-T, Latte-1); the fields below override it
    variant: int = 1
    patch_embed: str = "frame"
    tubelet_frames: int = 2
    conditioning: str = "adaln"
    temporal_pos: str = "absolute"
    hidden_size: int | None = None  # None: the registry size's width
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None  # None: the name's
    mlp_ratio: float = 4.0
    class_conditional: bool = True  # use the dataset's labels when it has them
    class_dropout: float = 0.1
    learn_sigma: bool = True
    grad_checkpointing: bool = False
    init_from_dit: str | None = None  # path of an ImageNet DiT state dict to initialise from
    # Text-to-video (adaln-single conditioning, caption cross-attention): set text_encoder to train on the dataset's captions.
    text_encoder: str | None = None  # minilm (offline all-MiniLM-L6-v2) | Hugging Face folder or hub id (T5 ...)
    text_max_length: int | None = None  # caption tokens; None: 120 for T5, 32 for other encoders
    caption_dropout: float = 0.1  # captions replaced by "" for classifier-free guidance
    init_from_pixart: str | None = None  # diffusers PixArt-alpha transformer folder: spatial blocks start from it
    # Fine-tuning (latte/train/finetune.py): start from a model's architecture and weights, train all or part of it.
    init_from: str | None = None  # latte run folder or checkpoint, official Latte .pt, or diffusers LatteTransformer3DModel folder
    trainable: str = "all"  # all | temporal (temporal blocks only) | lora (adapters only; implied by lora_rank)
    lora_rank: int | None = None
    lora_alpha: float | None = None  # None: the rank (adapter scale alpha / rank = 1)
    lora_dropout: float = 0.0
    lora_targets: str | None = None  # comma-separated block sublayers; None: attention and MLP linears of every block


@dataclass
class DiffusionSection:
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"  # epsilon | v | x0
    loss_weighting: str = "none"  # none (Latte) | min-snr (Hang et al. 2023, weight min(SNR, gamma) in x0 units)
    min_snr_gamma: float = 5.0
    timestep_power: float = 1.0  # training steps t = T * u**power, u uniform: 1 is uniform, < 1 favours high noise
    timestep_power_until: int = 0  # training step from which t is drawn uniformly again (0: the power holds throughout)


@dataclass
class DataSection:
    dataset: str = "moving-mnist"
    root: str | None = None
    num_frames: int = 16
    frame_interval: int = 3
    resolution: int = 256
    images_per_clip: int = 0  # image-video joint training: extra frames from other clips
    vae: str = "none"  # none (pixel space) | diffusers AutoencoderKL folder or hub id
    cache: str | None = None  # latent cache written by `latte encode`
    num_workers: int = 2
    # moving-mnist only: digit speed range in pixels per frame, and whether digits bounce off the edges
    mnist_min_speed: float = 1.5
    mnist_max_speed: float = 3.0
    mnist_bounce: bool = True

    @property
    def is_moving_mnist(self) -> bool:
        return self.dataset.lower().replace("_", "-") == "moving-mnist"

    def mnist_kwargs(self) -> dict:
        """The MovingMNIST keyword arguments the mnist_* keys set."""
        return {"speed": (self.mnist_min_speed, self.mnist_max_speed), "bounce": self.mnist_bounce}


@dataclass
class OptimSection:
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay_steps: int = 0  # lr falls linearly to 0 over the last N steps of train.max_steps (0: constant)
    grad_clip: float = 0.1  # max gradient norm; 0 disables
    clip_from_step: int = 0  # clipping starts at this step (the official recipe starts later)


@dataclass
class TrainSection:
    output_dir: str = "runs/latte"
    max_steps: int = 1000
    batch_size: int = 8  # global clips per optimizer step (all processes, all accumulation steps)
    grad_accum: int = 1
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay min(ema_decay, (1+step)/(10+step)): short runs forget the init sooner
    seed: int = 0
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False  # regional torch.compile: each transformer block compiled on its own
    parallel: str = "ddp"  # under torchrun: ddp (replicated) | fsdp (FSDP2 fully_shard per block and at the root)
    fsdp_cpu_offload: bool = False  # fsdp: sharded parameters, gradients and optimizer state live in CPU memory
    peak_tflops: float | None = None  # accelerator peak for MFU; None: known GPUs (A100/H100/H200 bf16), else no MFU
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    sample_every: int = 0  # write a sample filmstrip every N steps (0: only at the end)
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class SampleSection:
    num_videos: int = 8
    sampler: str = "dpm-solver"  # ddpm | ddim | dpm-solver | unipc | deis (docs/sampling.md: dpm-solver 20 was closest)
    steps: int | None = None  # None: the sampler's default (ddpm 250, ddim 50, the others 20)
    cfg_scale: float = 1.0
    fps: int = 8


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Sections a resumed run must share with its checkpoint (the rest may change between runs).
RESUME_FIXED = {
    "model": None, "diffusion": None, "optim": None,
    "data": ("dataset", "root", "num_frames", "frame_interval", "resolution", "images_per_clip", "vae", "cache"),
    "train": ("batch_size", "grad_accum", "seed", "ema_decay", "ema_warmup"),
}


def _coerce(value, annotation, where: str):
    """Check/convert a YAML value against a field annotation (int, float, str, bool, X | None)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"int": int, "float": float, "str": str, "bool": bool})  # noqa: S307 (own literals)
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        annotation = next(a for a in args if a is not type(None))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise LatteError(f"{where} must be {getattr(annotation, '__name__', annotation)}, got {value!r}")


def _section_fields(section) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section)}


def apply_values(config: Config, values: dict, origin: str) -> Config:
    """Set nested {section: {key: value}} values on config, checking every name and type."""
    sections = _section_fields(config)
    if not isinstance(values, dict):
        raise LatteError(f"{origin}: expected a mapping of sections ({', '.join(sections)})")
    for section_name, entries in values.items():
        if section_name not in sections:
            raise LatteError(f"{origin}: unknown section {section_name!r}; valid: {', '.join(sections)}")
        section = getattr(config, section_name)
        fields = _section_fields(section)
        if not isinstance(entries, dict):
            raise LatteError(f"{origin}: section {section_name!r} must be a mapping")
        for key, value in entries.items():
            if key not in fields:
                raise LatteError(f"{origin}: unknown key {section_name}.{key}; valid: {', '.join(fields)}")
            setattr(section, key, _coerce(value, fields[key].type, f"{section_name}.{key}"))
    return config


def parse_override(text: str) -> dict:
    """`section.key=value` -> {section: {key: value}} (the value parsed as YAML)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise LatteError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    section, name = key.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return {section: {name: value}}


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise LatteError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LatteError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}")
    return data


def load_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- preset <- config file <- --set overrides (later wins)."""
    config = Config()
    if preset is not None:
        if preset not in list_presets():
            raise LatteError(f"unknown preset {preset!r}; available: {', '.join(list_presets())}")
        apply_values(config, read_yaml(PRESET_DIR / f"{preset}.yaml", "preset"), f"preset {preset}")
    if config_file is not None:
        apply_values(config, read_yaml(Path(config_file), "config file"), config_file)
    for text in overrides:
        apply_values(config, parse_override(text), f"--set {text}")
    validate(config)
    return config


def config_from_dict(data: dict) -> Config:
    return apply_values(Config(), data, "checkpoint config")


# Model keys that only one kind of model reads: a changed value for the other kind is an error, not ignored.
CLASS_MODEL_KEYS = ("conditioning", "class_conditional", "class_dropout", "init_from_dit")
TEXT_MODEL_KEYS = ("text_max_length", "caption_dropout", "init_from_pixart")


def validate_model(m: ModelSection) -> None:
    """Class/unconditional or text-to-video model (model.text_encoder set): names and keys agree."""
    from latte.models.config import TEXT_MODELS as T2V_MODELS
    from latte.text_encoder import resolve_text_encoder

    text = m.text_encoder is not None
    defaults = ModelSection()
    if text and m.name not in T2V_MODELS:
        raise LatteError(f"model.text_encoder is set, so model.name must be a text-to-video model "
                         f"({', '.join(T2V_MODELS)}), got {m.name!r}")
    if not text and m.name in T2V_MODELS:
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


MNIST_DATA_KEYS = ("mnist_min_speed", "mnist_max_speed", "mnist_bounce")


def validate(config: Config) -> None:
    from latte.train.finetune import validate_finetune

    validate_model(config.model)
    validate_finetune(config.model)
    if config.model.trainable != "all" and config.train.parallel == "fsdp":
        raise LatteError(f"model.trainable={config.model.trainable} runs with train.parallel=ddp: FSDP shards "
                         "whole models, and a partly frozen one gains little from it")
    if not config.data.is_moving_mnist:
        for key in MNIST_DATA_KEYS:
            if getattr(config.data, key) != getattr(DataSection(), key):
                raise LatteError(f"data.{key} applies to the moving-mnist dataset only, not {config.data.dataset}")
    from latte.diffusion.samplers import SAMPLERS
    from latte.models.config import CONDITIONINGS, PATCH_EMBEDS, TEMPORAL_POSITIONS, VARIANTS
    from latte.train.parallelize import PARALLEL_MODES

    choices = {
        ("model", "variant"): VARIANTS,
        ("model", "patch_embed"): PATCH_EMBEDS,
        ("model", "conditioning"): tuple(c for c in CONDITIONINGS if c != "adaln-single"),  # text models: by name
        ("model", "temporal_pos"): TEMPORAL_POSITIONS,
        ("diffusion", "prediction"): ("epsilon", "v", "x0"),
        ("diffusion", "loss_weighting"): ("none", "min-snr"),
        ("train", "mixed_precision"): ("auto", "bf16", "fp32"),
        ("train", "device"): ("auto", "cpu", "cuda"),
        ("train", "parallel"): PARALLEL_MODES,
        ("sample", "sampler"): SAMPLERS,
    }
    for (section, key), valid in choices.items():
        value = getattr(getattr(config, section), key)
        if value not in valid:
            raise LatteError(f"{section}.{key} must be one of {', '.join(map(str, valid))}, got {value!r}")
    for (section, key), (low, high, low_open, high_open) in RANGES.items():
        check_range(f"{section}.{key}", getattr(getattr(config, section), key), low, high, low_open, high_open)
    if config.train.batch_size % config.train.grad_accum:
        raise LatteError(f"train.batch_size {config.train.batch_size} must be divisible by train.grad_accum "
                         f"{config.train.grad_accum}")
    if config.data.mnist_min_speed > config.data.mnist_max_speed:
        raise LatteError(f"data.mnist_min_speed {config.data.mnist_min_speed} must be <= data.mnist_max_speed "
                         f"{config.data.mnist_max_speed}")
    if config.diffusion.beta_start > config.diffusion.beta_end:
        raise LatteError(f"diffusion.beta_start {config.diffusion.beta_start} must be <= diffusion.beta_end "
                         f"{config.diffusion.beta_end}")
    if config.train.fsdp_cpu_offload and config.train.parallel != "fsdp":
        raise LatteError("train.fsdp_cpu_offload needs train.parallel=fsdp")
    if not 0 <= config.optim.decay_steps <= config.train.max_steps:
        raise LatteError(f"optim.decay_steps must be in [0, train.max_steps={config.train.max_steps}], "
                         f"got {config.optim.decay_steps}")
    check_model_shape(config)


INF = float("inf")
# (section, key): (low, high, low excluded, high excluded); None values (optional keys) are not checked.
RANGES = {
    ("model", "tubelet_frames"): (1, INF, False, False),
    ("model", "hidden_size"): (1, INF, False, False),
    ("model", "depth"): (1, INF, False, False),
    ("model", "num_heads"): (1, INF, False, False),
    ("model", "patch_size"): (1, INF, False, False),
    ("model", "mlp_ratio"): (0, INF, True, True),
    ("model", "class_dropout"): (0, 1, False, True),
    ("model", "text_max_length"): (1, INF, False, False),
    ("diffusion", "num_timesteps"): (2, INF, False, False),
    ("diffusion", "beta_start"): (0, 1, True, True),
    ("diffusion", "beta_end"): (0, 1, True, True),
    ("diffusion", "min_snr_gamma"): (0, INF, True, True),
    ("diffusion", "timestep_power"): (0, INF, True, True),
    ("diffusion", "timestep_power_until"): (0, INF, False, False),  # past max_steps the power holds throughout
    ("data", "num_frames"): (1, INF, False, False),
    ("data", "frame_interval"): (1, INF, False, False),
    ("data", "resolution"): (1, INF, False, False),
    ("data", "images_per_clip"): (0, INF, False, False),
    ("data", "num_workers"): (0, INF, False, False),
    ("data", "mnist_min_speed"): (0, INF, False, True),
    ("data", "mnist_max_speed"): (0, INF, False, True),
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
    ("train", "peak_tflops"): (0, INF, True, True),
    ("sample", "num_videos"): (1, INF, False, False),
    ("sample", "steps"): (1, INF, False, False),
    ("sample", "cfg_scale"): (0, INF, False, True),
    ("sample", "fps"): (1, INF, False, False),
}


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
    import torch

    from latte.train.trainer import make_model_config

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


PATH_KEYS = {("data", "root"), ("data", "cache"), ("data", "vae"), ("model", "init_from_dit"),
             ("model", "init_from_pixart"), ("model", "text_encoder")}


def same_path(value):
    """An existing path's resolved form (other values, such as hub ids, unchanged)."""
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def resume_differences(stored: dict, current: Config) -> list[str]:
    """Keys whose values differ between a checkpoint's config and this run's, where they must agree."""
    now, defaults = current.to_dict(), Config().to_dict()
    diffs = []
    for section, keys in RESUME_FIXED.items():
        for key in keys or now[section].keys():
            # a key the checkpoint lacks was added later: the run used its default
            old, new = stored.get(section, {}).get(key, defaults[section].get(key)), now[section][key]
            if (section, key) in PATH_KEYS:  # ucf, ucf/ and /abs/ucf name one folder
                old, new = same_path(old), same_path(new)
            if old != new:
                diffs.append(f"{section}.{key}: checkpoint {old!r}, now {new!r}")
    return diffs
