"""How smooth is a trained model's prediction in the timestep? Multistep solvers assume it is.

    python benchmarks/timestep_smoothness.py --checkpoint RUN [--sampler dpm-solver --steps 20] [--videos 4]

Samples with the solver once and records each model call (x_k, t_k). At every `--every`-th call it
evaluates the model at t_k - span .. t_k + span with x_k held fixed and prints, per unit of t, the
norm of the first difference |D(t+1) - D(t-1)| / 2 and of the second difference
|D(t+1) - 2 D(t) + D(t-1)| (D: the prediction channels; mean over the windows). For a prediction
that varies smoothly over the G timesteps between the solver's calls the ratio second / first is
about 1/G; a ratio near 1 means it changes direction from one integer timestep to the next, which
a second-order step spanning G timesteps samples at arbitrary phase (docs/sampling.md).
"""
from __future__ import annotations

import argparse

import torch

from latte.diffusion import sample
from latte.host_memory import keep_freed_memory
from latte.inference import load_run
from latte.sampling import initial_noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sampler", default="dpm-solver")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--span", type=int, default=3, help="timesteps either side of each call")
    parser.add_argument("--every", type=int, default=3, help="probe every N-th model call")
    parser.add_argument("--cfg-scale", type=float, default=None, help="default: the run's sample.cfg_scale")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.span < 1 or args.every < 1 or args.videos < 1:
        parser.error("--span, --every and --videos must be >= 1")
    keep_freed_memory()

    generator = load_run(args.checkpoint)
    model, diffusion, config = generator.model, generator.diffusion, generator.config
    c = model.config
    if c.caption_channels:
        parser.error("text models are not supported here: give a class-conditional or unconditional run")
    model.eval()
    cfg = config.sample.cfg_scale if args.cfg_scale is None else args.cfg_scale
    labels = torch.arange(args.videos) % c.num_classes if c.num_classes else None
    noise = initial_noise(list(range(args.videos)), (c.in_channels, c.num_frames, *c.latent_hw), args.seed)
    calls = []

    def recording(x, t, **kwargs):
        calls.append((x.clone(), t.clone(), kwargs))
        return model(x, t, **kwargs)

    sample(recording, noise.shape, diffusion, args.sampler, steps=args.steps, cfg_scale=cfg, y=labels,
           null_class=c.num_classes if labels is not None else None, noise=noise, progress=False)
    steps = [int(t.reshape(-1)[0]) for _, t, _ in calls]
    print(f"{args.sampler} {args.steps}: model calls at t = {steps}; guidance {cfg}, {args.videos} videos")
    print(f"{'t':>5} {'gap to next':>11} {'|dD/dt|':>9} {'|d2D/dt2|':>10} {'ratio':>6} {'1/gap':>6}")
    ratios = []
    with torch.no_grad():
        for k in range(0, len(calls), args.every):
            x, t, kwargs = calls[k]
            t0 = int(t[0])
            window = [s for s in range(t0 - args.span, t0 + args.span + 1) if 0 <= s < diffusion.num_timesteps]
            if len(window) < 3:
                continue
            D = torch.stack([model(x, torch.full_like(t, s), **kwargs)[:, :c.in_channels].double().flatten()
                             for s in window])  # (W, B*C*F*H*W)
            first = ((D[2:] - D[:-2]) / 2).norm(dim=1)
            second = (D[2:] - 2 * D[1:-1] + D[:-2]).norm(dim=1)
            gap = t0 - (steps[k + 1] if k + 1 < len(steps) else 0)
            ratio = (second / first.clamp(min=1e-12)).mean().item()
            ratios.append(ratio)
            print(f"{t0:>5} {gap:>11} {first.mean().item():>9.4f} {second.mean().item():>10.4f} {ratio:>6.2f} "
                  f"{1 / max(gap, 1):>6.3f}", flush=True)
    print(f"mean ratio {sum(ratios) / len(ratios):.2f} (smooth between calls: about 1/gap)")


if __name__ == "__main__":
    main()
