"""A network from wherever it was saved: a latte run folder or checkpoint, an official Latte `.pt`
(ffs / skytimelapse / taichi / ucf101) or a diffusers `LatteTransformer3DModel` folder.

A latte checkpoint gives its EMA weights (or the raw ones); a LoRA checkpoint holds adapters and a
reference (path, sha256) to its base, which is verified before the adapters are applied. Fine-tuning
(`model.init_from`) and inference (latte.inference) both load through here.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from latte import lora
from latte.checkpoint_files import load_checkpoint, resolve_checkpoint
from latte.errors import LatteError
from latte.models import build_model, load_diffusers_transformer, load_official_checkpoint
from latte.models.checkpoints import load_exactly

LATTE = "latte checkpoint"
OFFICIAL = "official checkpoint"
DIFFUSERS = "diffusers folder"


@dataclass
class Source:
    """A model to start from: the network (eval mode, on the CPU), what it is, and the file or folder read."""

    model: nn.Module
    kind: str  # LATTE | OFFICIAL | DIFFUSERS
    path: Path


def build_network(model_config: dict) -> nn.Module:
    """A fresh network from a stored model config."""
    return build_model(model_config)


def open_source(path, what: str = "model.init_from") -> tuple[str, Path, object]:
    """(kind, resolved path, contents) of the model at `path`: a diffusers folder (contents None), a latte
    checkpoint (its state as load_checkpoint reads it) or an official checkpoint (its tensors).
    `what` names the setting the path came from in errors."""
    where = Path(path)
    if where.is_dir() and not (where / "checkpoints").is_dir():
        return DIFFUSERS, where.resolve(), None
    if not where.exists():
        raise LatteError(f"{what} not found: {where}")
    file = resolve_checkpoint(where).resolve()
    try:  # official files are plain tensors: read them without unpickling code
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # latte checkpoints also hold RNG states (numpy arrays)
        raw = None
    if raw is None or (isinstance(raw, dict) and "model_config" in raw):
        return LATTE, file, load_checkpoint(file)
    return OFFICIAL, file, raw


def load_source(path: str) -> Source:
    """The model at `path` (see open_source), in eval mode on the CPU; a latte checkpoint gives its EMA weights."""
    kind, where, contents = open_source(path)
    if kind == DIFFUSERS:
        return Source(load_diffusers_transformer(where), kind, where)
    if kind == LATTE:
        return Source(run_model(contents, use_ema=True), kind, where)
    return Source(load_official_checkpoint(contents), kind, where)


def source_digest(path: Path) -> str:
    """sha256 of a checkpoint file, or of every file of a diffusers folder (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def check_base(stored: dict, digest: str) -> None:
    if stored["sha256"] != digest:
        raise LatteError(f"the base model {stored['path']} changed on disk since this LoRA run started "
                         f"(sha256 {digest[:12]}, expected {stored['sha256'][:12]}); refusing to apply its adapters")


def load_base(stored: dict) -> nn.Module:
    """The base model a LoRA checkpoint references, after checking its sha256."""
    path = Path(stored["path"])
    if not path.exists():
        raise LatteError(f"the base model of this LoRA run is gone: {path}")
    check_base(stored, source_digest(path))
    return load_source(str(path)).model


def run_model(state: dict, use_ema: bool = True, merge: bool = True) -> nn.Module:
    """The network of a training checkpoint, in eval mode: its EMA weights (use_ema) or its raw ones, or for
    a LoRA run the verified base with those adapters applied (merged into the weights unless merge=False)."""
    key = "ema" if use_ema else "model"
    if "base" not in state:
        model = build_network(state["model_config"])
        load_exactly(model, state[key], f"the checkpoint's {key} weights do not match its model_config")
        return model.eval()
    model = load_base(state["base"])
    lora.add_adapters(model, state["lora"])
    lora.load_adapters(model, state[key])
    return (lora.merge_adapters(model) if merge else model).eval()
