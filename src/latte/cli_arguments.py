"""Command-line arguments that several commands share (commands never import one another):
where a run's config comes from (`latte train`, `latte ablate`), which dataset clips are read
(`latte encode`, `latte data inspect`), which model samples, where and how (`latte sample`, `latte demo`),
and which digit reader reads Moving MNIST samples (`latte ablate` and the benchmarks that read digits)."""
from __future__ import annotations

import argparse

import yaml

from latte.config import list_presets
from latte.data import DATASET_NAMES
from latte.devices import PRECISIONS, default_precision, pick_device
from latte.errors import LatteError
from latte.metrics.mnist import READER_STEPS

DEFAULT_PRESET = "moving-mnist"  # what `latte train` and `latte ablate` train without a preset or config


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (0 never means "the default" here)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_reader_arguments(parser: argparse.ArgumentParser, steps_help: str | None = None) -> None:
    """--classifier-steps and --cache-dir: the Moving MNIST digit reader (latte.metrics.mnist.cached_classifier),
    trained once per setting and cached with the real statistics. steps_help=argparse.SUPPRESS hides the
    steps from --help where only tests change them."""
    parser.add_argument("--classifier-steps", type=positive_int, default=READER_STEPS, metavar="N",
                        help=steps_help or "training steps of each digit reader, part of its cache key "
                                           "(default: %(default)s)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="digit reader and real-statistics cache (default $LATTE_CACHE_DIR/stats or "
                             "~/.cache/latte/stats)")


def add_config_arguments(parser: argparse.ArgumentParser, preset_default: str) -> None:
    """--preset, --config and --set: where a run's config comes from (train and ablate alike)."""
    parser.add_argument("--preset", choices=list_presets(), default=None,
                        help=f"named preset (default {DEFAULT_PRESET} {preset_default})")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file with sections model/diffusion/data/optim/train/sample")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=3e-4 (repeatable)")


def parse_options(pairs: list[str] | None) -> dict:
    """["split_file=a.txt", "length=100"] -> {"split_file": "a.txt", "length": 100} (values read as YAML scalars)."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LatteError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            options[key.strip().replace("-", "_")] = value
    return options


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset, --root, the clip options and --option (latte encode and latte data inspect alike)."""
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES, metavar="NAME",
                        help=f"one of {', '.join(DATASET_NAMES)}")
    parser.add_argument("--root", default=None, metavar="DIR",
                        help="dataset folder (captions: the manifest .csv/.jsonl); not needed for moving-mnist")
    parser.add_argument("--num-frames", type=int, default=16, metavar="N", help="frames per clip (default 16)")
    parser.add_argument("--frame-interval", type=int, default=None, metavar="N",
                        help="stride between clip frames in the source (default 3; moving-mnist 1)")
    parser.add_argument("--resolution", default=None, metavar="N|HxW",
                        help="output frame size (default 256; moving-mnist 32)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="dataset-specific option, repeatable (ucf101: split_file=...; moving-mnist: length=...)")


def dataset_keywords(args) -> dict:
    """build_dataset keyword options from the command line (unset ones: the dataset's defaults)."""
    options = {"num_frames": args.num_frames, "frame_interval": args.frame_interval, "resolution": args.resolution}
    return {**{k: v for k, v in options.items() if v is not None}, **parse_options(args.option)}


def add_model_arguments(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """--checkpoint, --no-ema, --device, --precision, --cache and --cache-options: the model a command samples
    with and how (latte sample and latte demo alike; open_generator reads them)."""
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="transformer (bf16 autocast) and VAE precision (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--cache", choices=["none", "pab"], default="none",
                        help="pab: Pyramid Attention Broadcast, attention outputs reused across steps (docs/sampling.md)")
    parser.add_argument("--cache-options", default=None, metavar="SPEC",
                        help="PAB: KIND=INTERVAL[@LO-HI],... for spatial/temporal/cross "
                             "(default spatial=2@100-800,temporal=4@100-800,cross=6@100-900)")


def open_generator(args, load) -> tuple:
    """(generator, precision, cache) of add_model_arguments' flags: `load(args.checkpoint, use_ema=...)`
    (latte.inference.load_run or load_generator) moved to --device at --precision (default: bf16 on CUDA, fp32
    elsewhere); cache None for --cache none."""
    device = pick_device(args.device)
    precision = args.precision or default_precision(device)
    generator = load(args.checkpoint, use_ema=not args.no_ema).to(device, precision)
    return generator, precision, None if args.cache == "none" else args.cache
