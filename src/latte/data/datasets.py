"""Clip datasets: the layouts of the Latte paper's data sets, generic folders and caption manifests.

Every dataset yields dicts: "video" float (C, F, H, W) in [-1, 1], "label" (class data sets), "caption"
(caption data sets) and, for image-video joint training (paper Sec. 3.3), "images" (C, N, H, W): one
frame from each of N other random clips, with "image_labels" (N,) when there are classes and
"image_captions" (N strings) when there are captions.

Randomness (temporal crop start, flip, image frames) comes from torch's global generator, which
DataLoader seeds per worker; `dataset[(index, draw)]` instead draws from a generator seeded by
(seed, index, draw): training's sampler yields such keys (draw = the item's position in the run), so
a run gets the same clips with any worker count and after any resume.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from latte.data.manifest import read_manifest
from latte.data.video import (
    VideoReadError,
    as_size,
    find_frame_folders,
    find_video_files,
    frames_to_clip,
    is_video_file,
    probe,
    read_frames,
)
from latte.errors import LatteError

log = logging.getLogger("latte.data")


@dataclass
class ClipOptions:
    """Options every dataset takes (build_dataset's keyword arguments)."""

    num_frames: int = 16
    frame_interval: int = 3  # stride between the frames of a clip
    resolution: int | tuple[int, int] = 256
    flip: bool | None = None  # random horizontal flip when training; None: the dataset's default
    images_per_clip: int = 0  # extra single frames from other clips (image-video joint training)
    train: bool = True  # False: first temporal crop, centre crop, no flip, fixed image frames
    seed: int = 0  # seeds keyed access dataset[(index, draw)] and the image frames of train=False

    def __post_init__(self) -> None:
        for name in ("num_frames", "frame_interval"):
            if int(getattr(self, name)) < 1:
                raise LatteError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.images_per_clip) < 0:
            raise LatteError(f"images_per_clip must be >= 0, got {self.images_per_clip}")
        try:
            self.resolution = as_size(self.resolution)
        except (TypeError, ValueError):
            raise LatteError(f"resolution must be an int or (H, W), got {self.resolution!r}") from None

    @property
    def span(self) -> int:
        """Source frames one clip covers: (num_frames - 1) * frame_interval + 1."""
        return (self.num_frames - 1) * self.frame_interval + 1


OPTION_NAMES = tuple(f.name for f in fields(ClipOptions))


