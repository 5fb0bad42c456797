"""Inference: a trained model loaded once into a generator, then asked for videos (run -> generator -> video).

    generator = load_generator("runs/mnist")  # a run folder, a latte checkpoint, an official .pt or a diffusers folder
    videos, labels = generator.generate(generator.request(num_videos=4))  # (N, C, F, H, W) in [-1, 1]

A generator holds the network (eval mode; a LoRA run's verified base with its adapters merged), its
diffusion process, the run config (whose `sample` section gives the request's defaults), the VAE
that decodes its latents, the class names and, for text models, the text encoder (loaded on first
use). `latte sample`, `latte convert`, `latte ablate`'s evaluations and the benchmarks load through
here; nothing here imports latte.train.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from latte.checkpoint_files import load_checkpoint
from latte.config import Config, config_from_dict
from latte.devices import default_precision
from latte.diffusion import Objective, make_objective
from latte.diffusion.samplers import scheduler_for
from latte.errors import LatteError
from latte.frame_conditioning import check_trained, default_overlap, frame_layout, read_given
from latte.model_sources import DIFFUSERS, LATTE, OFFICIAL, open_source, run_model
from latte.models import Latte, compile_blocks, load_diffusers_transformer, load_official_checkpoint
from latte.sampling import SampleRequest, check_speed_options, generate, video_conditions
from latte.text_encoder import TextEncoder
from latte.vae import FrameVAE, load_vae


def text_encoder_for(config: Config, device="cpu") -> TextEncoder | None:
    """The text encoder a run trained with (None for class/unconditional runs)."""
    if not config.model.text_encoder:
        return None
    return TextEncoder(config.model.text_encoder, config.model.text_max_length, device=device)


@dataclass
class VideoGenerator:
    """A model ready to generate videos: `generate(request)` -> (videos (N, C, F, H, W) in [-1, 1], labels)."""

    model: Latte  # eval mode
    diffusion: Objective
    config: Config  # the run's config; for official and diffusers sources the defaults (they record none)
    vae: FrameVAE | None = None  # None: the model works in pixel space
    class_names: list[str] | None = None  # as the run's dataset named its classes (None: not recorded)
    kind: str = LATTE  # LATTE | OFFICIAL | DIFFUSERS (latte.model_sources)
    path: Path | None = None  # the checkpoint file or folder read
    device: torch.device = torch.device("cpu")
    text_encoder: TextEncoder | None = None  # text models: loaded by the first request with prompts

    @property
    def fps(self) -> int:
        return self.config.sample.fps

    def to(self, device, precision: str | None = None) -> VideoGenerator:
        """Move the network and VAE to `device`; the VAE runs in bf16 when `precision` is bf16 (default: bf16
        on CUDA, fp32 elsewhere), the network under bf16 autocast when the request asks for it."""
        self.device = torch.device(device)
        precision = precision or default_precision(self.device)
        self.model.to(self.device)
        if self.vae is not None:
            self.vae.to(self.device, torch.bfloat16 if precision == "bf16" else None)
        return self

    def compile(self) -> VideoGenerator:
        """torch.compile each transformer block in place (the first request pays the compile)."""
        compile_blocks(self.model)
        return self

    def request(self, **fields) -> SampleRequest:
        """A SampleRequest of `fields` (None values count as not given) over the run's sample settings: its
        sampler, steps and cfg_scale; a sampler given without steps takes that sampler's default step count.
        More frames than the model's window are made window by window (overlap: half a window) when the
        request gives frames or the run trained with frame masks; otherwise (or when the window is a single
        tubelet, which no overlap fits) in one pass, as before."""
        given = {k: v for k, v in fields.items() if v is not None}
        s = self.config.sample
        defaults = {"sampler": s.sampler, "steps": None if "sampler" in given else s.steps, "cfg_scale": s.cfg_scale}
        c = self.model.config
        longer = (given.get("num_frames") or c.num_frames) > c.num_frames
        # window by window, unless the window is one tubelet: no overlap leaves a frame to generate
        if (longer and c.num_frames > c.temporal_stride
                and (given.get("given") is not None or self.config.train.trained_kinds())):
            defaults["overlap"] = default_overlap(c.num_frames, c.temporal_stride)
        return SampleRequest(**{**defaults, **given})

    def check(self, request: SampleRequest, force: bool = False) -> None:
        """One-line errors for a request this model cannot serve (precision, cache, sampler and its settings,
        given frames and windows), before any sampling work. Given frames (or windows) asked of a checkpoint
        trained without the frame masks they need are refused unless `force`."""
        check_speed_options(request, self.diffusion.num_timesteps)
        scheduler_for(self.diffusion, request.sampler, request.steps, request.scheduler_options, request.grid)
        if not (math.isfinite(request.image_cfg_scale) and request.image_cfg_scale >= 0):
            raise LatteError(f"--image-cfg-scale must be a finite number >= 0 (1 = off), got {request.image_cfg_scale}")
        layout = frame_layout(request, self.model.config, self.vae)
        if layout is None and request.image_cfg_scale != 1.0:
            raise LatteError("--image-cfg-scale applies to given frames (--image, --context, --end-image, long videos)")
        if layout is not None:
            check_trained(self.config.train, layout, force)

    def read_given(self, image=None, context=None, context_frames: int | None = None,
                   end_image=None) -> tuple[torch.Tensor | None, tuple[int, ...], list[dict]]:
        """Frames for a request's `given` and `given_at` from files: an image (the first frame), a clip to
        continue (its last `context_frames` frames are the first ones) and an end image (the last frame), read
        at this model's size and channels (latte.frame_conditioning.read_given), and each input's record."""
        return read_given(self.model.config, self.vae, self.config.train, image, context, context_frames, end_image)

    def load_text_encoder(self) -> TextEncoder | None:
        """The text encoder of a text model (loaded once, on the generator's device); None for other models."""
        if self.text_encoder is None and self.model.config.is_text:
            if not self.config.model.text_encoder:
                raise LatteError(f"this text-to-video model ({self.kind} {self.path}) records no text encoder: "
                                 "pass text_encoder= (minilm, a folder or a hub id) when loading it")
            self.text_encoder = text_encoder_for(self.config, self.device)
        return self.text_encoder

    def conditions(self, request: SampleRequest, indices: list[int] | None = None) -> list[dict]:
        """What each video is asked for: {"caption": prompt}, {"label": class} or {}."""
        indices = list(range(request.num_videos)) if indices is None else indices
        return video_conditions(indices, self.model, request)

    def generate(self, request: SampleRequest, indices: list[int] | None = None, progress: bool = True,
                 cache_stats: dict | None = None, on_progress=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Videos (N, C, F, H, W) in [-1, 1] of the request's `indices` (default all), decoded by the VAE, and
        their labels (None for text and unconditional models); latte.sampling.generate does the work (and calls
        `on_progress(steps done, steps in all)` as it steps)."""
        text_encoder = self.load_text_encoder() if request.prompts else None
        return generate(self.model, self.diffusion, request, indices=indices, vae=self.vae, device=self.device,
                        progress=progress, text_encoder=text_encoder, cache_stats=cache_stats,
                        on_progress=on_progress)


def generator_from_checkpoint(state: dict, use_ema: bool = True) -> VideoGenerator:
    """The generator of a training checkpoint's state (as latte.checkpoint_files.load_checkpoint reads it)."""
    config = config_from_dict(state["config"])
    model = run_model(state, use_ema)  # a LoRA run: its verified base with the adapters merged in
    dataset = state.get("dataset") or {}
    return VideoGenerator(model=model, diffusion=make_objective(config.diffusion, model.config.learn_sigma, model.config.tokens_per_clip), config=config,
                          vae=load_vae(state.get("vae") or "none"), class_names=dataset.get("class_names"),
                          kind=LATTE, path=Path(state["path"]))


def load_run(checkpoint, use_ema: bool = True) -> VideoGenerator:
    """A latte run folder (its latest checkpoint) or checkpoint file: EMA weights unless use_ema=False."""
    return generator_from_checkpoint(load_checkpoint(checkpoint), use_ema)


def load_generator(source, use_ema: bool = True, vae: str | None = None,
                   text_encoder: str | None = None) -> VideoGenerator:
    """A generator from a latte run folder or checkpoint, an official Latte `.pt` or a diffusers
    `LatteTransformer3DModel` folder. `vae` and `text_encoder` (folder, hub id or alias) replace the run's,
    or supply what an official or diffusers source does not record (their models read Stable Diffusion VAE
    latents; Latte-1 reads T5 captions)."""
    kind, path, contents = open_source(source, "model source")
    if kind == LATTE:
        generator = generator_from_checkpoint(contents, use_ema)
    else:
        model = load_diffusers_transformer(path) if kind == DIFFUSERS else load_official_checkpoint(contents)
        config = Config()
        config.data.num_frames = model.config.num_frames
        generator = VideoGenerator(model=model.eval(), diffusion=make_objective(config.diffusion, model.config.learn_sigma, model.config.tokens_per_clip),
                                   config=config, kind=kind, path=path)
    if vae is not None:
        generator.vae = load_vae(vae)
        generator.config.data.vae = generator.vae.spec if generator.vae is not None else "none"
    if text_encoder is not None:
        generator.config.model.text_encoder = text_encoder
    return generator


__all__ = ["DIFFUSERS", "LATTE", "OFFICIAL", "VideoGenerator", "generator_from_checkpoint",
           "load_generator", "load_run", "text_encoder_for"]
