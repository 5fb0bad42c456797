"""Checkpoint files: atomic writes, the latest one found automatically, the last K kept.

A checkpoint is a dict: model, ema, optimizer, step, samples_seen, config (the full run config),
model_config, dataset (classes, channels), rng (torch, numpy, python, the noise generator).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from latte.errors import LatteError

PATTERN = re.compile(r"step_(\d+)\.pt$")


def atomic_save(obj, path: Path) -> None:
    """torch.save into a temp file beside `path`, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def checkpoint_dir(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir) -> list[Path]:
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict, output_dir, keep: int) -> Path:
    path = checkpoint_dir(output_dir) / f"step_{state['step']:07d}.pt"
    atomic_save(state, path)
    for old in list_checkpoints(output_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path.parent if path.name == "checkpoints" else path)
        if not found:
            raise LatteError(f"no checkpoint in {path} (expected {checkpoint_dir(path)}/step_*.pt)")
        return found[-1]
    if not path.is_file():
        raise LatteError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path) -> dict:
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LatteError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if not isinstance(state, dict) or "model_config" not in state or "config" not in state:
        raise LatteError(f"{path} is not a latte training checkpoint (for official weights use `latte convert`)")
    from latte.models import upgrade_state_dict

    for key in ("model", "ema"):  # text runs saved before the backbones were one
        if isinstance(state.get(key), dict):
            state[key] = upgrade_state_dict(state[key])
    state["path"] = str(path)
    return state
