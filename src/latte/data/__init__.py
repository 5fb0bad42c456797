"""Training data: clip datasets read from video files or frame folders, Moving MNIST, and latent caches.

    dataset = build_dataset("ucf101", "/data/UCF-101", num_frames=16, frame_interval=3, resolution=256)
    item = dataset[0]  # {"video": (C, F, H, W) in [-1, 1], "label": int}
"""
from __future__ import annotations

from pathlib import Path

from latte.data.builtin import MovingMNISTClips, moving_mnist_options
from latte.data.datasets import LAYOUTS, OPTION_NAMES, Clip, ClipDataset, ClipOptions
from latte.errors import LatteError

DATASET_NAMES = (*LAYOUTS, "moving-mnist")
# Per-dataset defaults that differ from ClipOptions' (the built-in dataset is small and has no stride).
DEFAULTS = {"moving-mnist": {"resolution": 32, "frame_interval": 1}}


def dataset_options(name: str) -> tuple[str, ...]:
    """Keyword options build_dataset accepts for `name`."""
    if name == "moving-mnist":
        return OPTION_NAMES + moving_mnist_options()
    return OPTION_NAMES + LAYOUTS[name].extra_options


def build_dataset(name: str, root: str | Path | None = None, **options):
    """Dataset `name` (one of DATASET_NAMES) below `root` with the common clip options (see ClipOptions)
    and the dataset's own (ucf101: split_file; moving-mnist: MovingMNIST's arguments)."""
    key = name.lower().replace("_", "-")
    if key not in DATASET_NAMES:
        raise LatteError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    allowed = dataset_options(key)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise LatteError(f"unknown option(s) {', '.join(unknown)} for dataset {key}; valid: {', '.join(allowed)}")
    common = {**DEFAULTS.get(key, {}), **{k: v for k, v in options.items() if k in OPTION_NAMES and v is not None}}
    extra = {k: v for k, v in options.items() if k not in OPTION_NAMES}
    clip_options = ClipOptions(**common)
    if key == "moving-mnist":
        return MovingMNISTClips(clip_options, **extra)
    if root is None:
        raise LatteError(f"dataset {key} needs a root folder (--root / data.root)")
    return LAYOUTS[key](root, clip_options, **extra)


__all__ = ["build_dataset", "dataset_options", "DATASET_NAMES", "ClipOptions", "ClipDataset", "Clip"]
