"""One training run, `train(config)`: set up, print the resolved config, train (Trainer.fit), and write
sample videos at the end."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from latte.checkpoint_files import tidy_run_folder
from latte.config import Config
from latte.files import FolderLock, atomic_write_text, check_output_folder
from latte.sampling import SampleRequest, generate
from latte.train import distributed
from latte.train.trainer import Trainer, describe
from latte.video_io import save_videos


def sample_request(config: Config, num_videos: int | None = None, prompts: list[str] | None = None) -> SampleRequest:
    s = config.sample
    return SampleRequest(num_videos=num_videos or s.num_videos, sampler=s.sampler, steps=s.steps,
                         cfg_scale=s.cfg_scale, seed=config.train.seed, batch_size=s.num_videos, prompts=prompts)


def sample_prompts(trainer: Trainer) -> list[str] | None:
    """Text models: the first sample.num_videos captions of the training data (written beside the samples)."""
    if trainer.text_encoder is None:
        return None
    count = min(trainer.config.sample.num_videos, len(trainer.dataset))
    return [trainer.dataset[i]["caption"] for i in range(count)]


def write_samples(trainer: Trainer, name: str, formats=(".png",)) -> list[Path]:
    """EMA samples of the current model into <output>/samples/<name>.<format> (text models: their prompts
    in <name>.txt, one line per video)."""
    prompts = sample_prompts(trainer)
    videos, _ = generate(trainer.ema, trainer.diffusion, sample_request(trainer.config, prompts=prompts),
                         vae=trainer.vae, device=trainer.device, progress=False, text_encoder=trainer.text_encoder)
    folder = trainer.output / "samples"
    written = []
    for suffix in formats:
        written += save_videos(folder / f"{name}{suffix}", videos, fps=trainer.config.sample.fps)
    if prompts is not None:
        atomic_write_text(folder / f"{name}.txt", "".join(prompts[i % len(prompts)] + "\n" for i in range(len(videos))))
    return written


def train(config: Config, write_samples_at_end: bool = True, log=print) -> Trainer:
    check_output_folder(config.train.output_dir, "run folder", holds="run")
    # one writer per run folder (rank 0 of a torchrun job holds the lock for all its ranks)
    lock = FolderLock(config.train.output_dir, "train") if int(os.environ.get("RANK", "0")) == 0 else None
    with lock or contextlib.nullcontext():
        return _train(config, write_samples_at_end, log)


def _train(config: Config, write_samples_at_end: bool, log) -> Trainer:
    trainer = Trainer(config, log=log)
    log = trainer.log  # silent on ranks other than 0
    if trainer.dist.main:
        tidy_run_folder(trainer.output, trainer.step)
        atomic_write_text(trainer.output / "config.yaml", config.to_yaml(), "run config")
        log("resolved config:\n" + "\n".join("  " + line for line in config.to_yaml().splitlines()))
        log(describe(trainer))
    def interim(tr: Trainer) -> None:
        log(f"samples at step {tr.step}: {write_samples(tr, f'step_{tr.step:07d}')[0]}")

    try:
        checkpoint = trainer.fit(on_sample=interim)
        if checkpoint:
            log(f"checkpoint: {checkpoint}")
        if write_samples_at_end:
            with trainer.gathered_ema():  # FSDP: every rank joins the gather of the EMA weights
                if trainer.dist.main:
                    paths = write_samples(trainer, "final", formats=(".png", ".mp4"))
                    log(f"samples: {paths[0]} (filmstrip) and {paths[1]} (all {config.sample.num_videos} videos in one)")
    finally:
        distributed.teardown(trainer.dist)
    sys.stdout.flush()
    return trainer

