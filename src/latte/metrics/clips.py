"""Clip sets for evaluation: which 16-frame clips of the real and generated videos are measured.

StyleGAN-V protocol (used by Latte): real clips are `frames` frames read every `stride`-th frame
(3; 6 for Taichi-HD) from a random start, one clip per video in a seeded random order (cycling
over the videos when more clips than videos are asked for); generated clips are the first
`frames` consecutive frames of each generated video. Every clip comes out as uint8 (T, R, R, 3).
"""
from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from latte import __version__
from latte.data import build_dataset
from latte.errors import LatteError
from latte.metrics.videos import count_frames, find_videos, load_npz_videos, read_frames, resize_center_crop, to_uint8

_DATASET_SPEC = re.compile(r"^([A-Za-z][\w-]*):(.+)$")
log = logging.getLogger("latte.metrics")


def readable_frame_counts(videos: list[Path], desc: str) -> tuple[list[tuple[Path, int]], list[Path]]:
    """(video, frame count) of the readable videos, and the unreadable ones, each skipped with one warning."""
    counted, broken = [], []
    for video in tqdm(videos, desc=desc, unit="video", leave=False, disable=len(videos) < 200):
        try:
            counted.append((video, count_frames(video)))
        except LatteError as exc:
            broken.append(video)
            log.warning("skipping %s: %s", video, exc)
    if broken:
        log.warning("%d unreadable file(s) skipped", len(broken))
    return counted, broken


@dataclass(frozen=True)
class ClipProtocol:
    """What a clip is: `frames` frames, `stride` apart, at `resolution`^2; `num_clips` of them drawn with `seed`."""

    frames: int = 16
    stride: int = 3
    resolution: int = 256
    num_clips: int = 2048
    seed: int = 0

    def __post_init__(self):
        for name in ("frames", "stride", "resolution", "num_clips"):
            if getattr(self, name) < 1:
                raise LatteError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")

    def as_dict(self) -> dict:
        return asdict(self)


def tree_fingerprint(root: Path) -> dict:
    """Cheap identity of a folder's contents for the statistics cache: file count, bytes, newest mtime."""
    root = root.expanduser().resolve()
    if root.is_file():
        info = root.stat()
        return {"path": str(root), "files": 1, "bytes": info.st_size, "mtime_ns": info.st_mtime_ns}
    files = bytes_ = newest = 0
    for path in root.rglob("*"):
        if path.is_file():
            info = path.stat()
            files, bytes_, newest = files + 1, bytes_ + info.st_size, max(newest, info.st_mtime_ns)
    return {"path": str(root), "files": files, "bytes": bytes_, "mtime_ns": newest}


class ClipSet(torch.utils.data.Dataset):
    """A list of clips; item i is uint8 (T, R, R, 3). `source` names it in reports, `fingerprint()` keys caches."""

    source: str

    def fingerprint(self) -> dict:
        raise NotImplementedError


class RealVideoClips(ClipSet):
    """Clips of a folder of real videos (files or frame folders): random start, fixed stride, seeded."""

    def __init__(self, root: str | os.PathLike, protocol: ClipProtocol):
        self.root = Path(root).expanduser()
        self.protocol = protocol
        self.source = str(self.root.resolve())
        self._plan: list[tuple[Path, int]] | None = None
        self.available = 0

    def fingerprint(self) -> dict:
        return {"kind": "video-folder", **tree_fingerprint(self.root)}

    def plan(self) -> list[tuple[Path, int]]:
        """(video, start frame) of each clip; counts the frames of every video once."""
        if self._plan is not None:
            return self._plan
        p = self.protocol
        span = (p.frames - 1) * p.stride + 1
        counted, self.skipped = readable_frame_counts(find_videos(self.root), "indexing real videos")
        eligible = [(v, n) for v, n in counted if n >= span]
        if not counted:
            raise LatteError(f"no readable video under {self.root} ({len(self.skipped)} file(s) could not be decoded)")
        if not eligible:
            longest = max(n for _, n in counted)
            fix = (f"use a smaller --stride (at stride 1 they need {p.frames})" if p.stride > 1 and longest >= p.frames
                   else f"evaluation clips are {p.frames} frames: give longer videos")
            raise LatteError(f"no video under {self.root} has {span} frames ({p.frames} frames at stride {p.stride}; "
                             f"the longest has {longest}): {fix}")
        self.available = sum(n - span + 1 for _, n in eligible)
        rng = np.random.default_rng(p.seed)
        order = rng.permutation(len(eligible))
        plan = []
        for i in range(min(p.num_clips, self.available)):
            video, count = eligible[order[i % len(eligible)]]
            plan.append((video, int(rng.integers(0, count - span + 1))))
        self._plan = plan
        return plan

    def __len__(self) -> int:
        return len(self.plan())

    def __getitem__(self, index: int) -> torch.Tensor:
        plan = self.plan()
        for k in range(len(plan)):  # a file that fails to decode now: the next clip of the plan takes its place
            video, start = plan[(index + k) % len(plan)]
            indices = list(range(start, start + self.protocol.frames * self.protocol.stride, self.protocol.stride))
            try:
                frames = torch.from_numpy(read_frames(video, indices))  # (T, H, W, 3)
            except LatteError as exc:
                log.warning("skipping %s: %s", video, exc)
                continue
            return resize_center_crop(frames, self.protocol.resolution)
        raise LatteError(f"no clip under {self.root} decodes")


