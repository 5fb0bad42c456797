"""Does a text-to-video Moving MNIST model show the asked digit moving the asked way?

    python benchmarks/moving_mnist_text_quality.py --checkpoint runs/moving-mnist-text [--per-prompt 1]

Prompts are every digit with every compass direction of the captioned data ("the digit 7 moves to
the upper left"): 10 x 8 = 80 prompts, each sampled --per-prompt times. Each sampled clip is read by
- the small CNN digit classifier of latte.metrics.mnist (trained once on real frames and cached, as the other Moving MNIST benchmarks read): the clip
  shows the asked digit when the majority of its frames are classified as it;
- centroid tracking: the clip moves the asked way when its brightness centroid's displacement from
  the first to the last frame snaps to the asked compass direction, by the same rule that wrote the
  training captions (components under a quarter of the displacement, or 1 px, do not count).
The same two readings of real held-out clips against their own captions give the ceilings.

Before sampling it also asks whether the model uses each part of the caption at high noise, where
the layout of a sample is decided: the x0 error on real held-out clips noised --probe-noise of the way to pure noise
(0.9: DDPM step 900 of 1000, flow t = 0.9) with their
own caption, with the same digit moving the opposite way, with another digit moving the same way, and
with the empty prompt. The error of the best predictors that know only the direction (the clip mean
of each direction) or only the digit, against the overall mean, shows how much each part can gain.
"""
from __future__ import annotations

import argparse
import time

import torch

from latte.cli_arguments import add_reader_arguments
from latte.data.moving_mnist import DIRECTIONS, MovingMNIST, caption_of, direction_of
from latte.inference import load_run
from latte.metrics.evaluate import stats_cache_dir
from latte.metrics.mnist import cached_classifier, centroids
from latte.sampling import SampleRequest


def directions(videos: torch.Tensor) -> list[str]:
    """(N, 1, F, H, W) in [-1, 1] -> the compass word of each clip's centroid motion, first to last frame."""
    path = centroids(videos)  # (N, F, 2) as (y, x)
    moves = path[:, -1] - path[:, 0]
    return [direction_of(float(dy), float(dx), dead_zone=max(1.0, 0.25 * float(torch.hypot(dy, dx))))
            for dy, dx in moves]


OPPOSITE = {d: DIRECTIONS[(DIRECTIONS.index(d) + 4) % len(DIRECTIONS)] for d in DIRECTIONS}


def miss_kinds(read: list[str], asked: list[str]) -> dict[str, int]:
    """How far each wrong direction is from the asked one: a neighbour (45 degrees), further, or no motion."""
    kinds = {"45 degrees off": 0, "further off": 0, "still": 0}
    for got, want in zip(read, asked):
        if got == want:
            continue
        if got == "still":
            kinds["still"] += 1
            continue
        steps = abs(DIRECTIONS.index(got) - DIRECTIONS.index(want)) % len(DIRECTIONS)
        kinds["45 degrees off" if min(steps, len(DIRECTIONS) - steps) == 1 else "further off"] += 1
    return kinds


@torch.no_grad()
def caption_use(model, objective, text_encoder, items: list[dict], noise_level: float, seed: int) -> dict[str, float]:
    """x0 mean squared error of clips noised `noise_level` of the way to pure noise (objective.time_at)
    under four captions (see the module text)."""
    x0 = torch.stack([it["video"] for it in items])  # (N, C, F, H, W)
    steps = torch.full((len(items),), objective.time_at(noise_level))  # (N,)
    x_t = objective.corrupt(x0, steps, torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)))
    captions = {
        "own caption": [it["caption"] for it in items],
        "opposite direction": [caption_of(it["label"], OPPOSITE[it["direction"]]) for it in items],
        "another digit": [caption_of((it["label"] + 1) % 10, it["direction"]) for it in items],
        "empty prompt": [""] * len(items),
    }
    errors = {}
    for name, texts in captions.items():
        hidden, mask = text_encoder(texts)
        out = model(x_t, objective.model_time(steps), encoder_hidden_states=hidden,
                    encoder_attention_mask=mask)[:, :x0.shape[1]]
        errors[name] = float(((objective.predict_x0(x_t, steps, out) - x0) ** 2).mean())
    return errors


def group_mean_errors(items: list[dict]) -> dict[str, float]:
    """Mean squared error of the best predictor knowing nothing / only the direction / only the digit."""
    x0 = torch.stack([it["video"] for it in items])
    errors = {"overall mean": float(((x0 - x0.mean(0)) ** 2).mean())}
    for name, key in (("direction mean", "direction"), ("digit mean", "label")):
        guess = torch.empty_like(x0)
        for value in {it[key] for it in items}:
            rows = [i for i, it in enumerate(items) if it[key] == value]
            guess[rows] = x0[rows].mean(0)
        errors[name] = float(((x0 - guess) ** 2).mean())
    return errors


