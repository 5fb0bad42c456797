"""Checkpoint files of a run: atomic writes, the latest one found automatically, the last K kept
(written by training, read by training's resume and by inference).

A checkpoint is a dict: model, ema, optimizer, step, samples_seen, config (the full run config),
model_config, dataset (classes, channels), rng (torch, numpy, python, the noise generator).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from latte.errors import LatteError
from latte.files import (
    DiskFullError,
    atomic_torch_save,
    atomic_write_text,
    record_dependency,
    recorded_dependency,
    remove_stale_temps,
)
from latte.models import upgrade_state_dict

PATTERN = re.compile(r"step_(\d+)\.pt$")


def atomic_save(obj, path: Path) -> None:
    """torch.save into a temp file beside `path`, then rename: readers never see a partial file."""
    atomic_torch_save(obj, path)


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
    try:
        atomic_save(state, path)
    except DiskFullError as exc:
        good = list_checkpoints(output_dir)
        kept = f"last good checkpoint: {good[-1]}" if good else "no checkpoint was written"
        raise DiskFullError(f"{exc}; training stopped ({kept})") from exc
    if state.get("base"):  # a LoRA checkpoint: no latte command writes over its base while this run exists
        record_dependency(state["base"]["path"], state["base"]["sha256"], output_dir)
    for old in list_checkpoints(output_dir)[:-keep]:
        if recorded_dependency(old) is None:  # a LoRA run's base stays, whatever keep_checkpoints says
            old.unlink(missing_ok=True)
    return path


def tidy_run_folder(output_dir, step: int) -> list[Path]:
    """After a crash, before training resumes at `step`: delete the temp files of interrupted writes and
    the metrics.jsonl lines past `step` (steps the killed run logged after its last checkpoint, which
    the resumed run logs again), so the folder reads like an uninterrupted run's. Returns what was removed."""
    output = Path(output_dir)
    removed = [p for folder in (output, checkpoint_dir(output), output / "samples") for p in remove_stale_temps(folder)]
    metrics = output / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # a line cut by the kill
                pass
        if len(kept) != len(lines):
            atomic_write_text(metrics, "".join(kept), "metrics log")
    return removed


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
        raise LatteError(f"cannot read checkpoint {path} (cut short, or not a torch file?): {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict) or "model_config" not in state or "config" not in state:
        raise LatteError(f"{path} is not a latte training checkpoint (for official weights use `latte convert`)")
    for key in ("model", "ema"):  # text runs saved before the backbones were one
        if isinstance(state.get(key), dict):
            state[key] = upgrade_state_dict(state[key])
    state["path"] = str(path)
    return state
