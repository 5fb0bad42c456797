"""Has a text-to-video Moving MNIST run learned the caption's direction? A cheap check, no sampling.

    python benchmarks/text_direction_probe.py --run runs/moving-mnist-text

For each checkpoint the run keeps: the x0 error of 200 held-out clips noised 0.9 of the way to pure noise
(DDPM t=900, flow t=0.9: where a
sample's layout is decided) with their own caption and with the same digit moving the opposite way,
and the gap between the two (opposite / own - 1). A model that ignores the direction reads a gap of
0; the caption's direction is learned all at once (a saddle, docs/moving-mnist-text-demo.md), after
which the gap is 0.25-0.4. Exits 1 when the last checkpoint's gap is below --min-gap: a run whose
samples will move the asked way no more often than chance. A few seconds per checkpoint.
"""
from __future__ import annotations

import argparse
import sys

import torch
from moving_mnist_text_quality import caption_use

from latte.checkpoint_files import list_checkpoints
from latte.data.moving_mnist import MovingMNIST
from latte.inference import load_run


def direction_gap(checkpoint, clips: int, noise_level: float, seed: int) -> tuple[float, float]:
    """(own-caption x0 error, opposite-direction x0 error) of `clips` held-out clips at a noise level."""
    generator = load_run(checkpoint)
    model, diffusion, config = generator.model, generator.diffusion, generator.config
    text_encoder = generator.load_text_encoder()
    if text_encoder is None:
        raise SystemExit(f"{checkpoint} is not a text-to-video checkpoint")
    real = MovingMNIST(num_frames=model.config.num_frames, resolution=model.config.latent_hw[0], split="test",
                       length=clips, seed=9, **config.data.mnist_kwargs())
    errors = caption_use(model, diffusion, text_encoder, [real[i] for i in range(clips)], noise_level, seed)
    return errors["own caption"], errors["opposite direction"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a moving-mnist-text run folder")
    parser.add_argument("--clips", type=int, default=200, help="held-out clips per checkpoint")
    parser.add_argument("--probe-noise", type=float, default=0.9, help="noise level of the probe, 0 to 1")
    parser.add_argument("--min-gap", type=float, default=0.05,
                        help="the last checkpoint's gap below this is a failure (exit 1)")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    checkpoints = list_checkpoints(args.run)
    if not checkpoints:
        raise SystemExit(f"no checkpoints in {args.run}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"{'step':>6}  {'own caption':>11}  {'opposite way':>12}  {'gap':>6}")
    gap = 0.0
    for checkpoint in checkpoints:
        own, opposite = direction_gap(checkpoint, args.clips, args.probe_noise, args.seed)
        gap = opposite / own - 1
        step = int(checkpoint.stem.split("_")[-1])
        print(f"{step:>6}  {own:>11.4f}  {opposite:>12.4f}  {gap:>6.3f}")
    verdict = "uses" if gap >= args.min_gap else "IGNORES"
    print(f"{args.run}: the last checkpoint {verdict} the caption's direction (gap {gap:.3f}, threshold {args.min_gap})")
    return 0 if gap >= args.min_gap else 1


if __name__ == "__main__":
    sys.exit(main())
