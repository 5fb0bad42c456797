"""Typed run configuration: dataclass sections, YAML presets, `--set section.key=value` overrides.

Every key is checked: an unknown key or a value of the wrong type is a one-line LatteError that
names it and the valid choices. Choices, ranges and combinations are checked by
latte.train.checks (`load_config` there reads a config through `read_config` and checks it). The
resolved config is printed at start and stored in every checkpoint, so a checkpoint alone rebuilds
its run (`config_from_dict`, which also reads configs stored before newer keys existed).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from latte.errors import LatteError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
CUDA_KEY = "cuda"  # top-level mapping in a preset or config file: its settings for runs on a GPU
PARALLEL_MODES = ("ddp", "fsdp")  # train.parallel (latte.train.parallelize applies them)


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
    pooled_text: bool = False  # the caption's mean feature also joins the timestep embedding (SD3's pooled path)
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
    objective: str = "ddpm"  # ddpm | flow (latte.diffusion.objectives.OBJECTIVES); each reads its own keys below
    num_timesteps: int = 1000  # ddpm: its steps; flow: the network embeds t * num_timesteps
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"  # epsilon | v | x0
    loss_weighting: str = "none"  # none (Latte) | min-snr (Hang et al. 2023, weight min(SNR, gamma) in x0 units; ddpm only)
    min_snr_gamma: float = 5.0
    timestep_power: float = 1.0  # training steps t = T * u**power, u uniform: 1 is uniform, < 1 favours high noise
    timestep_power_until: int = 0  # training step from which t is drawn uniformly again (0: the power holds throughout)
    # flow only (latte.diffusion.flow): training times t in [0, 1], then shifted t' = a t / (1 + (a - 1) t)
    time_sampling: str = "logit-normal"  # uniform | logit-normal (t = sigmoid(N(logit_mean, logit_std)), SD3)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    time_shift: float = 1.0  # a (1: no shift; > 1 favours noise), also the samplers' default grid shift
    time_shift_base_tokens: int = 0  # > 0: a = time_shift * sqrt(tokens per clip / this) (SD3 Sec. 5.3.2)


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
    # moving-mnist only: digit speed range in pixels per frame, whether digits bounce off the edges, how
    # many digits a clip holds (labels and captions name the first) and their size (None: 0.56 x resolution)
    mnist_min_speed: float = 1.5
    mnist_max_speed: float = 3.0
    mnist_bounce: bool = True
    mnist_digits: int = 1
    mnist_digit_size: int | None = None

    @property
    def is_moving_mnist(self) -> bool:
        return self.dataset.lower().replace("_", "-") == "moving-mnist"

    def mnist_kwargs(self) -> dict:
        """The MovingMNIST keyword arguments the mnist_* keys set."""
        kwargs = {"speed": (self.mnist_min_speed, self.mnist_max_speed), "bounce": self.mnist_bounce}
        # the digit keys only when set, so the data fingerprints of earlier runs and ablations stay as they were
        if self.mnist_digits != 1:
            kwargs["num_digits"] = self.mnist_digits
        if self.mnist_digit_size is not None:
            kwargs["digit_size"] = self.mnist_digit_size
        return kwargs


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
    eval_every: int = 0  # held-out loss of the EMA model every N steps and at the end (0: off; latte.train.heldout)
    eval_clips: int = 64  # held-out clips: Moving MNIST's test split, or a folder's slice that then does not train
    # frame conditioning (latte/train/frame_masks.py): per clip, the chance that these frames are given clean
    mask_first: float = 0.0  # the first frame (image-to-video)
    mask_prefix: float = 0.0  # the first k frames (continuation)
    mask_prefix_frames: int = 0  # k; 0: drawn per clip, uniform in 1 .. frames - 1
    mask_last: float = 0.0  # the last frame
    mask_ends: float = 0.0  # the first and the last frame (interpolation)
    mask_random: float = 0.0  # each frame with probability 1/2, one always generated
    device: str = "auto"  # auto | cpu | cuda

    MASK_KINDS = ("first", "prefix", "last", "ends", "random")  # the train.mask_<kind> keys (not a field)

    @property
    def mask_probabilities(self) -> tuple[float, ...]:
        """The chance of each frame mask kind per clip, in MASK_KINDS order."""
        return tuple(getattr(self, f"mask_{kind}") for kind in self.MASK_KINDS)

    def trained_kinds(self) -> set[str]:
        """The frame mask kinds this run trains with (probability > 0); empty: no frame conditioning."""
        return {kind for kind, p in zip(self.MASK_KINDS, self.mask_probabilities) if p}


@dataclass
class SampleSection:
    num_videos: int = 8
    sampler: str = "dpm-solver-sde"  # ddpm | ddim | dpm-solver | dpm-solver-sde | unipc | deis (docs/sampling.md: FVD per sampler)
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
    "train": ("batch_size", "grad_accum", "seed", "ema_decay", "ema_warmup", "mask_first", "mask_prefix",
              "mask_prefix_frames", "mask_last", "mask_ends", "mask_random"),
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
    if path.is_dir():
        raise LatteError(f"{what} {path} is a folder: give a YAML file")
    if not path.is_file():
        raise LatteError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise LatteError(f"{what} {path} is not UTF-8 text (byte {exc.start}): give a YAML file") from exc
    except yaml.YAMLError as exc:
        raise LatteError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    return data


def split_cuda(data: dict, origin: str) -> tuple[dict, dict]:
    """A preset's or config file's settings, and its `cuda:` mapping (sections applied when the run's
    device is a GPU), the latter checked now so that a typo in it fails on any machine."""
    if not isinstance(data, dict) or CUDA_KEY not in data:
        return data, {}
    values = {k: v for k, v in data.items() if k != CUDA_KEY}
    cuda = {} if data[CUDA_KEY] is None else data[CUDA_KEY]  # `cuda:` alone is empty; [] or false are errors
    apply_values(Config(), cuda, f"{origin} ({CUDA_KEY}:)")  # names, types and shape
    if "device" in cuda.get("train", {}):
        raise LatteError(f"{origin}: {CUDA_KEY}: cannot set train.device (it applies once the device is chosen)")
    return values, cuda


def runs_on_cuda(device: str) -> bool:
    """Whether train.device picks a GPU (latte.devices.pick_device: auto means CUDA when one is visible)."""
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def read_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- preset <- config file <- --set overrides (later wins), names and types checked (the
    rest: latte.train.checks.load_config). A preset or config file may also hold a `cuda:` mapping:
    applied right after its own settings when the run is on a GPU."""
    layers = []  # (origin, settings, cuda settings)
    if preset is not None:
        if preset not in list_presets():
            raise LatteError(f"unknown preset {preset!r}; available: {', '.join(list_presets())}")
        origin = f"preset {preset}"
        layers.append((origin, *split_cuda(read_yaml(PRESET_DIR / f"{preset}.yaml", "preset"), origin)))
    if config_file is not None:
        layers.append((config_file, *split_cuda(read_yaml(Path(config_file), "config file"), config_file)))
    sets = [(f"--set {text}", parse_override(text)) for text in overrides]

    def build(on_cuda: bool) -> Config:
        config = Config()
        for origin, values, cuda in layers:
            apply_values(config, values, origin)
            if on_cuda and cuda:
                apply_values(config, cuda, f"{origin} ({CUDA_KEY}:)")
        for origin, values in sets:
            apply_values(config, values, origin)
        return config

    config = build(on_cuda=False)  # train.device may come from any layer: read it from a first pass
    if any(cuda for _, _, cuda in layers) and runs_on_cuda(config.train.device):
        config = build(on_cuda=True)
    return config


def config_from_dict(data: dict) -> Config:
    return apply_values(Config(), data, "checkpoint config")


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
