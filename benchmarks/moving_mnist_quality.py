"""How recognisable and coherent are a Moving MNIST model's samples?

    python benchmarks/moving_mnist_quality.py --checkpoint runs/moving-mnist [--per-class 10] [--cfg-scale G]

The readings of `latte ablate` and benchmarks/time_to_quality.py (latte.metrics.mnist), on 10 clips per
digit (100) sampled with the run's sampler, steps and guidance from the evaluation seed: the digit reader
(three small CNNs trained for a fixed number of steps on frames of real Moving MNIST clips, train digit
pool, their class probabilities averaged; its accuracy is measured on the disjoint test pool; cached in
--cache-dir) reads every frame. Nothing in training sees it. Printed figures:
- real-frame accuracy of the reader (its own ceiling, on held-out real frames);
- sample accuracy: fraction of sampled frames classified as the requested digit (chance 10%);
- clip agreement: fraction of sampled clips whose frames' majority class is the requested one, and
  what each of the three readers alone reads (their spread: docs/digit-reader.md);
- motion: mean frame-to-frame centroid step in pixels and its jitter (the median norm of the
  centroid's second difference; constant-velocity motion has jitter near 0, bounces aside), real vs sampled.
"""
from __future__ import annotations

import argparse
import time

from latte.ablation.evaluation import EVAL_SEED, EvalSettings
from latte.cli_arguments import add_reader_arguments
from latte.inference import load_run
from latte.metrics.evaluate import stats_cache_dir
from latte.metrics.mnist import cached_classifier, digit_readings, motion, real_motion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--per-class", type=int, default=10, help="sampled clips per digit class")
    add_reader_arguments(parser)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--cfg-scale", type=float, default=None)
    parser.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                        help="guidance only at times LO < t/T <= HI (default: the run's)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED,
                        help="noise of the sampled clips (default: the evaluation seed every reading uses; "
                             "another seed shows how much a reading moves with the draw)")
    args = parser.parse_args()
    interval = None
    if args.guidance_interval:
        try:
            low, high = (float(v) for v in args.guidance_interval.split(","))
        except ValueError:
            parser.error(f"--guidance-interval takes LO,HI (two numbers), got {args.guidance_interval!r}")
        if not low < high:
            parser.error(f"--guidance-interval {args.guidance_interval}: LO must be below HI")
        interval = (low, high)
    generator = load_run(args.checkpoint)
    model, config = generator.model, generator.config
    frames, size = model.config.num_frames, model.config.latent_hw[0]
    net, real_accuracy = cached_classifier(size, frames, args.classifier_steps, stats_cache_dir(args.cache_dir))
    request = generator.request(num_videos=10 * args.per_class, sampler=args.sampler, steps=args.steps,
                                cfg_scale=args.cfg_scale, seed=args.seed, batch_size=EvalSettings.batch_size)
    request.guidance_interval = interval
    start = time.perf_counter()
    videos, labels = generator.generate(request, progress=False)
    sample_seconds = time.perf_counter() - start
    frame_accuracy, clip_agreement = digit_readings(net, videos, labels)
    real_step, real_jitter = real_motion(frames, size, len(videos), **config.data.mnist_kwargs())
    fake_step, fake_jitter = motion(videos)
    print(f"checkpoint {args.checkpoint}: {len(videos)} clips, {request.sampler} {request.steps} steps, "
          f"guidance {request.cfg_scale} over {request.guidance_interval or 'all steps'}, seed {args.seed}, sampling {sample_seconds:.1f} s")
    print(f"classifier accuracy on real frames   {real_accuracy:6.1%}")
    print(f"sampled frames classified as asked    {frame_accuracy:6.1%}   (chance 10%)")
    print(f"sampled clips whose majority is asked {clip_agreement:6.1%}")
    alone = [digit_readings(member, videos, labels)[1] for member in net.members]
    if len(alone) > 1:  # how much one reader alone would move the reading
        print(f"  clips, each reader alone            {', '.join(f'{a:.0%}' for a in alone)}")
    print(f"centroid step px / jitter px          real {real_step:.2f} / {real_jitter:.2f}   "
          f"sampled {fake_step:.2f} / {fake_jitter:.2f}")


if __name__ == "__main__":
    main()
