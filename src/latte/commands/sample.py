"""`latte sample`: videos from a training checkpoint (EMA weights by default), through latte.inference.

`--output` ending in .mp4/.gif/.png/.npz writes that format; an output without a suffix is a
folder for mass sampling (e.g. 2048 videos for FVD): one mp4 per video named by its index, seeds
per index, existing files skipped (resumable), indices split across processes under torchrun, and
a manifest.jsonl naming each video's caption or class (a text model's folder reads back as a
`captions` dataset).
Text-to-video checkpoints take --prompt (repeatable) or --prompt-file; video i shows prompt i mod the
prompt count, guided (--cfg-scale) against the empty prompt or --negative-prompt.
Frame conditioning (latte.frame_conditioning): --image (frame 0 given), --context (a clip's last K frames
given as the first K), --end-image (the last frame given), and --num-frames beyond the model's window,
window by window; a folder's manifest records each input's sha256.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from latte.cli_arguments import add_model_arguments, open_generator
from latte.diffusion import SAMPLERS
from latte.diffusion.samplers import parse_scheduler_options
from latte.errors import LatteError
from latte.inference import VideoGenerator, load_run
from latte.sample_folder import check_arguments, check_output, claim_folder
from latte.sampling import video_seed
from latte.video_io import atomic_path, save_videos

SUFFIXES = (".mp4", ".gif", ".png", ".npz")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sample", help="generate videos from a checkpoint",
        description="Generate videos from a training checkpoint or run directory (its latest checkpoint). "
                    "The same seed gives the same videos.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(parser, "checkpoint file or run directory")
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
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block in place")
    frames = parser.add_argument_group(
        "frame conditioning", "given frames are kept exactly; the model must have trained with train.mask_* "
        "(else refused, unless --force). More --num-frames than the model's window: window by window, each "
        "given the last --overlap frames of the one before, when frames are given, --overlap is set or the run "
        "trained with masks (else one pass, as before).")
    frames.add_argument("--image", metavar="FILE", help="image-to-video: the first frame (png, jpg, ...)")
    frames.add_argument("--context", metavar="PATH",
                        help="continue a clip (.mp4, .gif, .npz from latte sample, or a folder of frames): its "
                             "last --context-frames frames are the first ones")
    frames.add_argument("--context-frames", type=int, default=None, metavar="K",
                        help="frames of the context given; None: the run's train.mask_prefix_frames, else half the window")
    frames.add_argument("--end-image", metavar="FILE", help="the last frame (with --image: interpolation)")
    frames.add_argument("--overlap", type=int, default=None, metavar="O",
                        help="long videos: frames each window shares with the one before; None: half the window")
    frames.add_argument("--image-cfg-scale", type=float, default=1.0, metavar="S",
                        help="guidance of the given frames (1 = off), as Open-Sora 2.0: out = n0 + S (nf - n0) + "
                             "C (cf - nf), cf/nf the model with the given frames and the class or prompt / the null "
                             "class or negative prompt, n0 the null one without them (those frames generated too), "
                             "C the --cfg-scale; without class or text guidance out = c0 + S (cf - c0)")
    frames.add_argument("--force", action="store_true",
                        help="sample given frames from a checkpoint trained without the frame masks they need")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file (never a file a run depends on; folders resume instead)")
    return parser


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


def write_manifest(folder: Path, generator: VideoGenerator, request, inputs: list[dict] | None = None) -> Path:
    """folder/manifest.jsonl: one {"path", "seed" (the video's own noise seed), "caption" or "label"} line
    per video of the request, with "given" (each frame input's flag, path, sha256 and frames) when frames
    are given."""
    given = {"given": inputs} if inputs else {}
    lines = [json.dumps({"path": f"{i:06d}.mp4", "seed": video_seed(request.seed, i), **asked, **given})
             for i, asked in enumerate(generator.conditions(request))]
    with atomic_path(folder / "manifest.jsonl") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "manifest.jsonl"


def run(args) -> int:
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
    generator, precision, cache = open_generator(args, load_run)
    if args.compile:
        generator.compile()
    given, given_at, inputs = generator.read_given(image=args.image, context=args.context,
                                                   context_frames=args.context_frames, end_image=args.end_image)
    request = generator.request(num_videos=num_videos, sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale,
                                class_label=args.class_label, seed=args.seed, batch_size=args.batch_size,
                                num_frames=args.num_frames, eta=args.eta, prompts=prompts or None,
                                negative_prompt=args.negative_prompt, precision=precision,
                                cache=cache, cache_options=args.cache_options,
                                scheduler_options=scheduler_options, given=given, given_at=given_at,
                                overlap=args.overlap, image_cfg_scale=args.image_cfg_scale)
    generator.check(request, force=args.force)  # before any work
    fps = args.fps if args.fps is not None else generator.fps
    if not folder_mode:
        videos, _ = generator.generate(request)
        for path in save_videos(output, videos, fps=fps, given_at=given_at):
            print(path)
        return 0
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    lock = claim_folder(output, args, request, fps, inputs) if rank == 0 else None  # one writer, one set of settings
    try:
        if rank == 0:
            write_manifest(output, generator, request, inputs)
        todo = [i for i in range(rank, num_videos, world) if not (output / f"{i:06d}.mp4").exists()]
        print(f"rank {rank}: {len(todo)} of {len(range(rank, num_videos, world))} videos to generate into {output}")
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start:start + args.batch_size]
            videos, _ = generator.generate(request, indices=chunk, progress=False)
            for index, video in zip(chunk, videos):
                save_videos(output / f"{index:06d}.mp4", video[None], fps=fps)
            print(f"rank {rank}: {start + len(chunk)}/{len(todo)} written", flush=True)
    finally:
        if lock is not None:
            lock.release()
    return 0
