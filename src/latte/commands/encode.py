"""`latte encode`: pre-compute VAE latents of a dataset once into a sharded latent cache.

    latte encode --dataset ucf101 --root /data/UCF-101 --vae ema --output cache/ucf101
    latte train --config ucf101.yaml --data-cache cache/ucf101

Caption data sets can also store their caption embeddings (--text-encoder, the run's model.text_encoder):
text-to-video training then reads them instead of running the encoder on every batch.

Clips are the deterministic ones (first temporal crop, centre crop); --crops-per-video spreads more
crops over each video and --flip adds mirrored copies. Each shard is written atomically: rerun the
same command to resume an interrupted run (finished shards are kept; other settings are refused).
"""
from __future__ import annotations

import argparse
import os

from latte.cli_arguments import add_dataset_arguments, dataset_keywords
from latte.data.cache import CacheSettings, encode_dataset


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("encode", help="pre-compute VAE latents into a latent cache",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--vae", required=True, metavar="VAE",
                        help="diffusers AutoencoderKL folder, Hugging Face id, or ema / mse (sd-vae-ft-*)")
    parser.add_argument("--output", required=True, metavar="DIR", help="cache folder (created; resumed if present)")
    parser.add_argument("--crops-per-video", type=int, default=1, metavar="N",
                        help="temporal crops per video, evenly spaced (default 1: the first)")
    parser.add_argument("--flip", action="store_true", help="also store every clip mirrored")
    parser.add_argument("--shard-size", type=int, default=256, metavar="N", help="clips per shard file (default 256)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="clips per VAE call (default 8)")
    parser.add_argument("--chunk-size", type=int, default=32, metavar="N",
                        help="frames per VAE forward pass (default 32)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="storage precision of the latents (default float32)")
    parser.add_argument("--text-encoder", default=None, metavar="SPEC",
                        help="also store caption embeddings: minilm, or a Hugging Face folder / hub id (T5 ...)")
    parser.add_argument("--text-max-length", type=int, default=None, metavar="N",
                        help="caption tokens (default: 120 for T5, 32 for other encoders)")
    parser.add_argument("--no-std", action="store_true",
                        help="store only the posterior mean (half the size; training then sees the VAE's mode)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="video decoding processes (default: up to 4)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="VAE device (default auto)")
    return parser


def run(args) -> int:
    settings = CacheSettings(dataset=args.dataset, root=args.root, vae=args.vae, options=dataset_keywords(args),
                             crops_per_video=args.crops_per_video, mirrored=args.flip, shard_size=args.shard_size,
                             dtype=args.dtype, store_std=not args.no_std, text_encoder=args.text_encoder,
                             text_max_length=args.text_max_length)
    encode_dataset(args.output, settings, batch_size=args.batch_size, device=args.device, workers=args.workers,
                   chunk_size=args.chunk_size)
    return 0
