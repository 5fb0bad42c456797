"""Videos per second of `latte sample`'s path (transformer + optional VAE decode) and feature
throughput of `latte eval`'s detectors, on random weights.

    # the GPU figures (Latte-XL/2, UCF101-like: 101 classes, guidance 7, 16 x 256 x 256 videos):
    python benchmarks/sampling_speed.py --device cuda --model Latte-XL/2 --batch 8 --vae --compile \\
        --rows ddpm:250,ddim:50,dpm-solver:20,dpm-solver-sde:20 --cache none,pab --eval-clips 64
    # the same on CPU with a tiny model (shows it works; figures mean little):
    python benchmarks/sampling_speed.py --model Latte-T/2 --hidden-size 64 --depth 4 --heads 4 --frames 8 \\
        --size 16 --batch 2 --rows ddim:10,dpm-solver:5 --cache none,pab --eval-clips 2

Weights are random (N(0, 0.02) everywhere, so attention and modulation do real work rather than
the zero-initialised identity); speed does not depend on them. "cpu s" is this process's CPU time:
on a shared CPU compare that, not wall time. With --cache pab each row also reports
the PSNR of the cached videos against the uncached ones (same seeds) and the share of attention
calls that were computed. The VAE is a random AutoencoderKL with the Stable Diffusion VAE's
architecture (benchmarks/cache_speedup.py), decoding in bf16 chunks of 32 frames under --precision bf16.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from failures import one_line, show_traceback  # benchmarks/failures.py, beside this file

from latte.diffusion import GaussianDiffusion
from latte.host_memory import keep_freed_memory
from latte.models import compile_blocks, create_model
from latte.sampling import SampleRequest, generate


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def randomize(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def random_vae(device: torch.device, precision: str):
    from cache_speedup import make_vae

    from latte.vae import load_vae

    folder = Path(tempfile.mkdtemp(prefix="latte-speed-vae-"))
    make_vae(folder)
    return load_vae(str(folder), device=device, dtype=torch.bfloat16 if precision == "bf16" else None)


def detector_throughput(clips: int, batch: int, device: torch.device, precision: str) -> dict[str, float]:
    """Clips/s of I3D (16 x 224 x 224 after resizing) and of Inception-v3 over every frame (16 x 299 x 299)."""
    from latte.metrics.evaluate import EvalOptions, build_detectors

    options = EvalOptions(fake="", real="", metrics=("fvd", "fid"), device=str(device), precision=precision)
    detectors, _ = build_detectors(options, device)
    data = torch.randint(0, 256, (batch, 16, 256, 256, 3), dtype=torch.uint8)
    rates = {}
    for metric, detector in detectors.items():
        detector(data[:1])  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(max(1, clips // batch)):
            detector(data)
        sync(device)
        rates[metric] = max(1, clips // batch) * batch / (time.perf_counter() - start)
    return rates


def i3d_layouts(clips: int, batch: int) -> dict[str, float]:
    """CPU: I3D clips/s with channels-last activations (what latte runs) and contiguous ones, in turns."""
    from latte.metrics.i3d import i3d_preprocess, load_i3d

    i3d = load_i3d().eval()
    x = i3d_preprocess(torch.randint(0, 256, (batch, 16, 256, 256, 3), dtype=torch.uint8))
    layouts = {"channels-last": torch.channels_last_3d, "contiguous": torch.contiguous_format}
    seconds = dict.fromkeys(layouts, 0.0)
    with torch.inference_mode():
        i3d(x[:1])
        for _ in range(max(1, clips // batch)):
            for name, layout in layouts.items():
                i3d.cpu_memory_format = layout
                start = time.perf_counter()
                i3d(x)
                seconds[name] += time.perf_counter() - start
    return {name: max(1, clips // batch) * batch / s for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Latte-XL/2")
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="latent side (256 px / 8)")
    parser.add_argument("--classes", type=int, default=101)
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--batch", type=int, default=8, help="videos per batch (guidance doubles the model batch)")
    parser.add_argument("--rows", default="ddpm:250,ddim:50,dpm-solver:20,dpm-solver-sde:20")
    parser.add_argument("--cache", default="none,pab",
                        help="comma-separated: none, pab, or pab:OPTIONS with ';' between kinds "
                             "(e.g. pab:spatial=3@50-950;temporal=6@50-950)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA")
    parser.add_argument("--compile", action="store_true", help="compile each block (first call of each row warms up)")
    parser.add_argument("--vae", action="store_true", help="include decoding by a random SD-architecture VAE")
    parser.add_argument("--eval-clips", type=int, default=0, help="also time I3D and Inception on this many clips")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    keep_freed_memory()  # the host-memory policy of the latte command (LATTE_SYSTEM_MALLOC=1: glibc's)

    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    options = {k: v for k, v in (("hidden_size", args.hidden_size), ("depth", args.depth), ("num_heads", args.heads))
               if v is not None}
    model = create_model(args.model, num_classes=args.classes, num_frames=args.frames, input_size=args.size,
                         in_channels=4, learn_sigma=True, **options)
    model = randomize(model).eval().to(device)
    if args.compile:
        compile_blocks(model)
        print(f"compiled {len(model.blocks)} blocks")
    diffusion = GaussianDiffusion(learn_sigma=True)
    vae = random_vae(device, precision) if args.vae else None
    print(f"{args.model} {model.num_parameters() / 1e6:.1f} M params, {args.batch} videos of {args.frames} x "
          f"{args.size * 8 if vae else args.size}^2, guidance {args.cfg_scale}, {precision}, device {device}"
          f"{', compiled' if args.compile else ''}{', VAE decode' if vae else ''}")
    print(f"{'row':<16} {'cache':<36} {'s/batch':>8} {'cpu s':>8} {'videos/s':>9} {'2048 videos':>12} "
          f"{'PSNR vs none':>13} {'attn computed':>14}")
    failed = []
    for spec in args.rows.split(","):
        sampler, steps = spec.split(":")
        plain = None
        for cache in args.cache.split(","):
            kind, _, cache_options = cache.partition(":")
            request = SampleRequest(num_videos=args.batch, batch_size=args.batch, sampler=sampler, steps=int(steps),
                                    cfg_scale=args.cfg_scale, precision=precision,
                                    cache=None if kind == "none" else kind,
                                    cache_options=cache_options.replace(";", ",") or None)
            warm = SampleRequest(**{**request.__dict__, "steps": 2})
            try:
                generate(model, diffusion, warm, device=device, progress=False)  # warm-up (and compile)
                counts = {}
                sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                videos, _ = generate(model, diffusion, request, vae=vae, device=device, progress=False,
                                     cache_stats=counts)
                sync(device)
            except Exception as error:  # one broken row must not cost the others
                print(f"{spec:<16} {cache:<36} failed: {one_line(error)}", flush=True)
                show_traceback(f"{spec} {cache}", error)
                failed.append(f"{spec} {cache}")
                continue
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            psnr = "-"
            if kind == "none":
                plain = videos
            elif plain is not None:  # against this sampler's uncached videos (none when that row failed)
                mse = ((videos - plain) / 2).pow(2).mean().item()
                psnr = f"{10 * math.log10(1 / max(mse, 1e-12)):.1f} dB"
            share = f"{counts['computed'] / max(counts['calls'], 1):.0%}" if counts else "-"
            rate = args.batch / seconds
            print(f"{spec:<16} {cache:<36} {seconds:>8.2f} {cpu_seconds:>8.2f} {rate:>9.3f} {2048 / rate / 60:>10.1f} m {psnr:>13} {share:>14}",
                  flush=True)
    if args.eval_clips:
        rates = detector_throughput(args.eval_clips, args.eval_batch, device, precision)
        print("eval features: " + ", ".join(f"{'I3D' if m == 'fvd' else 'Inception (16 frames)'} {r:.2f} clips/s"
                                            for m, r in rates.items()))
        if device.type == "cpu":
            layouts = i3d_layouts(args.eval_clips, args.eval_batch)
            print("I3D activations on CPU: " + ", ".join(f"{name} {r:.2f} clips/s" for name, r in layouts.items())
                  + f" ({layouts['channels-last'] / layouts['contiguous']:.2f}x)")
    if failed:
        raise SystemExit(f"rows that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