class UnreadableClip(LatteError):
    """A clip whose frames do not decode (found after the scan, which decodes only the first frame)."""

    def __init__(self, dataset: str, path: str, reason: str):
        super().__init__(f"{dataset}: {reason}" if path in reason else f"{dataset}: {path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Clip:
    path: str
    num_frames: int  # frames in the source video / folder
    label: int | None = None
    caption: str | None = None


def keyed_generator(seed: int, index: int, draw: int) -> torch.Generator:
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, index, draw & 0xFFFFFFFF]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform in [0, high)."""
    return int(torch.randint(high, (1,), generator=generator).item())


def other_clip(index: int, length: int, generator: torch.Generator | None) -> int:
    """A uniform random clip index other than `index` (image frames of joint training); 0 with one clip."""
    other = randint(length - 1, generator) if length > 1 else 0
    return other + 1 if length > 1 and other >= index else other


class ClipDataset(Dataset):
    """Clips read from files below `root`; subclasses say where the clips are (`discover`)."""

    name = "folder"
    accepts_keys = True  # dataset[(index, draw)]: randomness seeded by (seed, index, draw)
    default_flip = False
    spatial = "resize_crop"  # or "crop_resize" (see latte.data.video)
    extra_options: tuple[str, ...] = ()

    def __init__(self, root: str | Path, options: ClipOptions, **extra):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise LatteError(f"{self.name} root {self.root} does not exist")
        if self.root.is_file() and self.name != "captions":
            raise LatteError(f"{self.name} root {self.root} is a file: give the dataset's folder")
        self.options = options
        self.size = options.resolution
        self.flip = self.default_flip if options.flip is None else bool(options.flip)
        self.class_names: list[str] | None = None
        self.broken: set[str] = set()  # files found unreadable after the scan (this process)
        candidates, self.skipped = self.discover(**extra)
        self.clips = self._scan(candidates)
        if not self.clips:
            raise LatteError(f"{self.name}: no usable clip of {options.num_frames} frames x interval "
                             f"{options.frame_interval} under {self.root} ({len(self.skipped)} skipped)")

    # -- layout ---------------------------------------------------------------------------------------
    def discover(self, **extra) -> tuple[list[Clip], list[tuple[str, str]]]:
        """Candidate clips (num_frames still 0) and (path, reason) for entries already rejected."""
        return [Clip(str(p), 0) for p in find_video_files(self.root) + find_frame_folders(self.root)], []

    def _scan(self, candidates: list[Clip]) -> list[Clip]:
        for path, reason in self.skipped:
            log.warning("skipping %s: %s", path, reason)
        span, clips = self.options.span, []
        for clip in tqdm(candidates, desc=f"scanning {self.name}", unit="file", disable=len(candidates) < 200,
                         leave=False):
            try:
                count = probe(clip.path).num_frames
            except VideoReadError as exc:
                self._skip(clip.path, str(exc))
                continue
            if count < span:
                self._skip(clip.path, f"too short: {count} frames, a clip spans {span}")
                continue
            clips.append(Clip(clip.path, count, clip.label, clip.caption))
        return clips

    def _skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))
        log.warning("skipping %s: %s", path, reason)

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    # -- items ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """The item of clip `index`; a file found unreadable now (the scan only decodes its first frame) is
        skipped with one warning, and the next readable clip takes its place, so the run goes on and the
        replacement is the same whatever the worker count."""
        index, draw = self._key(key)
        for _ in range(len(self)):
            if self.clips[index].path not in self.broken:
                try:
                    return self._item(index, None if draw is None else keyed_generator(self.options.seed, index, draw))
                except UnreadableClip as exc:
                    self._broke(exc)
            index = (index + 1) % len(self)
        raise LatteError(f"{self.name}: no readable clip left under {self.root}")

    def _broke(self, exc: UnreadableClip) -> None:
        self.broken.add(exc.path)
        self.skipped.append((exc.path, exc.reason))
        log.warning("skipping %s: %s (%d file(s) found unreadable while training)", exc.path, exc.reason,
                    len(self.broken))

    def _item(self, index: int, generator: torch.Generator | None) -> dict:
        o = self.options
        clip = self.clips[index]
        if o.train:
            start = randint(clip.num_frames - o.span + 1, generator)
            flip = self.flip and randint(2, generator) == 1
        else:
            start, flip = 0, False
        item = self.load_clip(index, start, flip)
        if o.images_per_clip:
            item.update(self._images(index, generator if o.train else keyed_generator(o.seed, index, -1)))
        return item

    def _key(self, key) -> tuple[int, int | None]:
        index, draw = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), None)
        if not -len(self) <= index < len(self):
            raise IndexError(f"clip {index} out of range ({len(self)} clips)")
        return index % len(self), draw

    def load_clip(self, index: int, start: int = 0, flip: bool = False) -> dict:
        """Clip `index` from source frame `start` (every frame_interval-th frame), centre-cropped."""
        o, clip = self.options, self.clips[index]
        indices = [start + k * o.frame_interval for k in range(o.num_frames)]
        try:
            frames = read_frames(clip.path, indices)  # (F, H, W, 3) uint8
        except VideoReadError as exc:
            raise UnreadableClip(self.name, clip.path, str(exc)) from None
        item = {"video": frames_to_clip(frames, self.size, self.spatial, flip)}  # (C, F, H, W)
        if clip.label is not None:
            item["label"] = clip.label
        if clip.caption is not None:
            item["caption"] = clip.caption
        return item

    def clip_starts(self, index: int, count: int) -> list[int]:
        """`count` temporal crop starts spread evenly over clip `index` (the first is 0), for caching."""
        room = self.clips[index].num_frames - self.options.span
        if count <= 1 or room <= 0:
            return [0]
        return sorted({round(room * k / (count - 1)) for k in range(count)})

    def _images(self, index: int, generator: torch.Generator | None) -> dict:
        """One random frame from each of images_per_clip other random clips (paper's image-video joint training)."""
        frames, labels, captions = [], [], []
        for _ in range(100 * self.options.images_per_clip):
            if len(frames) == self.options.images_per_clip:
                break
            other = other_clip(index, len(self), generator)
            clip = self.clips[other]
            t = randint(clip.num_frames, generator)
            flip = self.options.train and self.flip and randint(2, generator) == 1
            if clip.path in self.broken:
                continue  # drawn again from the same generator: the same choice on any worker
            try:
                pixels = read_frames(clip.path, [t])  # (1, H, W, 3)
            except VideoReadError as exc:
                self._broke(UnreadableClip(self.name, clip.path, str(exc)))
                continue
            frames.append(frames_to_clip(pixels, self.size, self.spatial, flip))  # (C, 1, H, W)
            labels.append(clip.label)
            captions.append(clip.caption)
        if len(frames) < self.options.images_per_clip:
            raise LatteError(f"{self.name}: too few readable clips for {self.options.images_per_clip} image frames")
        out = {"images": torch.cat(frames, dim=1)}  # (C, N, H, W)
        if self.class_names is not None:
            out["image_labels"] = torch.tensor(labels, dtype=torch.long)
        if None not in captions:
            out["image_captions"] = captions  # text-to-video: each image frame with its own clip's caption
        return out


class FaceForensics(ClipDataset):
    """Video files anywhere below root; short side resized, centre crop, random flip."""

    name = "faceforensics"
    default_flip = True

    def discover(self):
        return [Clip(str(p), 0) for p in find_video_files(self.root)], []


class SkyTimelapse(ClipDataset):
    """One folder of frame images per clip (frames ordered by the number in their names); centre crop, then resize."""

    name = "skytimelapse"
    spatial = "crop_resize"

    def discover(self):
        return [Clip(str(p), 0) for p in find_frame_folders(self.root)], []


class Taichi(SkyTimelapse):
    """Taichi-HD: one folder of frames per clip; short side resized, centre crop, random flip."""

    name = "taichi"
    default_flip = True
    spatial = "resize_crop"


class UCF101(ClipDataset):
    """root/<ClassName>/*.avi; class index = position in the sorted class names; optional official split list."""

    name = "ucf101"
    default_flip = True
    extra_options = ("split_file",)

    def discover(self, split_file: str | None = None):
        self.class_names = sorted(d.name for d in self.root.iterdir()
                                  if d.is_dir() and any(is_video_file(f) for f in d.iterdir()))
        if not self.class_names:
            raise LatteError(f"ucf101: no class folders with videos under {self.root} (expected ROOT/<Class>/*.avi)")
        index = {name: i for i, name in enumerate(self.class_names)}
        if split_file is None:
            return [Clip(str(p), 0, index[d]) for d in self.class_names
                    for p in find_video_files(self.root / d)], []
        listing = Path(split_file).expanduser()
        if not listing.is_file() and (self.root / listing).is_file():
            listing = self.root / listing
        if not listing.is_file():
            raise LatteError(f"ucf101: split file {split_file} not found")
        clips, skipped = [], []
        for line in listing.read_text().splitlines():
            if not line.strip():
                continue
            relative = line.split()[0].replace("\\", "/")
            path = self.root / relative
            class_name = relative.split("/")[0]
            if class_name not in index:
                skipped.append((str(path), f"class {class_name!r} has no folder under the root"))
            elif not path.is_file():
                skipped.append((str(path), "listed in the split file but missing"))
            else:
                clips.append(Clip(str(path), 0, index[class_name]))
        return clips, skipped


class CaptionManifest(ClipDataset):
    """Text-to-video pairs from a CSV (header path,caption) or JSONL manifest; paths relative to it."""

    name = "captions"
    SUFFIXES = (".csv", ".jsonl", ".json")

    def discover(self):
        manifest = self.root
        if manifest.is_dir():
            found = sorted(p for p in manifest.iterdir() if p.suffix.lower() in self.SUFFIXES)
            if len(found) != 1:
                raise LatteError(f"captions: give the manifest file; {manifest} holds {len(found)} .csv/.jsonl files")
            manifest = found[0]
        self.manifest_path = manifest
        clips, skipped = [], []
        for path, caption in read_manifest(manifest):
            target = (manifest.parent / path).resolve()
            if target.exists():
                clips.append(Clip(str(target), 0, None, caption))
            else:
                skipped.append((str(target), "in the manifest but missing"))
        return clips, skipped


LAYOUTS: dict[str, type[ClipDataset]] = {
    cls.name: cls for cls in (FaceForensics, SkyTimelapse, Taichi, UCF101, ClipDataset, CaptionManifest)
}
