"""`latte info`: parameters and forward FLOPs of a model, for comparing ablations at equal size."""
from __future__ import annotations

import argparse

import torch

from latte.errors import LatteError
from latte.models import MODEL_NAMES, TEXT_MODELS, create_model, forward_flops
from latte.models.config import CONDITIONINGS, PATCH_EMBEDS, TEMPORAL_POSITIONS, VARIANTS

NAMES = MODEL_NAMES + tuple(TEXT_MODELS)  # every name model.name (latte train) takes
CLASS_ONLY = ("conditioning", "num_classes")  # options of class/unconditional models; text models condition on captions


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info", help="parameters and GFLOPs of a model",
        description="Print trainable/total parameters and forward GFLOPs per clip (2 FLOPs per multiply-add, "
                    "attention included) of a Latte model, built on the meta device (no memory used).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="Latte-XL/2", choices=NAMES, metavar="NAME",
                        help=f"registry name, one of {', '.join(NAMES)}")
    parser.add_argument("--variant", type=int, choices=VARIANTS, nargs="+", default=[1],
                        help="one or more variants to compare side by side")
    parser.add_argument("--patch-embed", choices=PATCH_EMBEDS, default="frame")
    parser.add_argument("--tubelet-frames", type=int, default=2)
    parser.add_argument("--conditioning", choices=[c for c in CONDITIONINGS if c != "adaln-single"], default=None,
                        help="class/unconditional models (default adaln; text models: adaln-single by name)")
    parser.add_argument("--temporal-pos", choices=TEMPORAL_POSITIONS, default="absolute")
    parser.add_argument("--num-classes", type=int, default=None, help="class/unconditional models (default 0)")
    parser.add_argument("--num-frames", type=int, default=None, help="default 16, or the text model's")
    parser.add_argument("--input-size", type=int, default=None, help="latent height = width (default 32, or the text model's)")
    parser.add_argument("--in-channels", type=int, default=4)
    parser.add_argument("--no-learn-sigma", action="store_true", help="output C channels instead of 2C")
    return parser


def run(args) -> int:
    for flag, value, low in [("--num-frames", args.num_frames, 1), ("--input-size", args.input_size, 1),
                             ("--in-channels", args.in_channels, 1), ("--tubelet-frames", args.tubelet_frames, 1),
                             ("--num-classes", args.num_classes, 0)]:
        if value is not None and value < low:
            raise LatteError(f"{flag} must be >= {low}, got {value}")
    text = args.model in TEXT_MODELS
    given = {key: getattr(args, key) for key in ("conditioning", "num_classes", "num_frames", "input_size")
             if getattr(args, key) is not None}
    if text and any(key in given for key in CLASS_ONLY):
        flag = next(f"--{key.replace('_', '-')}" for key in CLASS_ONLY if key in given)
        raise LatteError(f"{flag} applies to class/unconditional models; {args.model} is text-to-video")
    rows = []  # all built first: a bad option is one line, not a table cut short
    for variant in args.variant:
        options = dict(variant=variant, patch_embed=args.patch_embed, tubelet_frames=args.tubelet_frames,
                       temporal_pos=args.temporal_pos, in_channels=args.in_channels,
                       learn_sigma=not args.no_learn_sigma, **given)
        with torch.device("meta"):
            model = create_model(args.model, **options)
        rows.append(f"{args.model:<12} {variant:>7} {model.num_parameters():>14,} "
                    f"{model.num_parameters(trainable_only=False):>14,} {forward_flops(model) / 1e9:>12.2f}")
    print(f"{'model':<12} {'variant':>7} {'trainable':>14} {'total':>14} {'GFLOPs/clip':>12}")
    print("\n".join(rows))
    return 0
