"""Forward and forward+backward time of our Latte-S/2 against diffusers' LatteTransformer3DModel
configured to the same width, heads, layers, patch and frames, in one process, interleaved.

    python benchmarks/model_speed.py                      # CPU, batch 1, 16 x 32 x 32 x 4 latents
    python benchmarks/model_speed.py --device cuda --batch 8 --dtype bf16
    # the built-in preset's model at its sampling batch (64 videos, guided: 128):
    python benchmarks/model_speed.py --model Latte-T/4 --option hidden_size=128 --option depth=4 \
        --option num_heads=4 --option in_channels=1 --frames 8 --size 32 --batch 128

The diffusers model is built with cross_attention_dim=None (its spatial blocks then have
self-attention only, like the class/unconditional Latte) and fed a one-token caption, which
its caption projection needs; both models use scaled_dot_product_attention.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from latte.diffusion.samplers import parse_option_value
from latte.errors import LatteError
from latte.models import create_model


def build_diffusers(hidden: int, heads: int, depth: int, patch: int, frames: int, size: int, channels: int):
    from diffusers import LatteTransformer3DModel

    return LatteTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=channels,
        out_channels=2 * channels, num_layers=depth // 2, cross_attention_dim=None, attention_bias=True,
        sample_size=size, patch_size=patch, activation_fn="gelu-approximate", norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=hidden, video_length=frames)


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Latte-S/2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a model option of ours (e.g. hidden_size=128); diffusers' model follows the shape")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    options = {key: parse_option_value(value) for key, _, value in (o.partition("=") for o in args.option)}
    try:
        ours = create_model(args.model, num_frames=args.frames, input_size=args.size, **options).to(args.device)
    except LatteError as error:
        parser.error(str(error))
    c = ours.config
    theirs = build_diffusers(c.hidden_size, c.num_heads, c.depth, c.patch_size, args.frames, args.size,
                             c.in_channels).to(args.device)
    x = torch.randn(args.batch, c.in_channels, args.frames, args.size, args.size, device=args.device)
    t = torch.randint(0, 1000, (args.batch,), device=args.device)
    caption = torch.zeros(args.batch, 1, c.hidden_size, device=args.device)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def run_ours():
        return ours(x, t)

    def run_theirs():
        return theirs(x, t, encoder_hidden_states=caption, return_dict=False)[0]

    def forward(fn):
        with torch.no_grad(), autocast:
            fn()

    def forward_backward(fn):
        with autocast:
            out = fn()
        out.float().square().mean().backward()

    print(f"{args.model}: ours {ours.num_parameters():,} params, diffusers "
          f"{sum(p.numel() for p in theirs.parameters()):,} params; batch {args.batch}, {args.frames} frames, "
          f"{args.size}x{args.size}x{c.in_channels} latents, {args.device} {args.dtype}, {torch.get_num_threads()} threads")
    for phase, step in (("forward", forward), ("forward+backward", forward_backward)):
        times = {"ours": [], "diffusers": []}
        for _ in range(2):  # warm-up
            step(run_ours), step(run_theirs)
        for _ in range(args.repeats):  # interleaved so drift hits both alike
            times["ours"].append(timed(lambda step=step: step(run_ours), args.device))
            times["diffusers"].append(timed(lambda step=step: step(run_theirs), args.device))
        ours_ms, theirs_ms = (1000 * statistics.median(times[k]) for k in ("ours", "diffusers"))
        print(f"{phase:>17}: ours {ours_ms:9.1f} ms   diffusers {theirs_ms:9.1f} ms   "
              f"diffusers/ours = {theirs_ms / ours_ms:.2f}x  (median of {args.repeats})")


if __name__ == "__main__":
    main()
