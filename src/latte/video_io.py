"""Writing and reading videos: H.264 mp4 (yuv420p, plays everywhere), GIF, PNG filmstrip grids, npz.

Every file is written into a temporary name beside its target and renamed, so a reader never
sees half a file.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from latte.errors import LatteError
from latte.files import atomic_path

SUFFIXES = (".mp4", ".gif", ".png", ".npz")
MIN_SIDE = 64  # smaller videos are enlarged (nearest neighbour, integer factor) so players show them


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(C, F, H, W) float in [-1, 1] -> (F, H, W, 3) uint8 (grey replicated to RGB)."""
    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise LatteError(f"expected a video (C, F, H, W) with 1 or 3 channels, got {tuple(video.shape)}")
    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.expand(3, -1, -1, -1) if frames.shape[0] == 1 else frames
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def display_frames(frames: np.ndarray) -> np.ndarray:
    """Enlarge tiny frames by an integer factor and pad to even sizes (yuv420p needs them)."""
    _, height, width, _ = frames.shape
    factor = max(1, -(-MIN_SIDE // min(height, width)))
    if factor > 1:
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return frames


def write_mp4(path, frames: np.ndarray, fps: int = 8) -> Path:
    """frames (F, H, W, 3) uint8 -> H.264 mp4, yuv420p."""
    frames = display_frames(frames)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return Path(path)


def write_gif(path, frames: np.ndarray, fps: int = 8) -> Path:
    images = [Image.fromarray(f) for f in display_frames(frames)]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return Path(path)


MARK_COLOUR = (255, 160, 0)  # the bar under given frames in a filmstrip


def write_filmstrip_png(path, videos: np.ndarray, gap: int = 2, marked: Sequence[int] = ()) -> Path:
    """videos (N, F, H, W, 3) uint8 -> one grid: a row per video, a column per frame; the frames at
    `marked` (indices, negative from the end: the given frames of frame conditioning) get an orange bar
    under them, in the gap below each row."""
    n, f, h, w, _ = videos.shape
    grid = np.full((n * (h + gap) - (0 if marked else gap), f * (w + gap) - gap, 3), 40, np.uint8)
    columns = sorted({j % f for j in marked})
    for i in range(n):
        for j in range(f):
            grid[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = videos[i, j]
        for j in columns:
            grid[i * (h + gap) + h:(i + 1) * (h + gap), j * (w + gap):j * (w + gap) + w] = MARK_COLOUR
    scale = max(1, -(-MIN_SIDE // min(h, w)))
    image = Image.fromarray(grid)
    if scale > 1:
        image = image.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def tile_videos(videos: np.ndarray, gap: int = 2) -> np.ndarray:
    """videos (N, F, H, W, 3) uint8 -> one video (F, H', W', 3) showing them in a near-square grid,
    row by row (video i at row i // cols, column i % cols)."""
    n, f, h, w, _ = videos.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((f, rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 40, np.uint8)
    for i in range(n):
        top, left = (i // cols) * (h + gap), (i % cols) * (w + gap)
        grid[:, top:top + h, left:left + w] = videos[i]
    return grid


def save_videos(path, videos: torch.Tensor, fps: int = 8, separate: bool = False,
                given_at: Sequence[int] = ()) -> list[Path]:
    """videos (N, C, F, H, W) in [-1, 1] into the file `path` names; the suffix picks the format:
    .mp4 / .gif one video (several videos tiled in a grid, or one file each, name_000.mp4 ..., when
    `separate`), .png one filmstrip of all (the frames at `given_at`, the given ones, marked), .npz the
    raw arrays."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise LatteError(f"unknown video format {path.suffix or '(none)'!r}; use one of {', '.join(SUFFIXES)}")
    frames = np.stack([to_uint8(v) for v in videos])  # (N, F, H, W, 3)
    if path.suffix == ".png":
        return [write_filmstrip_png(path, frames, marked=given_at)]
    if path.suffix == ".npz":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, videos=videos.detach().float().cpu().numpy(), uint8=frames)
        return [path]
    writer = write_mp4 if path.suffix == ".mp4" else write_gif
    if len(frames) == 1 or not separate:
        return [writer(path, frames[0] if len(frames) == 1 else tile_videos(frames), fps)]
    return [writer(path.with_name(f"{path.stem}_{i:03d}{path.suffix}"), f, fps) for i, f in enumerate(frames)]


def read_video(path) -> np.ndarray:
    """All frames of a video file: (F, H, W, 3) uint8."""
    try:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    except (av.error.FFmpegError, ValueError) as exc:
        raise LatteError(f"cannot decode video {path}: {exc}") from exc
