"""`latte demo`: a local web page that generates videos from a run (latte.demo, over latte.inference).

The checkpoint is loaded (and so checked) before the server starts; gradio is the optional extra
`latte[demo]`, imported only by this command. Local by default: 127.0.0.1, no share link unless
--share, gradio's analytics and update checks off. The results, and gradio's uploads and copies (unless
GRADIO_TEMP_DIR names a folder of its own), live in a temporary folder that goes when the server stops, by
Ctrl+C or SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile

from latte.cli_arguments import add_model_arguments, open_generator
from latte.demo import Demo, import_gradio, run_prompts, serve
from latte.errors import LatteError
from latte.inference import load_generator


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="serve a web page that generates videos from a checkpoint",
        description="Serve one web page (gradio) that generates videos from a training run, a latte checkpoint, "
                    "an official Latte .pt or a diffusers folder, loaded once at start. Needs 'latte[demo]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(parser, "run directory, checkpoint file or model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off: nothing "
                                                             "leaves the machine)")
    parser.add_argument("--queue-size", type=int, default=8, help="requests that may wait behind the running one")
    parser.add_argument("--example-prompt", action="append", default=[], metavar="TEXT",
                        help="text models: an example prompt shown under the prompt box (repeatable; default: the "
                             "captions of the run's last sample filmstrip)")
    return parser


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise LatteError(f"--port must be in [1, 65535], got {args.port}")
    if args.queue_size < 1:
        raise LatteError(f"--queue-size must be at least 1, got {args.queue_size}")
    generator, precision, cache = open_generator(args, load_generator)
    generator.check(generator.request(precision=precision, cache=cache, cache_options=args.cache_options))  # first
    generator.load_text_encoder()  # text models: at start, not on the first click
    # SIGTERM (a service manager's stop) leaves as Ctrl+C does, through the `with`: the results folder goes
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with tempfile.TemporaryDirectory(prefix="latte-demo-") as folder:
            if not os.environ.get("GRADIO_TEMP_DIR"):  # gradio's uploads and copies: in the folder that goes
                os.environ["GRADIO_TEMP_DIR"] = os.path.join(folder, "gradio")
            import_gradio()  # a missing extra is a one-line error before the server starts
            demo = Demo(generator, folder, precision, cache, args.cache_options,
                        args.example_prompt or run_prompts(generator))
            print(f"latte demo: {generator.path} on {generator.device} ({precision}); serving "
                  f"http://{args.host}:{args.port} (Ctrl+C stops)", flush=True)
            serve(demo, args.host, args.port, args.share, args.queue_size)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
