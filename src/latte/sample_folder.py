"""Checks of `latte sample` before any work: argument ranges, where the output goes, and whose videos a
sample folder holds.

A sample folder (mass sampling for FVD) is resumable: a rerun fills in the missing videos. So every
video in it must come from the same checkpoint and settings; `sample-settings.json` records them at
the first run and a later run with other ones is refused, as `latte encode` refuses to extend a
cache of other settings.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from latte.checkpoint_files import resolve_checkpoint
from latte.errors import LatteError
from latte.files import FolderLock, atomic_write_text, check_output_file, check_output_folder

SETTINGS = "sample-settings.json"


def check_arguments(args) -> None:
    """Range of every numeric argument; the message names the flag and the valid range."""
    at_least_one = {"--num-videos": args.num_videos, "--steps": args.steps, "--num-frames": args.num_frames,
                    "--fps": args.fps, "--batch-size": args.batch_size}
    for flag, value in at_least_one.items():
        if value is not None and value < 1:
            raise LatteError(f"{flag} must be >= 1, got {value}")
    if args.cfg_scale is not None and not (math.isfinite(args.cfg_scale) and args.cfg_scale >= 0):
        raise LatteError(f"--cfg-scale must be a finite number >= 0 (1 = no guidance), got {args.cfg_scale}")
    if not math.isfinite(args.eta) or not 0.0 <= args.eta <= 1.0:
        raise LatteError(f"--eta must be in [0, 1], got {args.eta}")
    if args.seed < 0:
        raise LatteError(f"--seed must be >= 0, got {args.seed}")
    if args.class_label is not None and args.class_label < 0:
        raise LatteError(f"--class-label must be >= 0, got {args.class_label}")
    for flag, value in {"--context-frames": args.context_frames, "--overlap": args.overlap}.items():
        if value is not None and value < 1:
            raise LatteError(f"{flag} must be >= 1, got {value}")


def check_output(output: Path, folder_mode: bool, overwrite: bool = False) -> None:
    """The output can and may be written (latte.files' rule), checked before the model is loaded or
    anything is sampled; nothing is created yet. A folder is resumed, never replaced."""
    if folder_mode:
        check_output_folder(output, "output folder")
    else:
        check_output_file(output, "output", overwrite)


# Settings recorded since 2026-11-30: a folder written before lacks them, and its videos used these defaults.
# Precision, recorded since then too, is not here: it defaulted by device, so a folder without it accepts any.
LATER_KEYS = {"scheduler_options": None, "cache": None, "cache_options": None, "given": None, "overlap": None,
              "image_cfg_scale": 1.0}


def folder_settings(args, request, fps: int, inputs: list[dict] | None = None) -> dict:
    """What decides the videos of a sample folder (not how many, nor how they are batched); given frames by
    each input's flag, sha256 and frames (not its path)."""
    given = [{key: item[key] for key in ("flag", "sha256", "frames")} for item in inputs or []] or None
    checkpoint = resolve_checkpoint(args.checkpoint).resolve()
    return {"checkpoint": str(checkpoint), "checkpoint_size": checkpoint.stat().st_size, "ema": not args.no_ema,
            "seed": request.seed, "sampler": request.sampler, "steps": request.steps, "cfg_scale": request.cfg_scale,
            "eta": request.eta, "num_frames": request.num_frames, "class_label": request.class_label,
            "prompts": request.prompts, "negative_prompt": request.negative_prompt, "fps": fps,
            "scheduler_options": request.scheduler_options, "cache": request.cache, "cache_options": request.cache_options,
            "precision": request.precision, "given": given, "overlap": request.overlap,
            "image_cfg_scale": request.image_cfg_scale}


def claim_folder(output: Path, args, request, fps: int, inputs: list[dict] | None = None) -> FolderLock:
    """Lock the folder and check it holds nothing but this run's videos; returns the held lock."""
    lock = FolderLock(output, "sample").acquire()
    try:
        settings = folder_settings(args, request, fps, inputs)
        path = output / SETTINGS
        if path.is_file():
            try:
                previous = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError) as exc:
                raise LatteError(f"{path} is unreadable ({exc}): use another --output") from exc
            # a key the folder lacks was written before latte recorded it: those videos used its default
            diffs = [f"{k} {previous.get(k)!r} vs {v!r}" for k, v in settings.items()
                     if previous.get(k, LATER_KEYS.get(k, v)) != v]
            if diffs:
                raise LatteError(f"{output} holds videos of other settings ({'; '.join(diffs[:3])}): "
                                 "use another --output or the same arguments")
        else:
            videos = sorted(output.glob("*.mp4"))
            if videos:
                raise LatteError(f"{output} holds {len(videos)} videos of unknown settings (no {SETTINGS}): "
                                 "use another --output")
            atomic_write_text(path, json.dumps(settings, indent=1) + "\n", "sample settings")
    except BaseException:
        lock.release()
        raise
    return lock
