"""Fine-tuning: `model.init_from` (start from another model's architecture and weights) and
`model.trainable` (all | temporal | lora).

- init_from takes a latte run folder or checkpoint (its EMA weights, adapters merged when it is a
  LoRA run), an official Latte `.pt` (ffs / skytimelapse / taichi / ucf101) or a diffusers
  `LatteTransformer3DModel` folder (read by latte.model_sources). The run's model is the source's; what
  the run's data decides (channels, frames, latent size, classes, caption width, learned variance) must
  agree with it.
- temporal trains the temporal blocks (`.kind == "temporal"`: attention, MLP and the block's own
  adaLN modulation / scale-shift table) and the temporal attention of factorised blocks; every
  shared part (patch, timestep, class and caption embedders, adaLN-single, final layer, spatial
  blocks) stays frozen, as when adapting image-pretrained weights to motion (paper Sec. 3.3).
- lora trains peft LoRA adapters (Hu et al. 2021: W + (alpha/r) B A, B zero at start) on the
  blocks' linear layers; a LoRA checkpoint holds adapters, their optimizer and EMA state, and a
  reference (path, sha256) to the base, which is verified whenever the run is loaded.
"""
from __future__ import annotations

import torch
from torch import nn

from latte import lora
from latte.errors import LatteError
from latte.model_sources import Source, build_network, check_base, load_source, source_digest
from latte.models import named_blocks

TRAINABLE = ("all", "temporal", "lora")
# Config fields the run's data and settings decide: a source must agree on every one it has.
MUST_MATCH = {"in_channels": "latent channels", "num_frames": "data.num_frames", "latent_hw": "latent size",
              "num_classes": "dataset classes", "caption_channels": "text encoder width",
              "learn_sigma": "model.learn_sigma"}


def validate_finetune(m) -> None:
    """Check the fine-tuning keys of a ModelSection; `lora_rank` turns `trainable: all` into lora."""
    if m.trainable not in TRAINABLE:
        raise LatteError(f"model.trainable must be one of {', '.join(TRAINABLE)}, got {m.trainable!r}")
    if m.lora_rank is not None:
        if m.trainable == "temporal":
            raise LatteError("model.lora_rank implies model.trainable=lora, but model.trainable is temporal")
        if m.lora_rank < 1:
            raise LatteError(f"model.lora_rank must be >= 1, got {m.lora_rank}")
        m.trainable = "lora"
    elif m.trainable == "lora":
        raise LatteError("model.trainable=lora needs model.lora_rank (e.g. --set model.lora_rank=8)")
    else:
        for key, default in (("lora_alpha", None), ("lora_dropout", 0.0), ("lora_targets", None)):
            if getattr(m, key) != default:
                raise LatteError(f"model.{key} applies to LoRA runs only: set model.lora_rank")
    if not 0.0 <= m.lora_dropout < 1.0:
        raise LatteError(f"model.lora_dropout must be in [0, 1), got {m.lora_dropout}")
    if m.init_from and (m.init_from_dit or getattr(m, "init_from_pixart", None)):
        raise LatteError("model.init_from and model.init_from_dit / init_from_pixart exclude each other")
    if m.trainable == "lora":
        import peft  # noqa: F401  (fail at config time, in one line, if it is missing; local: see latte/lora.py)


# ----------------------------------------------------------------------------------------------
# Sources: which model a run starts from


def _is_text(config) -> bool:
    return bool(getattr(config, "caption_channels", 0))


def check_fits(source_config, run_config, where: str) -> None:
    """One-line error naming the first field where the source's model and this run's data disagree."""
    if _is_text(source_config) != _is_text(run_config):
        kinds = ["a text-to-video model" if _is_text(c) else "a class/unconditional model"
                 for c in (source_config, run_config)]
        raise LatteError(f"model.init_from {where} is {kinds[0]}, this run trains {kinds[1]} "
                         f"({'set' if _is_text(source_config) else 'unset'} model.text_encoder)")
    for key, what in MUST_MATCH.items():
        theirs, ours = getattr(source_config, key, None), getattr(run_config, key, None)
        if theirs is not None and ours is not None and theirs != ours:
            raise LatteError(f"model.init_from {where} has {key}={theirs}, this run's {what} gives {ours}")


def build_model(config, run_model_config, log=print) -> tuple[object, nn.Module, Source | None]:
    """(model config, model, source): a fresh model of `run_model_config`, or the model of
    `config.model.init_from` once it is checked to fit the run's data."""
    if not config.model.init_from:
        return run_model_config, build_network(run_model_config.to_dict()), None
    source = load_source(config.model.init_from)
    check_fits(source.model.config, run_model_config, config.model.init_from)
    state = source.model.state_dict()
    log(f"init from {source.kind} {source.path}: architecture {source.model.config.name or 'as stored'}, "
        f"copied all {len(state)} tensors ({sum(v.numel() for v in state.values()):,} values)")
    return source.model.config, source.model.train(), source


# ----------------------------------------------------------------------------------------------
# What trains


def temporal_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters `trainable: temporal` trains (see the module docstring)."""
    names = []
    for name, block in named_blocks(model):
        if block.kind == "split":
            raise LatteError("model.trainable=temporal: variant 4 (split heads) shares every layer between space "
                             "and time, so it has no temporal parameters of its own")
        if block.kind == "temporal":
            names += [f"{name}.{p}" for p, _ in block.named_parameters()]
        elif block.kind == "factorised":
            names += [f"{name}.temporal_attn.{p}" for p, _ in block.temporal_attn.named_parameters()]
    if not names:
        raise LatteError("model.trainable=temporal: this model has no temporal blocks")
    return names


def apply_trainable(model: nn.Module, section) -> dict | None:
    """Freeze what model.trainable leaves out (LoRA: inject the adapters); returns the LoRA settings or None."""
    if section.trainable == "lora":
        settings = lora.settings(model, section)
        lora.add_adapters(model, settings)
        return settings
    if section.trainable == "temporal":
        keep = set(temporal_parameters(model))
        for name, param in model.named_parameters():
            param.requires_grad_(name in keep)
    return None


class Tuning:
    """Applies model.trainable to a model, and saves/loads what a checkpoint of such a run holds."""

    def __init__(self, section, model: nn.Module, source: Source | None, log=print):
        self.mode = section.trainable
        self.base = None
        if self.mode == "lora":
            if source is None:
                raise LatteError("model.lora_rank needs model.init_from: LoRA adapts an existing model")
            self.base = {"kind": source.kind, "path": str(source.path), "sha256": source_digest(source.path)}
        self.lora = apply_trainable(model, section)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        if self.mode != "all":
            log(f"trainable {self.mode}: {len(self.names)} tensors "
                f"({sum(p.numel() for p in model.parameters() if p.requires_grad):,} values) train, "
                f"{frozen:,} values frozen")

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def select(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What a checkpoint stores of a module's full state dict: adapters only for LoRA, else all of it."""
        if self.mode != "lora":
            return state
        trained = set(self.names)
        return {k: v for k, v in state.items() if k in trained}

    def load_weights(self, module: nn.Module, state: dict[str, torch.Tensor], load_full) -> None:
        """Adapters into a LoRA model; otherwise the full state through `load_full(module, state)`."""
        if self.mode != "lora":
            load_full(module, state)
            return
        lora.load_adapters(module, state)

    def checkpoint_extra(self) -> dict:
        return {} if self.mode != "lora" else {"base": self.base, "lora": self.lora}

    def check_resume(self, state: dict) -> None:
        """A LoRA checkpoint resumes only over the very base it was trained on."""
        if self.mode == "lora":
            check_base(state["base"], self.base["sha256"])
