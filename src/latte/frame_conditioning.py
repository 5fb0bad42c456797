"""Frame conditioning at sampling time: image-to-video, continuation, interpolation and videos longer than
the model's window (issue 30; training's half is latte/train/frame_masks.py).

A request gives pixel frames (C, K, H, W) and their places in the video (`SampleRequest.given`,
`given_at`); they are encoded by the run's VAE (pixel runs take them as they are) and kept exactly by
the sampler (`latte.diffusion.samplers.sample(..., given=, given_mask=)`). A video of N frames longer
than the window W the model was trained on is generated window by window when the request sets an
`overlap` O: windows start every W - O frames, each takes the last O frames of the one before as given
frames (and the asked frames that fall in it), and the last window is shorter when N - O is not a
multiple of W - O. Windows are joined in latent space, so the overlap is not repeated.

Everything a request asks is checked here before any sampling work (`check_layout`, `check_trained`),
and files are read into frames at the run's size and channels (`read_image`, `read_context`; `read_given`
places an image, a clip to continue and an end image, for `latte sample` and the web demo alike).
"""
from __future__ import annotations

import hashlib
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latte.config import TrainSection
from latte.data.video import IMAGE_SUFFIXES, VideoReadError, frame_files, probe, read_frames, resize_center_crop
from latte.errors import LatteError, LatteWarning

# the frames of a window given (after check_layout: whole tubelets, one generated at least) -> the train.mask_*
# kinds that show a model those frames given: the kind of that very pattern, or random, which gives any; a lone
# first tubelet is also the shortest prefix and one end of `ends`
TAUGHT_BY = {"first": {"first", "prefix", "ends", "random"}, "prefix": {"prefix", "random"},
             "last": {"last", "ends", "random"}, "ends": {"ends", "random"}, "other": {"random"}}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601: RGB frames for a grey model


@dataclass(frozen=True)
class Layout:
    """Where a video's frames come from: `given` (N,) bool marks the asked frames; `windows` are
    (start, length) pairs covering frames 0..N-1, one pass when there is a single window."""

    frames: int
    given: torch.Tensor  # (N,) bool
    windows: tuple[tuple[int, int], ...]
    unit: int = 1  # frames per token (tubelet): given frames come in whole units

    def window_given(self):
        """(start, length, given (L,) bool) of each window in turn: its asked frames and the frames the windows
        before it made (the overlap), which it is given."""
        known = self.given.clone()  # (N,)
        for start, length in self.windows:
            yield start, length, known[start:start + length].clone()
            known[start:start + length] = True


