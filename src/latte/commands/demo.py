"""`latte demo`: a local web page that generates videos from a run (latte.demo, over latte.inference).

The checkpoint is loaded (and so checked) before the server starts; gradio is the optional extra
`latte[demo]`, imported only by this command. Local by default: 127.0.0.1, no share link unless
--share, gradio's analytics and update checks off.
"""
from __future__ import annotations

import argparse
import tempfile

from latte.demo import Demo, import_gradio, run_prompts, serve
from latte.devices import PRECISIONS, pick_device
from latte.errors import LatteError
from latte.inference import load_generator
from latte.sampling import default_precision


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="serve a web page that generates videos from a checkpoint",
        description="Serve one web page (gradio) that generates videos from a training run, a latte checkpoint, "
                    "an official Latte .pt or a diffusers folder, loaded once at start. Needs 'latte[demo]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoint file or model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off: nothing "
                                                             "leaves the machine)")
    parser.add_argument("--queue-size", type=int, default=8, help="requests that may wait behind the running one")
    parser.add_argument("--example-prompt", action="append", default=[], metavar="TEXT",
                        help="text models: an example prompt shown under the prompt box (repeatable; default: the "
                             "captions of the run's last sample filmstrip)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="transformer (bf16 autocast) and VAE precision (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--cache", choices=["none", "pab"], default="none",
                        help="pab: Pyramid Attention Broadcast, attention outputs reused across steps")
    parser.add_argument("--cache-options", default=None, metavar="SPEC",
                        help="PAB: KIND=INTERVAL[@LO-HI],... for spatial/temporal/cross (see latte sample --help)")
    return parser


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise LatteError(f"--port must be in [1, 65535], got {args.port}")
    if args.queue_size < 1:
        raise LatteError(f"--queue-size must be at least 1, got {args.queue_size}")
    device = pick_device(args.device)
    precision = args.precision or default_precision(device)
    cache = None if args.cache == "none" else args.cache
    generator = load_generator(args.checkpoint, use_ema=not args.no_ema).to(device, precision)
    generator.check(generator.request(precision=precision, cache=cache, cache_options=args.cache_options))  # first
    generator.load_text_encoder()  # text models: at start, not on the first click
    import_gradio()  # a missing extra is a one-line error before the server starts
    with tempfile.TemporaryDirectory(prefix="latte-demo-") as folder:
        demo = Demo(generator, folder, precision, cache, args.cache_options, args.example_prompt or run_prompts(generator))
        print(f"latte demo: {generator.path} on {device} ({precision}); serving http://{args.host}:{args.port} "
              "(Ctrl+C stops)", flush=True)
        serve(demo, args.host, args.port, args.share, args.queue_size)
    return 0
