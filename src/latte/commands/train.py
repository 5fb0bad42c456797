"""`latte train`: train a Latte model; run the same command again to resume."""
from __future__ import annotations

import argparse

from latte.cli_arguments import DEFAULT_PRESET, add_config_arguments
from latte.train.checks import load_config


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a model (default: the built-in Moving MNIST preset)",
        description="Train Latte. With no preset, config or dataset it trains the built-in Moving MNIST preset. "
                    "Running the same command again on the same output directory resumes from its latest checkpoint. "
                    "Works the same under `torchrun --nproc_per_node N`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, "when neither --config nor data.dataset is given")
    parser.add_argument("--output-dir", help="run directory (checkpoints, metrics, samples); sets train.output_dir")
    parser.add_argument("--max-steps", type=int, help="sets train.max_steps")
    parser.add_argument("--checkpoint-every", type=int, help="sets train.checkpoint_every")
    parser.add_argument("--dataset", help="sets data.dataset (moving-mnist, faceforensics, skytimelapse, taichi, ucf101, folder, captions)")
    parser.add_argument("--root", help="sets data.root")
    parser.add_argument("--vae", help="sets data.vae: none, or a diffusers AutoencoderKL folder / hub id")
    parser.add_argument("--data-cache", help="sets data.cache: a latent cache written by `latte encode`")
    parser.add_argument("--images-per-clip", type=int, help="sets data.images_per_clip (image-video joint training)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-samples", action="store_true", help="skip writing sample videos at the end")
    return parser


def resolve(args):
    shortcuts = {"train.output_dir": args.output_dir, "train.max_steps": args.max_steps,
                 "train.checkpoint_every": args.checkpoint_every, "data.dataset": args.dataset, "data.root": args.root,
                 "data.vae": args.vae, "data.cache": args.data_cache, "data.images_per_clip": args.images_per_clip}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in shortcuts.items() if v is not None]
    preset = args.preset
    if preset is None and args.config is None and args.dataset is None and args.data_cache is None:
        preset = DEFAULT_PRESET
    return load_config(preset, args.config, overrides)


def run(args) -> int:
    config = resolve(args)
    if args.dry_run:
        print(config.to_yaml(), end="")
        return 0
    # local: the trainer imports torch.distributed's tensor parallel code (seconds), and cli.py imports every
    # command module to build `latte --help`
    from latte.train.run import train

    train(config, write_samples_at_end=not args.no_samples)
    return 0