class DatasetClips(ClipSet):
    """Clips from `latte.data.build_dataset(name, root, ...)` (items: dict "video" float (C, F, H, W) in [-1, 1])."""

    def __init__(self, name: str, root: str, protocol: ClipProtocol):
        self.name, self.root, self.protocol = name, Path(root).expanduser(), protocol
        self.source = f"{name}:{self.root.resolve()}"
        try:
            self.dataset = build_dataset(name, str(self.root), num_frames=protocol.frames,
                                         frame_interval=protocol.stride, resolution=protocol.resolution,
                                         flip=False)  # evaluation reads frames as they are
        except (KeyError, ValueError) as exc:
            raise LatteError(f"cannot open dataset {name} at {self.root}: {exc}") from None
        if len(self.dataset) == 0:
            raise LatteError(f"dataset {name} at {self.root} is empty")
        rng = np.random.default_rng(protocol.seed)
        order = rng.permutation(len(self.dataset))
        self.indices = [int(order[i % len(order)]) for i in range(protocol.num_clips)]
        self.available = len(self.dataset)

    def fingerprint(self) -> dict:
        if getattr(self.dataset, "root", "") is None:  # generated (moving-mnist): ROOT holds none of its data
            return {"kind": "dataset", "name": self.name, "generated": True, "latte": __version__}
        return {"kind": "dataset", "name": self.name, **tree_fingerprint(self.root)}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        # The dataset draws its own random start: seed every source of randomness per clip, so the
        # same clips come out with any number of loader workers.
        clip_seed = self.protocol.seed * 1_000_003 + index
        saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        random.seed(clip_seed)
        np.random.seed(clip_seed % 2**32)
        torch.manual_seed(clip_seed)
        try:
            item = self.dataset[self.indices[index]]
        finally:  # leave the caller's random streams as they were
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.set_rng_state(saved[2])
        video = item["video"] if isinstance(item, dict) else item
        frames = to_uint8(torch.as_tensor(video)[None])[0]  # (F, H, W, 3)
        if frames.shape[0] < self.protocol.frames:
            raise LatteError(f"dataset {self.name} gave {frames.shape[0]} frames, {self.protocol.frames} needed")
        return resize_center_crop(frames[: self.protocol.frames], self.protocol.resolution)


class GeneratedClips(ClipSet):
    """The first `frames` frames of each generated video: mp4/avi/... files, frame folders or .npz files."""

    def __init__(self, root: str | os.PathLike, protocol: ClipProtocol):
        self.root = Path(root).expanduser()
        self.protocol = protocol
        self.source = str(self.root.resolve())
        self.items: list[tuple[Path, int]] = []  # (file, row of an npz or -1)
        self._npz: dict[Path, torch.Tensor] = {}
        found = find_videos(self.root, allow_npz=True)
        for path in found:
            if path.suffix.lower() == ".npz":
                videos = load_npz_videos(path)  # (N, F, H, W, 3) uint8
                self._npz[path] = videos
                self.items += [(path, row) for row in range(videos.shape[0])]
        counted, self.skipped = readable_frame_counts([p for p in found if p.suffix.lower() != ".npz"],
                                                      "indexing generated videos")
        self.items += [(path, -1) for path, _ in counted]
        if not self.items:
            raise LatteError(f"no readable video under {self.root} ({len(self.skipped)} file(s) could not be decoded)")
        self.items.sort(key=lambda item: (str(item[0]), item[1]))
        self.available = len(self.items)
        self.items = self.items[: protocol.num_clips]

    def fingerprint(self) -> dict:
        return {"kind": "generated", **tree_fingerprint(self.root)}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        path, row = self.items[index]
        frames_needed = self.protocol.frames
        if row >= 0:
            frames = self._npz[path][row]
            if frames.shape[0] < frames_needed:
                raise LatteError(f"{path} holds {frames.shape[0]}-frame videos, {frames_needed} needed: sample longer videos")
            frames = frames[:frames_needed]
        else:
            try:
                frames = torch.from_numpy(read_frames(path, list(range(frames_needed))))
            except LatteError:
                raise LatteError(f"{path} has fewer than {frames_needed} frames: sample {frames_needed}-frame videos") from None
        return resize_center_crop(frames, self.protocol.resolution)


def open_real(spec: str, protocol: ClipProtocol) -> ClipSet:
    """--real: an existing folder/file of videos, or NAME:ROOT for latte.data.build_dataset."""
    if Path(spec).expanduser().exists():
        return RealVideoClips(spec, protocol)
    match = _DATASET_SPEC.match(spec)
    if match:
        return DatasetClips(match.group(1), match.group(2), protocol)
    raise LatteError(f"--real {spec} does not exist: give a folder of videos or frame folders, or NAME:ROOT of a dataset")


def open_fake(spec: str, protocol: ClipProtocol) -> ClipSet:
    """--fake: a folder of generated videos (mp4 files, frame folders or .npz), or one such file."""
    if not Path(spec).expanduser().exists():
        raise LatteError(f"--fake {spec} does not exist: give the folder `latte sample --output DIR` wrote")
    return GeneratedClips(spec, protocol)
