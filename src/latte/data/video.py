"""Reading clips: video files (PyAV, only the needed frames) and frame folders, plus the spatial transforms.

Video files are probed from their headers (frame count from the stream metadata; packets are counted,
not decoded, when the container has none). Reading seeks to the key frame before the first wanted
frame and stops after the last one, so a 16-frame clip of a long video costs about one GOP to decode.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class VideoReadError(Exception):
    """A file or frame folder that cannot be probed or decoded (the message names it)."""


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def natural_key(path: Path | str) -> tuple:
    """Sort key ordering `frame2.png` before `frame10.png`: digit runs compare as numbers."""
    name = Path(path).name
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower())
                 for part in re.split(r"(\d+)", name) if part)


def frame_files(folder: Path | str) -> list[Path]:
    """Images directly inside `folder`, in frame order (by the numbers in their names)."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=natural_key)


def find_video_files(root: Path) -> list[Path]:
    """Video files anywhere below `root`, sorted by path."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def find_frame_folders(root: Path) -> list[Path]:
    """Folders below `root` (or `root` itself) that directly hold images: one clip each, sorted by path."""
    folders = {p.parent for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    return sorted(folders)


@dataclass(frozen=True)
class VideoProbe:
    num_frames: int
    height: int
    width: int
    fps: float | None


def probe(path: Path | str) -> VideoProbe:
    """Frame count and size of a video file or frame folder, decoding at most the first frame.

    Raises VideoReadError for a file FFmpeg cannot open, one without a video stream or whose first frame
    does not decode (a valid header over broken data), or a folder without images.
    """
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise VideoReadError("no frame images in the folder")
        try:
            with Image.open(files[0]) as image:
                width, height = image.size
        except OSError as exc:
            raise VideoReadError(f"cannot read frame {files[0].name}: {exc}") from None
        return VideoProbe(len(files), height, width, None)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError("no video stream")
            stream = container.streams.video[0]
            if next(iter(container.decode(stream)), None) is None:
                raise VideoReadError("no decodable frames")
            count = int(stream.frames or 0)
            if count <= 0:  # no count in the header (webm, mkv, some avi): count packets, no decoding
                container.seek(0)
                count = sum(1 for packet in container.demux(stream) if packet.size > 0)
            rate = stream.average_rate or stream.guessed_rate
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"cannot decode: {exc.strerror or exc}") from None
    if count <= 0 or width <= 0 or height <= 0:
        raise VideoReadError("no decodable frames")
    return VideoProbe(count, height, width, float(rate) if rate else None)


def read_frames(path: Path | str, indices: list[int]) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of a video file or frame folder: uint8 (T, H, W, 3).

    Indices past the true end (header counts can be a frame or two high) repeat the last frame decoded.
    """
    path = Path(path)
    if not indices:
        raise ValueError("no frame indices")
    wanted = sorted(set(indices))
    if path.is_dir():
        frames = _read_folder(path, wanted)
    else:
        frames = _read_video(path, wanted)
    decoded = sorted(frames)
    out = []
    for i in indices:
        if i not in frames:  # past the end: the last frame before it
            before = [d for d in decoded if d <= i]
            if not before:
                raise VideoReadError(f"{path}: frame {i} could not be decoded")
            frames[i] = frames[before[-1]]
        out.append(frames[i])
    return np.stack(out)


def _read_folder(folder: Path, wanted: list[int]) -> dict[int, np.ndarray]:
    files = frame_files(folder)
    frames = {}
    for i in wanted:
        if i >= len(files):
            break
        try:
            with Image.open(files[i]) as image:
                frames[i] = np.asarray(image.convert("RGB"))
        except OSError as exc:
            raise VideoReadError(f"{files[i]}: cannot read image: {exc}") from None
    return frames


def _read_video(path: Path, wanted: list[int]) -> dict[int, np.ndarray]:
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = _decode_after_seek(container, stream, wanted) if wanted[0] > 0 else None
            if frames is None:  # no seek needed, or timestamps unusable: decode from the start, counting
                container.seek(0)
                frames, targets, last = {}, set(wanted), wanted[-1]
                i, frame = -1, None
                for i, frame in enumerate(container.decode(stream)):
                    if i in targets:
                        frames[i] = frame.to_ndarray(format="rgb24")
                    if i >= last:
                        break
                if frame is not None and i < last and i not in frames:  # ended early: keep the final frame
                    frames[i] = frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"{path}: cannot decode: {exc.strerror or exc}") from None
    return frames


def _decode_after_seek(container, stream, wanted: list[int]) -> dict[int, np.ndarray] | None:
    """Seek to the key frame at or before wanted[0] and decode up to wanted[-1]; frame index = time * fps.

    None when the stream lacks the timestamps or rate this needs, or the seek landed past wanted[0].
    """
    rate, time_base = stream.average_rate, stream.time_base
    if not rate or not time_base:
        return None
    origin = stream.start_time or 0
    target = origin + int(math.floor(wanted[0] / (rate * time_base)))
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        return None
    frames, targets, last = {}, set(wanted), wanted[-1]
    i, frame = -1, None
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        previous, i = i, int(round(float((frame.pts - origin) * time_base * rate)))
        if previous < 0 and i > wanted[0]:
            return None
        if i in targets:
            frames[i] = frame.to_ndarray(format="rgb24")
        if i >= last:
            break
    if frame is None:
        return None
    if i < last and i not in frames:  # ended early: keep the final frame
        frames[i] = frame.to_ndarray(format="rgb24")
    return frames


# -- spatial transforms on (T, C, H, W) float tensors ----------------------------------------------------

def as_size(resolution) -> tuple[int, int]:
    """256 -> (256, 256); (H, W) or [H, W] or "HxW" -> (H, W)."""
    if isinstance(resolution, str):
        parts = resolution.lower().split("x")
        resolution = int(parts[0]) if len(parts) == 1 else tuple(int(p) for p in parts)
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    size = tuple(int(r) for r in resolution)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"resolution must be a positive int or (H, W), got {resolution!r}")
    return size


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


def resize_center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale so the frame covers `size` (short side for square outputs), then crop the centre."""
    h, w = x.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    scaled = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    return _center_crop(_resize(x, scaled), size)


def center_crop_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the largest centred region with the aspect of `size`, then scale it to `size`."""
    h, w = x.shape[-2:]
    scale = min(h / size[0], w / size[1])
    region = (min(h, round(size[0] * scale)), min(w, round(size[1] * scale)))
    return _resize(_center_crop(x, region), size)


SPATIAL = {"resize_crop": resize_center_crop, "crop_resize": center_crop_resize}


def frames_to_clip(frames: np.ndarray, size: tuple[int, int], spatial: str = "resize_crop",
                   flip: bool = False) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (C, T, H', W') in [-1, 1], resized/cropped to `size`, optionally mirrored."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, C, H, W) in [0, 255]
    x = SPATIAL[spatial](x, size)
    if flip:
        x = x.flip(-1)
    x = (x / 127.5 - 1.0).clamp_(-1.0, 1.0)
    return x.permute(1, 0, 2, 3).contiguous()  # (C, T, H, W)


__all__ = ["VIDEO_SUFFIXES", "IMAGE_SUFFIXES", "VideoReadError", "VideoProbe", "probe", "read_frames",
           "frame_files", "find_video_files", "find_frame_folders", "natural_key", "as_size",
           "resize_center_crop", "center_crop_resize", "frames_to_clip"]