def majority_digits(net: torch.nn.Module, videos: torch.Tensor) -> torch.Tensor:
    """(N, 1, F, H, W) -> the class most of each clip's frames are read as, (N,)."""
    with torch.no_grad():
        per_frame = net.eval()(videos[:, 0].flatten(0, 1)[:, None]).argmax(1)  # (N*F,)
    return per_frame.view(len(videos), -1).mode(dim=1).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="text-to-video checkpoint or run directory")
    parser.add_argument("--per-prompt", type=int, default=1, help="clips per prompt (80 prompts)")
    add_reader_arguments(parser)
    parser.add_argument("--sampler", default=None, help="default: the run's sample.sampler")
    parser.add_argument("--steps", type=int, default=None, help="default: the run's sample.steps")
    parser.add_argument("--cfg-scale", type=float, default=None, help="default: the run's sample.cfg_scale")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--probe-noise", type=float, default=0.9,
                        help="noise level of the caption-use probe, 0 clean to 1 pure noise")
    parser.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA weights")
    args = parser.parse_args()

    generator = load_run(args.checkpoint, use_ema=not args.no_ema)
    model, diffusion, config = generator.model, generator.diffusion, generator.config
    text_encoder = generator.load_text_encoder()
    if text_encoder is None:
        parser.error(f"{args.checkpoint} is not a text-to-video checkpoint (see moving_mnist_quality.py)")
    frames, size = model.config.num_frames, model.config.latent_hw[0]
    asked = [(digit, direction) for digit in range(10) for direction in DIRECTIONS]
    prompts = [caption_of(digit, direction) for digit, direction in asked]

    net, real_frame_accuracy = cached_classifier(size, frames, args.classifier_steps, stats_cache_dir(args.cache_dir))
    real = MovingMNIST(num_frames=frames, resolution=size, split="test", length=400, seed=9,
                       **config.data.mnist_kwargs())
    items = [real[i] for i in range(len(real))]
    real_videos = torch.stack([it["video"] for it in items])
    real_digit = (majority_digits(net, real_videos) == torch.tensor([it["label"] for it in items])).float().mean()
    real_direction = sum(d == it["direction"] for d, it in zip(directions(real_videos), items)) / len(items)

    probe = caption_use(model, diffusion, text_encoder, items[:200], args.probe_noise, args.seed)
    best = group_mean_errors([MovingMNIST(num_frames=frames, resolution=size, length=2000, seed=5,
                                          **config.data.mnist_kwargs())[i] for i in range(2000)])
    print(f"x0 error of 200 real clips at t={diffusion.time_at(args.probe_noise)}: " + ", ".join(f"{k} {v:.4f}" for k, v in probe.items()))
    print("best predictors of 2000 real clips (no noise information): "
          + ", ".join(f"{k} {v:.4f}" for k, v in best.items()))

    request = SampleRequest(num_videos=len(prompts) * args.per_prompt, sampler=args.sampler or config.sample.sampler,
                            steps=args.steps or config.sample.steps,
                            cfg_scale=config.sample.cfg_scale if args.cfg_scale is None else args.cfg_scale,
                            seed=args.seed, batch_size=args.batch_size, prompts=prompts)
    start = time.perf_counter()
    videos, _ = generator.generate(request, progress=True)
    seconds = time.perf_counter() - start
    wanted = [asked[i % len(asked)] for i in range(len(videos))]
    digit_ok = (majority_digits(net, videos) == torch.tensor([digit for digit, _ in wanted])).tolist()
    read = directions(videos)
    direction_ok = [got == want for got, (_, want) in zip(read, wanted)]
    both_ok = [a and b for a, b in zip(digit_ok, direction_ok)]
    n = len(videos)

    print(f"checkpoint {args.checkpoint}: {n} clips for {len(prompts)} prompts, {request.sampler} {request.steps} "
          f"steps, guidance {request.cfg_scale}, sampling {seconds:.1f} s")
    print(f"classifier accuracy on real frames        {real_frame_accuracy:6.1%}")
    print(f"real clips: digit read right               {real_digit:6.1%}   direction read right {real_direction:6.1%}")
    print(f"sampled clips showing the asked digit      {sum(digit_ok):4d} / {n}  ({sum(digit_ok) / n:6.1%}, chance 10%)")
    print(f"sampled clips moving the asked direction   {sum(direction_ok):4d} / {n}  "
          f"({sum(direction_ok) / n:6.1%}, chance 12.5%)")
    print("  misses: " + ", ".join(f"{k} {v}" for k, v in miss_kinds(read, [want for _, want in wanted]).items()))
    print(f"sampled clips right in both                {sum(both_ok):4d} / {n}  ({sum(both_ok) / n:6.1%})")


if __name__ == "__main__":
    main()
