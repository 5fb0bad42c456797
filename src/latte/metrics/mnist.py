"""Moving MNIST readings of generated clips: a digit reader (small CNNs) and centroid motion.

Used by benchmarks/moving_mnist_quality.py and by `latte ablate`:
- the reader (three small CNNs, their class probabilities averaged) is trained for a fixed number of
  steps on frames of real Moving MNIST clips (train digit pool), its accuracy measured on the disjoint
  test pool; it reads every frame of class-conditional samples;
- frame accuracy: fraction of sampled frames classified as the requested digit (chance 10%);
- clip agreement: fraction of clips whose frames' majority class is the requested one;
- motion: mean frame-to-frame centroid step in pixels and its jitter (median norm of the second
  difference; constant-velocity motion has jitter near 0, bounces aside).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from latte.data.moving_mnist import MovingMNIST

CLASSIFIER_FORMAT = 2  # bump when the network or its training changes, so cached classifiers are retrained
# The digit reader is trained for a fixed number of steps, never for a time: a reader trained for 60
# seconds (before 2026-12-07) was a weaker one on a slower machine, and readers at other points of
# training read the same 100 generated clips up to 20 points apart. A few readers trained to the end of a
# cosine schedule, their probabilities averaged, give the same reading on every machine.
READER_STEPS = 800
READER_SEEDS = (0, 1, 2)


def classifier() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))


class Readers(nn.Module):
    """Several digit classifiers read as one: the mean of their class probabilities, (B, 10)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, 10)
        return torch.stack([m(frames).softmax(dim=-1) for m in self.members]).mean(dim=0)


def frames_and_labels(dataset: MovingMNIST, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(count)]
    frames = torch.cat([it["video"][0] for it in items])[:, None]  # (count*F, 1, H, W)
    labels = torch.tensor([it["label"] for it in items]).repeat_interleave(dataset.num_frames)
    return frames, labels


def _reader_data(resolution: int, frames: int) -> tuple[torch.Tensor, ...]:
    """(train frames, labels, held-out frames, labels): train digit pool and the disjoint test pool."""
    train = MovingMNIST(num_frames=frames, resolution=resolution, split="train", length=4000, seed=1)
    held = MovingMNIST(num_frames=frames, resolution=resolution, split="test", length=200, seed=2)
    return (*frames_and_labels(train, len(train)), *frames_and_labels(held, len(held)))


@torch.no_grad()
def _accuracy(net: nn.Module, frames: torch.Tensor, labels: torch.Tensor) -> float:
    return (net.eval()(frames).argmax(1) == labels).float().mean().item()


def train_classifier(resolution: int, frames: int, steps: int = READER_STEPS, seed: int = 0,
                     data: tuple[torch.Tensor, ...] | None = None) -> tuple[nn.Module, float]:
    """(classifier, accuracy on held-out real frames) after `steps` Adam steps of 256 frames, lr 2e-3
    decayed to 0 on a cosine."""
    if steps < 1:
        raise ValueError(f"the digit reader needs at least one training step, got {steps}")
    x, y, hx, hy = data if data is not None else _reader_data(resolution, frames)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    for _ in range(steps):
        idx = torch.randint(0, len(x), (256,), generator=generator)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return net.eval(), _accuracy(net, hx, hy)


def train_readers(resolution: int, frames: int, steps: int = READER_STEPS,
                  seeds: tuple[int, ...] = READER_SEEDS) -> tuple[Readers, float]:
    """(the readers of `seeds` as one, their joint accuracy on held-out real frames)."""
    data = _reader_data(resolution, frames)
    readers = Readers([train_classifier(resolution, frames, steps, seed, data)[0] for seed in seeds])
    return readers.eval(), _accuracy(readers, data[2], data[3])


def cached_classifier(resolution: int, frames: int, steps: int, cache_dir: Path,
                      seeds: tuple[int, ...] = READER_SEEDS) -> tuple[nn.Module, float]:
    """train_readers' result, stored under cache_dir keyed by its arguments, so it is trained once."""
    key = {"format": CLASSIFIER_FORMAT, "resolution": resolution, "frames": frames, "steps": steps,
           "seeds": list(seeds)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"mnist-classifier-{digest}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            net = Readers([classifier() for _ in seeds])
            net.load_state_dict(stored["state"])
            return net.eval(), float(stored["accuracy"])
        except (OSError, RuntimeError, KeyError):
            pass  # unreadable entry: retrain and overwrite it
    net, accuracy = train_readers(resolution, frames, steps, seeds)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"state": net.state_dict(), "accuracy": accuracy, "key": key}, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return net.eval(), accuracy


def centroids(videos: torch.Tensor) -> torch.Tensor:
    """(N, 1, F, H, W) in [-1, 1] -> brightness centroids (N, F, 2)."""
    mass = ((videos[:, 0] + 1) / 2).clamp(min=0)  # (N, F, H, W)
    h, w = mass.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    total = mass.sum(dim=(2, 3)).clamp(min=1e-6)
    return torch.stack([(mass * ys).sum(dim=(2, 3)) / total, (mass * xs).sum(dim=(2, 3)) / total], dim=-1)


def centroid_jitter(videos: torch.Tensor) -> torch.Tensor:
    """(N, F - 2) px: the norm of the centroid's second difference c[f+1] - 2 c[f] + c[f-1] at f = 1..F-2 of
    (N, 1, F, H, W) clips (0 for a digit moving at constant velocity)."""
    c = centroids(videos)  # (N, F, 2)
    return (c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).norm(dim=-1)


def motion(videos: torch.Tensor) -> tuple[float, float]:
    """(mean centroid step px, median jitter px) of (N, 1, F, H, W) clips."""
    c = centroids(videos)
    steps = (c[:, 1:] - c[:, :-1]).norm(dim=-1)
    return steps.mean().item(), centroid_jitter(videos).median().item()


@torch.no_grad()
def frame_digits(net: nn.Module, videos: torch.Tensor) -> torch.Tensor:
    """The digit the classifier reads in each frame of (N, 1, F, H, W) clips: (N, F)."""
    frames = videos.shape[2]
    return net(videos[:, 0].flatten(0, 1)[:, None]).argmax(1).view(len(videos), frames)  # (N, F)


def digit_readings(net: nn.Module, videos: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(frame accuracy, clip agreement) of (N, 1, F, H, W) clips asked for `labels` (N,)."""
    predicted = frame_digits(net, videos)  # (N, F)
    frame_accuracy = (predicted == labels[:, None]).float().mean().item()
    clip_agreement = (predicted.mode(dim=1).values == labels).float().mean().item()
    return frame_accuracy, clip_agreement


def real_motion(frames: int, resolution: int, count: int, **mnist_kwargs) -> tuple[float, float]:
    """motion() of `count` real test-pool clips: the reference for sampled clips."""
    real = MovingMNIST(num_frames=frames, resolution=resolution, split="test", length=count, seed=9, **mnist_kwargs)
    return motion(torch.stack([real[i]["video"] for i in range(len(real))]))
