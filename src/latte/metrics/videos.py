"""Reading evaluation clips: video files or frame folders decoded to uint8 (T, H, W, 3), only the needed frames.

Formats: video files (.mp4 .avi .mov .webm .mkv, decoded with PyAV), frame folders (a directory holding
.png/.jpg/... images, sorted by name), and .npz files with key "videos" float (N, C, F, H, W) in [-1, 1]
(what `latte sample --output x.npz` writes). Every clip is brought to the protocol resolution by
resizing its short side and cropping the centre, as Latte's data pipeline does for training.
"""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latte.errors import LatteError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def frame_files(folder: Path) -> list[Path]:
    """Images directly inside `folder`, sorted by name (frame order)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p))


def find_videos(root: str | os.PathLike, allow_npz: bool = False) -> list[Path]:
    """Video files under `root` (recursive), else frame folders (directories that directly hold images).

    With `allow_npz`, .npz files are returned too (generated sets). Sorted, so the order is reproducible.
    """
    root = Path(root).expanduser()
    if root.is_file():
        suffixes = VIDEO_SUFFIXES + ((".npz",) if allow_npz else ())
        if root.suffix.lower() in suffixes:
            return [root]
        raise LatteError(f"{root} is not a video file ({', '.join(suffixes)}) or a folder of them")
    if not root.is_dir():
        raise LatteError(f"{root} does not exist: give a folder of videos or frame folders")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    suffixes = VIDEO_SUFFIXES + ((".npz",) if allow_npz else ())
    videos = [p for p in files if p.suffix.lower() in suffixes]
    if videos:
        return videos
    folders = sorted({p.parent for p in files if _is_image(p)})
    if folders:
        return folders
    raise LatteError(f"no videos ({', '.join(suffixes)}) or frame folders found under {root}")


def count_frames(path: Path) -> int:
    """Frames in a video file or frame folder (container metadata first, decoding only when it is missing)."""
    if path.is_dir():
        return len(frame_files(path))
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames > 0:
                return int(stream.frames)
            return sum(1 for _ in container.decode(stream))
    except (av.error.FFmpegError, IndexError) as exc:
        raise LatteError(f"cannot read video {path}: {exc}") from None


def read_frames(path: Path, indices: list[int]) -> np.ndarray:
    """Frames `indices` (ascending or not, repeats allowed) of a video file or frame folder: uint8 (len, H, W, 3)."""
    wanted = sorted(set(indices))
    frames: dict[int, np.ndarray] = {}
    if path.is_dir():
        files = frame_files(path)
        for i in wanted:
            if i >= len(files):
                break
            with Image.open(files[i]) as image:
                frames[i] = np.asarray(image.convert("RGB"))
    else:
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                targets = set(wanted)
                for i, frame in enumerate(container.decode(stream)):
                    if i in targets:
                        frames[i] = frame.to_ndarray(format="rgb24")
                    if i >= wanted[-1]:
                        break  # decode no further than the last needed frame
        except av.error.FFmpegError as exc:
            raise LatteError(f"cannot decode video {path}: {exc}") from None
    missing = [i for i in wanted if i not in frames]
    if missing:
        raise LatteError(f"{path} has no frame {missing[0]} (it holds {len(frames) and max(frames) + 1} frames)")
    return np.stack([frames[i] for i in indices])


def resize_center_crop(frames: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, R, R, 3): short side to R (bilinear, antialiased), centre crop."""
    t, h, w, _ = frames.shape
    if (h, w) == (resolution, resolution):
        return frames
    scale = resolution / min(h, w)
    new_h, new_w = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    x = x[:, :, top:top + resolution, left:left + resolution]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (T, R, R, 3)


def to_uint8(videos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float videos in [-1, 1], (N, C, F, H, W) -> uint8 (N, F, H, W, 3), rounded as when saving an mp4;
    grayscale (C = 1) is repeated to RGB, as a grayscale mp4 decodes."""
    x = torch.as_tensor(videos, dtype=torch.float32)
    if x.ndim != 5 or x.shape[1] not in (1, 3):
        raise LatteError(f"videos must be float (N, 1 or 3, F, H, W) in [-1, 1], got shape {tuple(x.shape)}")
    x = x.expand(-1, 3, -1, -1, -1)
    x = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).contiguous()  # (N, F, H, W, C)


def load_npz_videos(path: Path) -> torch.Tensor:
    """uint8 (N, F, H, W, 3) from an .npz with key "videos" float (N, C, F, H, W) in [-1, 1]."""
    with np.load(path) as data:
        if "videos" not in data:
            raise LatteError(f"{path} has no 'videos' array (keys: {', '.join(data.files)}): expected float (N, C, F, H, W)")
        return to_uint8(data["videos"])
