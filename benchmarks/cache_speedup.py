"""Training step time with the VAE in the loop versus from a latent cache (`latte encode`).

    python benchmarks/cache_speedup.py [--resolution 128] [--frames 8] [--batch 2] [--steps 4]

The VAE is a randomly initialised AutoencoderKL with the Stable Diffusion VAE's architecture
(block_out_channels 128/256/512/512, two layers per block: the same compute as sd-vae-ft-ema),
saved to a temporary folder and loaded through `--vae` like a real one. Both runs train the same
model (default Latte-S/2) on the same Moving MNIST clips with the same global batch.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from latte.data.cache import CacheSettings, encode_dataset
from latte.train.checks import load_config
from latte.train.trainer import Trainer


def make_vae(folder: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = ("DownEncoderBlock2D",) * 4
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=blocks, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                  norm_num_groups=32, sample_size=256).save_pretrained(folder)


def step_times(config, steps: int) -> list[float]:
    trainer = Trainer(config, log=lambda *_: None)
    loader = trainer._loader()
    trainer.train_step(loader)  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(loader)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Latte-S/2")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_vae(tmp / "vae")
        clips = args.batch * (args.steps + 1)
        common = [f"model.name={args.model}", "model.learn_sigma=true", f"data.num_frames={args.frames}",
                  "data.frame_interval=1", f"data.resolution={args.resolution}", "data.num_workers=0",
                  f"train.batch_size={args.batch}", "train.device=cpu", "train.checkpoint_every=1000000"]
        start = time.perf_counter()
        options = {"num_frames": args.frames, "frame_interval": 1, "resolution": args.resolution, "length": clips}
        encode_dataset(tmp / "cache", CacheSettings("moving-mnist", None, str(tmp / "vae"), options=options),
                       batch_size=args.batch, device="cpu", log=lambda *_: None)
        encode_seconds = time.perf_counter() - start
        on_the_fly = load_config(None, None, common + [f"data.vae={tmp / 'vae'}", f"train.output_dir={tmp / 'a'}"])
        cached = load_config(None, None, common + [f"data.cache={tmp / 'cache'}", f"train.output_dir={tmp / 'b'}"])
        vae_times = step_times(on_the_fly, args.steps)
        cache_times = step_times(cached, args.steps)
    vae_s, cache_s = statistics.median(vae_times), statistics.median(cache_times)
    print(f"{args.model}, {args.batch} clips x {args.frames} frames x {args.resolution}px per step, "
          f"CPU {torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"  VAE in the loop : {vae_s:7.2f} s/step")
    print(f"  latent cache    : {cache_s:7.2f} s/step   ({vae_s / cache_s:.2f}x faster)")
    print(f"  one-off encoding of {clips} clips: {encode_seconds:.1f} s")


if __name__ == "__main__":
    main()
