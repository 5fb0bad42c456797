"""`latte sample`: videos from a training checkpoint (EMA weights by default).

`--output` ending in .mp4/.gif/.png/.npz writes that format; an output without a suffix is a
folder for mass sampling (e.g. 2048 videos for FVD): one mp4 per video named by its index, seeds
per index, existing files skipped (resumable), indices split across processes under torchrun, and
a manifest.jsonl naming each video's caption or class (a text model's folder reads back as a
`captions` dataset).
Text-to-video checkpoints take --prompt (repeatable) or --prompt-file; video i shows prompt i mod the
prompt count, guided (--cfg-scale) against the empty prompt or --negative-prompt.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from latte.diffusion import SAMPLERS
from latte.errors import LatteError

SUFFIXES = (".mp4", ".gif", ".png", ".npz")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sample", help="generate videos from a checkpoint",
        description="Generate videos from a training checkpoint or run directory (its latest checkpoint). "
                    "The same seed gives the same videos.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    parser.add_argument("--output", required=True,
                        help="FILE.mp4 | .gif | .png (filmstrip grid) | .npz (raw arrays), or a folder for one mp4 per video")
    parser.add_argument("--num-videos", type=int, default=None, help="default: 4, or one per prompt")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the run's sample.sampler")
    parser.add_argument("--steps", type=int, default=None,
                        help="default: the run's sample.steps, else the sampler's (ddpm 250, ddim 50, the others 20)")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help="classifier-free guidance scale (class and text models; default: the run's)")
    parser.add_argument("--class-label", type=int, default=None, help="class of every video (default: cycle classes)")
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="text models: a prompt (repeatable; videos cycle through the prompts)")
    parser.add_argument("--prompt-file", metavar="FILE", help="text models: prompts, one per line (blank lines skipped)")
    parser.add_argument("--negative-prompt", default="", metavar="TEXT",
                        help="text models: what guidance steers away from (default: the empty prompt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=None, help="frames per video (default: as trained)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    parser.add_argument("--scheduler-options", default=None, metavar="KEY=VALUE,...",
                        help="other settings of the sampler's diffusers scheduler, e.g. solver_order=3 (docs/sampling.md)")
    parser.add_argument("--fps", type=int, default=None)
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                        help="transformer (bf16 autocast) and VAE precision (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--cache", choices=["none", "pab"], default="none",
                        help="pab: Pyramid Attention Broadcast, attention outputs reused across steps (docs/sampling.md)")
    parser.add_argument("--cache-options", default=None, metavar="SPEC",
                        help="PAB: KIND=INTERVAL[@LO-HI],... for spatial/temporal/cross "
                             "(default spatial=2@100-800,temporal=4@100-800,cross=6@100-900)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block in place")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file (never a file a run depends on; folders resume instead)")
    return parser


def load_for_sampling(checkpoint: str, use_ema: bool = True):
    """(model, diffusion, run config, vae or None) from a training checkpoint."""
    from latte.train.checkpoint import load_checkpoint
    from latte.train.config import config_from_dict
    from latte.train.finetune import run_model
    from latte.train.build import clip_tokens, make_diffusion

    state = load_checkpoint(checkpoint)
    config = config_from_dict(state["config"])
    model = run_model(state, use_ema)  # a LoRA run: its verified base with the adapters merged in
    vae_spec = state.get("vae") or "none"
    vae = None
    if vae_spec != "none":
        from latte.vae import load_vae

        vae = load_vae(vae_spec)
    return model.eval(), make_diffusion(config, model.config.learn_sigma, clip_tokens(model.config)), config, vae


def text_encoder_for(config, device="cpu"):
    """The text encoder a run trained with (None for class/unconditional runs)."""
    if not config.model.text_encoder:
        return None
    from latte.text_encoder import TextEncoder

    return TextEncoder(config.model.text_encoder, config.model.text_max_length, device=device)


def read_prompts(prompts: list[str], prompt_file: str | None) -> list[str]:
    """--prompt values, then the lines of --prompt-file (stripped, blank lines skipped)."""
    prompts = list(prompts)
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise LatteError(f"prompt file not found: {path}")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise LatteError(f"prompt file {path} holds no prompts")
    return prompts


def write_manifest(folder: Path, model, request) -> Path:
    """folder/manifest.jsonl: one {"path", "seed" (the video's own noise seed), "caption" or "label"} line
    per video of the request."""
    import json

    from latte.sampling import video_conditions, video_seed
    from latte.video_io import atomic_path

    indices = list(range(request.num_videos))
    lines = [json.dumps({"path": f"{i:06d}.mp4", "seed": video_seed(request.seed, i), **asked})
             for i, asked in zip(indices, video_conditions(indices, model, request))]
    with atomic_path(folder / "manifest.jsonl") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "manifest.jsonl"


def run(args) -> int:
    import torch

    from latte.devices import pick_device
    from latte.diffusion.samplers import parse_scheduler_options, scheduler_for
    from latte.sampling import SampleRequest, check_speed_options, default_precision, generate
    from latte.train.parallelize import compile_blocks
    from latte.video_io import save_videos

    from latte.sample_folder import check_arguments, check_output, claim_folder

    if not args.output.strip():  # Path("") is the working directory
        raise LatteError("--output is empty: give a file or a folder")
    output = Path(args.output)
    folder_mode = output.suffix == ""
    if not folder_mode and output.suffix not in SUFFIXES:
        raise LatteError(f"--output must end in {', '.join(SUFFIXES)} or be a folder, got {output}")
    check_arguments(args)
    scheduler_options = parse_scheduler_options(args.scheduler_options) or None
    prompts = read_prompts(args.prompt, args.prompt_file)
    num_videos = args.num_videos if args.num_videos is not None else (len(prompts) or 4)
    check_output(output, folder_mode, args.overwrite)
    device = pick_device(args.device)
    precision = args.precision or default_precision(device)
    model, diffusion, config, vae = load_for_sampling(args.checkpoint, use_ema=not args.no_ema)
    if vae is not None:
        vae.to(device, torch.bfloat16 if precision == "bf16" else None)
    if args.compile:
        compile_blocks(model)
    text_encoder = text_encoder_for(config, device) if prompts else None
    request = SampleRequest(num_videos=num_videos, sampler=args.sampler or config.sample.sampler,
                            steps=args.steps if args.steps is not None else (None if args.sampler else config.sample.steps),
                            cfg_scale=config.sample.cfg_scale if args.cfg_scale is None else args.cfg_scale,
                            class_label=args.class_label, seed=args.seed, batch_size=args.batch_size,
                            num_frames=args.num_frames, eta=args.eta, prompts=prompts or None,
                            negative_prompt=args.negative_prompt, precision=precision,
                            cache=None if args.cache == "none" else args.cache, cache_options=args.cache_options,
                            scheduler_options=scheduler_options)
    check_speed_options(request, diffusion.num_timesteps)
    scheduler_for(diffusion, request.sampler, request.steps, request.scheduler_options, request.grid)  # before any work
    fps = args.fps if args.fps is not None else config.sample.fps
    if not folder_mode:
        videos, _ = generate(model, diffusion, request, vae=vae, device=device, text_encoder=text_encoder)
        for path in save_videos(output, videos, fps=fps):
            print(path)
        return 0
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    lock = claim_folder(output, args, request, fps) if rank == 0 else None  # one writer, one set of settings
    try:
        if rank == 0:
            write_manifest(output, model, request)
        todo = [i for i in range(rank, num_videos, world) if not (output / f"{i:06d}.mp4").exists()]
        print(f"rank {rank}: {len(todo)} of {len(range(rank, num_videos, world))} videos to generate into {output}")
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start:start + args.batch_size]
            videos, _ = generate(model, diffusion, request, indices=chunk, vae=vae, device=device, progress=False,
                                 text_encoder=text_encoder)
            for index, video in zip(chunk, videos):
                save_videos(output / f"{index:06d}.mp4", video[None], fps=fps)
            print(f"rank {rank}: {start + len(chunk)}/{len(todo)} written", flush=True)
    finally:
        if lock is not None:
            lock.release()
    return 0