def default_overlap(window: int, unit: int = 1) -> int:
    """Half the window, in whole tubelets of `unit` frames, at least one tubelet."""
    return max(unit, window // 2 // unit * unit)


def plan_windows(frames: int, window: int, overlap: int | None) -> tuple[tuple[int, int], ...]:
    """(start, length) of each window: one pass without an overlap or when the video fits in one window."""
    if overlap is None or frames <= window:
        return ((0, frames),)
    windows, start = [], 0
    while True:
        windows.append((start, min(window, frames - start)))
        if start + window >= frames:
            return tuple(windows)
        start += window - overlap


def check_layout(request, num_frames: int, unit: int) -> Layout:
    """The layout of a request for a model trained on `num_frames`-frame windows with tokens of `unit`
    frames (tubelets), or a one-line error: positions outside the video, an overlap that is not less than
    the window, the same frame given twice (-1 is N - 1), a mask that splits a tubelet, a window with nothing
    left to generate."""
    frames = request.num_frames or num_frames
    given = torch.zeros(frames, dtype=torch.bool)  # (N,)
    if request.given is not None:
        if request.given.ndim != 4 or request.given.shape[1] != len(request.given_at):
            raise LatteError(f"given frames {tuple(request.given.shape)} must be (C, K, H, W) with K = "
                             f"{len(request.given_at)}, one per position in given_at")
        for place in request.given_at:
            if not -frames <= place < frames:
                raise LatteError(f"given frame position {place} is outside a video of {frames} frames")
            if given[place]:  # -1 and N - 1 are one frame
                raise LatteError(f"given frame position {place} is frame {place % frames}, given twice: give each "
                                 "frame once")
            given[place] = True
    if request.overlap is not None:
        if not 1 <= request.overlap < num_frames:
            raise LatteError(f"--overlap must be in [1, {num_frames - 1}] (the model's window is {num_frames} "
                             f"frames), got {request.overlap}")
        if request.overlap % unit:
            raise LatteError(f"--overlap {request.overlap} splits a tubelet of {unit} frames: give a multiple of {unit}")
    layout = Layout(frames, given, plan_windows(frames, num_frames, request.overlap), unit)
    for start, length, window in layout.window_given():  # window (L,): given or generated before it
        if length % unit:
            raise LatteError(f"frames {start}..{start + length - 1} are not whole tubelets of {unit} frames "
                             f"(model.patch_embed tubelet): give --num-frames as a multiple of {unit}")
        if (window.view(-1, unit).any(1) != window.view(-1, unit).all(1)).any():  # (L / unit,) per tubelet
            raise LatteError(f"the given frames of frames {start}..{start + length - 1} split a tubelet of {unit} "
                             "frames (model.patch_embed tubelet): give whole tubelets")
        if window.all():
            raise LatteError(f"frames {start}..{start + length - 1} are all given: nothing left to generate")
    return layout


def pixel_frames(model_config, vae) -> tuple[int, tuple[int, int]]:
    """Channels and (H, W) of the frames a run's videos are made of: the model's own in pixel space, the
    VAE's input otherwise."""
    height, width = model_config.latent_hw
    if vae is None:
        return model_config.in_channels, (height, width)
    return vae.model.config.in_channels, (height * vae.downsample, width * vae.downsample)


def frame_layout(request, model_config, vae) -> Layout | None:
    """The checked layout of a request (check_layout), its given frames of the run's shape; None when it asks
    for no given frames and fits in one pass (sampling as without frame conditioning)."""
    if request.given is not None:
        channels, size = pixel_frames(model_config, vae)
        if request.given.shape[0] != channels or tuple(request.given.shape[2:]) != size:
            raise LatteError(f"given frames {tuple(request.given.shape)} must be ({channels}, K, {size[0]}, {size[1]}) "
                             "for this model: read them with latte.frame_conditioning.read_image / read_context")
    elif request.given_at:
        raise LatteError("given_at names frame positions but the request gives no frames")
    layout = check_layout(request, model_config.num_frames, model_config.temporal_stride)
    if request.given is None and len(layout.windows) == 1:
        return None
    return layout


def given_pattern(window: torch.Tensor, unit: int) -> str | None:
    """The key of TAUGHT_BY that a window's given frames (L,) bool of whole `unit`-frame tubelets form, or None
    when none is given."""
    units = window.view(-1, unit)[:, 0]  # (L / unit,)
    if not units.any():
        return None
    inner = units[1:-1].any()
    if units[0] and not inner and not units[-1]:
        return "first"
    if units[-1] and not inner:
        return "ends" if units[0] else "last"
    given = int(units.sum())
    return "prefix" if units[:given].all() else "other"


def learned(train: TrainSection, pattern: str) -> bool:
    """Whether a run's frame masks (train.mask_*) showed it the given-frame pattern `pattern` (TAUGHT_BY)."""
    return bool(train.trained_kinds() & TAUGHT_BY[pattern])


def check_trained(train: TrainSection, layout: Layout, force: bool) -> None:
    """Refuse frame conditioning that the checkpoint's training (train.mask_*) never taught, unless `force`: each
    window's given frames (asked, or the overlap with the window before) must form a pattern of a kind trained
    (TAUGHT_BY)."""
    if force or (not layout.given.any() and len(layout.windows) == 1):
        return
    trained = train.trained_kinds()
    if not trained:
        raise LatteError("this checkpoint was trained without frame masks (train.mask_* all 0): it cannot take "
                         "given frames (--image, --context, --end-image, long videos); pass --force to try anyway")
    names = {"first": "a given first frame", "prefix": "given first frames", "last": "a given last frame",
             "ends": "given first and last frames", "other": "given frames in other places"}
    for start, length, window in layout.window_given():
        pattern = given_pattern(window, layout.unit)
        if pattern is None or trained & TAUGHT_BY[pattern]:
            continue
        at = [start + i for i in window.nonzero().flatten().tolist()]
        raise LatteError(f"this checkpoint never learned {names[pattern]} (frame{'s' * (len(at) > 1)} "
                         f"{', '.join(map(str, at))} given in frames {start}..{start + length - 1}): it trained "
                         f"train.{mask_keys(trained)}, this needs one of {mask_keys(TAUGHT_BY[pattern])}; pass "
                         "--force to try anyway")


def mask_keys(kinds) -> str:
    """"mask_first, mask_ends" for {"ends", "first"}: the train.mask_* keys of some kinds, in config order."""
    return ", ".join(f"mask_{kind}" for kind in TrainSection.MASK_KINDS if kind in kinds)


def encode_given(request, layout: Layout, vae) -> torch.Tensor | None:
    """Latents (C, N, h, w) with the given frames at their places (zeros elsewhere), or None."""
    if request.given is None:
        return None
    frames = request.given.float()[None]  # (1, C, K, H, W) pixels in [-1, 1]
    latents = (frames if vae is None else vae.encode(frames.to(vae.device), sample=False))[0].cpu()  # (C', K, h, w)
    placed = latents.new_zeros((latents.shape[0], layout.frames, *latents.shape[2:]))  # (C', N, h, w)
    placed[:, [p % layout.frames for p in request.given_at]] = latents
    return placed


def sample_windows(denoise, noise, layout: Layout, given: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Latents (B, C, N, h, w) of `batch` videos, window by window: `denoise(noise, given, given_mask)` samples
    one window, `noise(length)` draws the next window's x_T (B, C, L, h, w); `given` (C, N, h, w) or None."""
    video = None
    for start, length, window in layout.window_given():  # window (L,): asked frames, and the overlap before
        x_t = noise(length)  # (B, C, L, h, w)
        if video is None:
            video = x_t.new_zeros((batch, x_t.shape[1], layout.frames, *x_t.shape[3:]))  # (B, C, N, h, w)
            if given is not None:
                video[:] = given.to(video)
        if window.any():
            mask = window[None].expand(batch, -1).clone()  # (B, L)
            x0 = denoise(x_t, video[:, :, start:start + length].clone(), mask)
        else:
            x0 = denoise(x_t, None, None)
        video[:, :, start:start + length] = x0
    return video


# -- reading the inputs --------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a frame folder's images in frame order (each name and contents)."""
    digest = hashlib.sha256()
    for file in frame_files(path) if path.is_dir() else [path]:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(np.array(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def _npz_frames(path: Path) -> torch.Tensor:
    """The first video of an .npz (key "videos" float (N, C, F, H, W) in [-1, 1], as `latte sample` and the web
    demo write), with a LatteWarning when it holds several."""
    try:
        data = np.load(path)  # a .npy under an .npz name loads as a bare array
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise LatteError(f"{path} is not an .npz archive (it holds one bare array): give an .npz written by "
                             "latte sample")
        with data:
            videos = data["videos"] if "videos" in data.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise LatteError(f"cannot read {path}: {exc}") from None
    if videos is None or videos.ndim != 5 or videos.shape[1] not in (1, 3):
        raise LatteError(f"{path} holds no 'videos' array (N, 1 or 3, F, H, W)")
    if len(videos) == 0:
        raise LatteError(f"{path} holds no videos")
    if len(videos) > 1:  # `latte sample --num-videos 4` and the page's several videos write one file of them all
        warnings.warn(f"{path} holds {len(videos)} videos: continuing the first", LatteWarning, stacklevel=2)
    return torch.from_numpy(videos[0]).float()  # (C, F, H, W)


def fit_frames(frames: torch.Tensor, channels: int, size: tuple[int, int], name: str) -> torch.Tensor:
    """(C, T, H, W) in [-1, 1] -> (channels, T, *size): RGB to grey by luma, grey repeated to RGB; another size
    is resized (short side, centre crop, as training data) with a LatteWarning."""
    if frames.shape[0] == 3 and channels == 1:
        frames = sum(w * c for w, c in zip(LUMA, frames))[None]  # (1, T, H, W)
    elif frames.shape[0] == 1 and channels == 3:
        frames = frames.expand(3, -1, -1, -1)
    elif frames.shape[0] != channels:
        raise LatteError(f"{name} has {frames.shape[0]} channels; the model makes {channels}-channel videos")
    if tuple(frames.shape[-2:]) != tuple(size):
        warnings.warn(f"{name} is {frames.shape[-1]}x{frames.shape[-2]}, resized to the model's {size[1]}x{size[0]}",
                      LatteWarning, stacklevel=2)
        frames = resize_center_crop(frames.permute(1, 0, 2, 3), size).permute(1, 0, 2, 3).clamp(-1, 1)
    return frames.contiguous()


def read_image(path, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """One frame (channels, 1, H, W) in [-1, 1] from an image file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            frames = _pixels(np.asarray(image.convert("RGB"))[None])
    except (OSError, Image.DecompressionBombError) as exc:  # the bomb error: PIL's pixel limit, not an OSError
        raise LatteError(f"cannot read image {path}: {exc}") from None
    return fit_frames(frames, channels, size, str(path))


def read_context(path, count: int, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """The last `count` frames (channels, count, H, W) in [-1, 1] of a video file (.mp4, .gif, ...), an .npz
    written by `latte sample` or the web demo (its first video, with a LatteWarning when it holds several), or a
    folder of frame images."""
    path = Path(path)
    if not path.exists():
        raise LatteError(f"context {path} not found")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise LatteError(f"context {path} is one image: give it as --image, or a clip as --context")
    try:
        frames = _npz_frames(path) if path.suffix.lower() == ".npz" else None  # (C, F, H, W)
        total = frames.shape[1] if frames is not None else probe(path).num_frames
        if total < count:
            raise LatteError(f"context {path} holds {total} frames, fewer than --context-frames {count}")
        if frames is None:
            frames = _pixels(read_frames(path, list(range(total - count, total))))  # (3, K, H, W)
    except VideoReadError as exc:
        raise LatteError(f"cannot read context {path}: {exc}") from None
    return fit_frames(frames[:, frames.shape[1] - count:], channels, size, str(path))


def default_context_frames(train: TrainSection, model_config) -> int:
    """K, the frames of a clip to continue given when not asked: the run's train.mask_prefix_frames, else half
    the window."""
    return train.mask_prefix_frames or default_overlap(model_config.num_frames, model_config.temporal_stride)


def read_given(model_config, vae, train: TrainSection, image=None, context=None, context_frames: int | None = None,
               end_image=None) -> tuple[torch.Tensor | None, tuple[int, ...], list[dict]]:
    """The frames an image (frame 0), a clip's last K frames (frames 0..K-1; K default_context_frames) and an
    end image (the last frame) give: (C, K, H, W) at the run's size and channels or None, their positions, and
    each input's {"flag", "path", "sha256", "frames"}; a one-line error for a bad one."""
    if image and context:
        raise LatteError("--image and --context both give the first frames: use one")
    if context_frames is not None and not context:
        raise LatteError("--context-frames applies with --context")
    if context_frames is not None and context_frames < 1:
        raise LatteError(f"--context-frames must be >= 1, got {context_frames}")
    channels, size = pixel_frames(model_config, vae)
    count = context_frames or default_context_frames(train, model_config)
    asked = [("--image", image, lambda p: read_image(p, channels, size), (0,)),
             ("--context", context, lambda p: read_context(p, count, channels, size), tuple(range(count))),
             ("--end-image", end_image, lambda p: read_image(p, channels, size), (-1,))]
    parts, places, inputs = [], (), []
    for flag, path, read, at in asked:
        if path:
            parts.append(read(path))  # (C, k, H, W)
            places += at
            inputs.append({"flag": flag, "path": str(Path(path).resolve()), "sha256": sha256_of(Path(path)),
                           "frames": list(at)})
    return (torch.cat(parts, dim=1) if parts else None), places, inputs
