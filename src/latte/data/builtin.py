"""`moving-mnist` for build_dataset: latte.data.moving_mnist.MovingMNIST with the common clip options."""
from __future__ import annotations

import inspect
import re

import torch
from torch.utils.data import Dataset

from latte.data.datasets import ClipOptions, keyed_generator, other_clip, randint
from latte.data.moving_mnist import MovingMNIST
from latte.errors import LatteError


def moving_mnist_options() -> tuple[str, ...]:
    """MovingMNIST's own keyword arguments that build_dataset passes through (num_digits, split, length ...)."""
    taken = {"self", "num_frames", "resolution", "seed"}
    return tuple(name for name, p in inspect.signature(MovingMNIST.__init__).parameters.items()
                 if name not in taken and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


class MovingMNISTClips(Dataset):
    """Moving MNIST clips with labels and captions; frame_interval > 1 generates the longer sequence and strides it."""

    name = "moving-mnist"
    accepts_keys = True  # dataset[(index, draw)]: randomness seeded by (seed, index, draw)

    def __init__(self, options: ClipOptions, **extra):
        if options.resolution[0] != options.resolution[1]:
            raise LatteError(f"moving-mnist is square: resolution {options.resolution} has H != W")
        self.options = options
        self.flip = bool(options.flip)  # mirrored digits are not digits: off unless asked for
        self.base = MovingMNIST(num_frames=options.span, resolution=options.resolution[0], seed=options.seed, **extra)
        self.class_names = list(getattr(self.base, "class_names", None) or [str(d) for d in range(10)])
        self.skipped: list[tuple[str, str]] = []
        self.root = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.base)

    def _video(self, index: int) -> dict:
        item = dict(self.base[index])
        step = self.options.frame_interval
        item["video"] = item["video"][:, ::step].float()  # (C, F, H, W)
        if "trajectory" in item:
            item["trajectory"] = item["trajectory"][::step]  # (F, 2) digit centre (y, x)
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        o = self.options
        if isinstance(key, (tuple, list)):
            index, generator = int(key[0]), keyed_generator(o.seed, int(key[0]), int(key[1]))
        else:
            index, generator = int(key), None
        item = self.load_clip(index, flip=o.train and self.flip and randint(2, generator) == 1)
        if o.images_per_clip:
            generator = generator if o.train else keyed_generator(o.seed, index, -1)
            frames, labels, captions = [], [], []
            for _ in range(o.images_per_clip):
                other = other_clip(index, len(self), generator)
                video = self._video(other)
                t = randint(video["video"].shape[1], generator)
                frame = video["video"][:, t:t + 1]  # (C, 1, H, W)
                frames.append(frame.flip(-1) if o.train and self.flip and randint(2, generator) == 1 else frame)
                labels.append(int(video["label"]))
                captions.append(video["caption"])
            item["images"] = torch.cat(frames, dim=1)  # (C, N, H, W)
            item["image_labels"] = torch.tensor(labels, dtype=torch.long)
            item["image_captions"] = captions
        return item

    def load_clip(self, index: int, start: int = 0, flip: bool = False) -> dict:
        if start:
            raise LatteError("moving-mnist clips are generated: only the first temporal crop exists")
        item = self._video(index)
        if flip:  # the mirrored clip moves the other way: captions and trajectories follow
            item["video"] = item["video"].flip(-1)
            swap = {"left": "right", "right": "left"}
            for key in ("caption", "direction"):
                if key in item:
                    item[key] = re.sub(r"\b(left|right)\b", lambda m: swap[m.group(1)], item[key])
            if "trajectory" in item:
                y, x = item["trajectory"].unbind(-1)
                item["trajectory"] = torch.stack([y, self.options.resolution[1] - x], dim=-1)
        return item

    def clip_starts(self, index: int, count: int) -> list[int]:
        return [0]
