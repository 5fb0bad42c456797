"""How recognisable and coherent are a Moving MNIST model's samples?

    python benchmarks/moving_mnist_quality.py --checkpoint runs/moving-mnist [--per-class 5]

A small CNN digit classifier is trained here (about a minute on 2 CPU cores) on frames of real
Moving MNIST clips (train digit pool; its accuracy is measured on the disjoint test pool); it then reads every frame of class-conditional
samples. Printed figures:
- real-frame accuracy of the classifier (its own ceiling, on held-out real frames);
- sample accuracy: fraction of sampled frames classified as the requested digit (chance 10%);
- clip agreement: fraction of sampled clips whose frames' majority class is the requested one;
- motion: mean frame-to-frame centroid step in pixels and its jitter (std of the second
  difference; constant-velocity motion has jitter near 0, bounces aside), real vs sampled.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from latte.commands.sample import load_for_sampling
from latte.data.moving_mnist import MovingMNIST
from latte.sampling import SampleRequest, generate


def classifier() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))


def frames_and_labels(dataset: MovingMNIST, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(count)]
    frames = torch.cat([it["video"][0] for it in items])[:, None]  # (count*F, 1, H, W)
    labels = torch.tensor([it["label"] for it in items]).repeat_interleave(dataset.num_frames)
    return frames, labels


def train_classifier(resolution: int, frames: int, seconds: float, seed: int = 0) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    train = MovingMNIST(num_frames=frames, resolution=resolution, split="train", length=4000, seed=seed + 1)
    held = MovingMNIST(num_frames=frames, resolution=resolution, split="test", length=200, seed=seed + 2)
    x, y = frames_and_labels(train, len(train))
    net, opt = classifier(), None
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        idx = torch.randint(0, len(x), (256,))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    hx, hy = frames_and_labels(held, len(held))
    with torch.no_grad():
        accuracy = (net.eval()(hx).argmax(1) == hy).float().mean().item()
    return net, accuracy


def centroids(videos: torch.Tensor) -> torch.Tensor:
    """(N, 1, F, H, W) in [-1, 1] -> brightness centroids (N, F, 2)."""
    mass = ((videos[:, 0] + 1) / 2).clamp(min=0)  # (N, F, H, W)
    h, w = mass.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    total = mass.sum(dim=(2, 3)).clamp(min=1e-6)
    return torch.stack([(mass * ys).sum(dim=(2, 3)) / total, (mass * xs).sum(dim=(2, 3)) / total], dim=-1)


def motion(videos: torch.Tensor) -> tuple[float, float]:
    c = centroids(videos)
    steps = (c[:, 1:] - c[:, :-1]).norm(dim=-1)
    jitter = (c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).norm(dim=-1)
    return steps.mean().item(), jitter.median().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--per-class", type=int, default=5, help="sampled clips per digit class")
    parser.add_argument("--classifier-seconds", type=float, default=60.0)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--cfg-scale", type=float, default=None)
    args = parser.parse_args()
    model, diffusion, config, vae = load_for_sampling(args.checkpoint)
    frames, size = model.config.num_frames, model.config.latent_hw[0]
    net, real_accuracy = train_classifier(size, frames, args.classifier_seconds)
    request = SampleRequest(num_videos=10 * args.per_class, sampler=args.sampler or config.sample.sampler,
                            steps=args.steps or config.sample.steps,
                            cfg_scale=config.sample.cfg_scale if args.cfg_scale is None else args.cfg_scale,
                            seed=123, batch_size=10)
    start = time.perf_counter()
    videos, labels = generate(model, diffusion, request, vae=vae, progress=False)
    sample_seconds = time.perf_counter() - start
    with torch.no_grad():
        predicted = net(videos[:, 0].flatten(0, 1)[:, None]).argmax(1).view(len(videos), frames)  # (N, F)
    frame_accuracy = (predicted == labels[:, None]).float().mean().item()
    clip_agreement = (predicted.mode(dim=1).values == labels).float().mean().item()
    real = MovingMNIST(num_frames=frames, resolution=size, split="test", length=len(videos), seed=9,
                       **config.data.mnist_kwargs())
    real_videos = torch.stack([real[i]["video"] for i in range(len(real))])
    real_step, real_jitter = motion(real_videos)
    fake_step, fake_jitter = motion(videos)
    print(f"checkpoint {args.checkpoint}: {len(videos)} clips, {request.sampler} {request.steps} steps, "
          f"guidance {request.cfg_scale}, sampling {sample_seconds:.1f} s")
    print(f"classifier accuracy on real frames   {real_accuracy:6.1%}")
    print(f"sampled frames classified as asked    {frame_accuracy:6.1%}   (chance 10%)")
    print(f"sampled clips whose majority is asked {clip_agreement:6.1%}")
    print(f"centroid step px / jitter px          real {real_step:.2f} / {real_jitter:.2f}   "
          f"sampled {fake_step:.2f} / {fake_jitter:.2f}")


if __name__ == "__main__":
    main()
