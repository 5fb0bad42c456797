"""`latte data inspect`: what a dataset folder holds as Latte sees it.

    latte data inspect --dataset ucf101 --root /data/UCF-101 --filmstrip ucf.png
    latte data inspect --dataset captions --root /data/clips/captions.csv --num-frames 8

Prints the clips found, the classes, every skipped file with the reason, the source frame counts and
the shape of one clip, and writes a filmstrip (a row per sample, a column per frame) when asked.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from latte.cli_arguments import add_dataset_arguments, dataset_keywords
from latte.data import build_dataset
from latte.errors import LatteError
from latte.files import check_output_file
from latte.video_io import to_uint8, write_filmstrip_png


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("data", help="inspect a dataset", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser("inspect", help="clips, classes, skipped files, a filmstrip",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(inspect)
    inspect.add_argument("--filmstrip", default=None, metavar="PNG", help="write sample clips as one image")
    inspect.add_argument("--overwrite", action="store_true", help="replace an existing --filmstrip file")
    inspect.add_argument("--samples", type=int, default=4, metavar="N",
                         help="clips in the filmstrip, evenly spread (default 4)")
    inspect.add_argument("--show-skipped", type=int, default=50, metavar="N", help="list at most N skipped files (default 50)")
    return parser


def _relative(path: str, root) -> str:
    try:
        return str(Path(path).relative_to(root)) if root is not None else path
    except ValueError:
        return path


def describe(dataset, name: str, show_skipped: int = 50) -> list[str]:
    """The report lines of `latte data inspect`."""
    root = getattr(dataset, "root", None)
    o = dataset.options
    lines = [f"dataset {name}" + (f" at {root}" if root is not None else " (built in)"),
             f"clips: {len(dataset)} usable, {len(dataset.skipped)} skipped"]
    if dataset.class_names is not None:
        names = dataset.class_names
        shown = ", ".join(names if len(names) <= 8 else [*names[:4], "...", *names[-3:]])
        lines.append(f"classes: {len(names)} ({shown})")
        clips = getattr(dataset, "clips", None)
        if clips is not None:
            counts = np.bincount([c.label for c in clips], minlength=len(names))
            lines.append(f"clips per class: min {counts.min()}, max {counts.max()}")
    clips = getattr(dataset, "clips", None)
    if clips:
        frames = np.array([c.num_frames for c in clips])
        lines.append(f"frames per source clip: min {frames.min()}, median {int(np.median(frames))}, max {frames.max()}")
        if any(c.caption is not None for c in clips):
            lines.append(f"caption example: {clips[0].caption!r}")
    sample = dataset.load_clip(0)
    lines.append(f"a clip: {o.num_frames} frames x interval {o.frame_interval} = {o.span} source frames -> "
                 f"{tuple(sample['video'].shape)} (C, F, H, W)")
    if dataset.skipped:
        lines.append("skipped:")
        lines += [f"  {_relative(p, root)}: {reason}" for p, reason in dataset.skipped[:show_skipped]]
        if len(dataset.skipped) > show_skipped:
            lines.append(f"  ... {len(dataset.skipped) - show_skipped} more")
    return lines


def write_filmstrip(dataset, path: str, samples: int) -> Path:
    count = max(1, min(samples, len(dataset)))
    picks = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)})
    videos = np.stack([to_uint8(dataset.load_clip(i)["video"]) for i in picks])  # (N, F, H, W, 3)
    return write_filmstrip_png(path, videos)


def run(args) -> int:
    if args.filmstrip:
        if Path(args.filmstrip).suffix.lower() != ".png":
            raise LatteError(f"--filmstrip writes a PNG image: give a .png file, got {args.filmstrip}")
        check_output_file(args.filmstrip, "filmstrip", args.overwrite)
    if args.samples < 1:
        raise LatteError(f"--samples must be >= 1, got {args.samples}")
    quiet = logging.getLogger("latte.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the report lists the skipped files once, with their reasons
    try:
        dataset = build_dataset(args.dataset, args.root, train=False, **dataset_keywords(args))
    finally:
        quiet.setLevel(level)
    print("\n".join(describe(dataset, args.dataset, args.show_skipped)))
    if args.filmstrip:
        out = write_filmstrip(dataset, args.filmstrip, args.samples)
        print(f"filmstrip: {out} ({min(args.samples, len(dataset))} clips x {dataset.options.num_frames} frames)")
    return 0
