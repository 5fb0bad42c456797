"""Generating videos from a trained model: used by `latte sample` and by training's sample filmstrips.

Video i of a run is drawn from its own generator seeded by (seed, i), so a video does not depend
on the batch size, on how many processes share the work, or on whether a run was resumed. Text
models take video i's prompt from the request's prompts in turn (prompt i mod the prompt count).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from latte.devices import PRECISIONS
from latte.diffusion import sample as diffusion_sample
from latte.diffusion.samplers import scheduler_for
from latte.errors import LatteError
from latte.frame_conditioning import encode_given, frame_layout, sample_windows
from latte.models import Latte
from latte.sampling_cache import PABCache, PABSettings


@dataclass
class SampleRequest:
    num_videos: int = 8
    sampler: str = "dpm-solver-sde"
    steps: int | None = None
    cfg_scale: float = 1.0
    class_label: int | None = None  # None: cycle through the classes (class models)
    seed: int = 0
    batch_size: int = 8
    num_frames: int | None = None  # None: the trained frame count (any count works)
    eta: float = 0.0
    prompts: list[str] | None = None  # text models: video i shows prompts[i % len(prompts)]
    negative_prompt: str = ""  # text models: the unconditional half of guidance ("": no negative prompt)
    cache: str | None = None  # "pab": Pyramid Attention Broadcast (latte.sampling_cache)
    cache_options: str | None = None  # PAB intervals and ranges, see PABSettings.parse
    precision: str = "fp32"  # "bf16": the transformer under bf16 autocast (the solver state stays fp32)
    grid: str = "logsnr"  # multistep solvers' timesteps; "diffusers": the scheduler's own (for comparisons)
    scheduler_options: dict | None = None  # diffusers scheduler settings overridden (for comparisons)
    # frame conditioning (latte.frame_conditioning): pixel frames kept in every video, at the run's size
    given: torch.Tensor | None = None  # (C, K, H, W) in [-1, 1]
    given_at: tuple[int, ...] = ()  # the K frame indices they take (negative: from the end)
    overlap: int | None = None  # frames longer than the model's window: window by window, sharing this many
    image_cfg_scale: float = 1.0  # guidance of the given frames (latte.diffusion.samplers.image_guided_output)
    guidance_interval: tuple[float, float] | None = None  # class/text guidance only where lo < t/T <= hi



def check_speed_options(request: SampleRequest, num_timesteps: int | None = None) -> None:
    """One-line errors for a bad precision, cache or cache option (its timestep ranges within the
    objective's `num_timesteps`), before any sampling work."""
    if request.precision not in PRECISIONS:
        raise LatteError(f"precision must be one of {', '.join(PRECISIONS)}, got {request.precision!r}")
    if request.cache not in (None, "none", "pab"):
        raise LatteError(f"cache must be 'pab' or none, got {request.cache!r}")
    if request.cache == "pab":
        PABSettings.parse(request.cache_options, num_timesteps)
    elif request.cache_options:
        raise LatteError("--cache-options apply to --cache pab only")


def sampling_context(model, request: SampleRequest, device):
    """(context manager, model callable) for one trajectory: bf16 autocast and the PAB cache as asked
    (the request's options were checked by check_speed_options)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                       enabled=request.precision == "bf16"))
    model_fn = model
    if request.cache == "pab":
        model_fn = stack.enter_context(PABCache(model, PABSettings.parse(request.cache_options)))
    return stack, model_fn


def labels_for(indices: list[int], model: Latte, request: SampleRequest) -> torch.Tensor | None:
    classes = model.config.num_classes
    if classes == 0:
        if request.class_label is not None:
            raise LatteError("this model is unconditional: --class-label does not apply")
        return None
    if request.class_label is not None:
        if not 0 <= request.class_label < classes:
            raise LatteError(f"--class-label must be in [0, {classes - 1}], got {request.class_label}")
        return torch.full((len(indices),), request.class_label, dtype=torch.long)
    return torch.tensor([i % classes for i in indices], dtype=torch.long)


def prompts_for(indices: list[int], model, request: SampleRequest) -> list[str] | None:
    if not model.config.is_text:
        if request.prompts or request.negative_prompt:
            raise LatteError("this model is not text-conditioned: prompts do not apply")
        return None
    if not request.prompts:
        raise LatteError("this is a text-to-video model: give a prompt (--prompt or --prompt-file)")
    if request.class_label is not None:
        raise LatteError("this is a text-to-video model: --class-label does not apply, give a prompt")
    return [request.prompts[i % len(request.prompts)] for i in indices]


def video_conditions(indices: list[int], model, request: SampleRequest) -> list[dict]:
    """What each video was asked for: {"caption": prompt} (text models), {"label": class} or {}."""
    prompts = prompts_for(indices, model, request)
    if prompts is not None:
        return [{"caption": p} for p in prompts]
    labels = labels_for(indices, model, request)
    return [{} for _ in indices] if labels is None else [{"label": int(y)} for y in labels]


def text_inputs(text_encoder, prompts: list[str], device) -> dict:
    hidden, mask = text_encoder(prompts)
    return {"encoder_hidden_states": hidden.to(device), "encoder_attention_mask": mask.to(device)}


def video_seed(seed: int, index: int) -> int:
    """The seed of video `index`'s own noise generator in a run of seed `seed`."""
    return seed * 1_000_003 + index


def initial_noise(indices: list[int], shape: tuple, seed: int) -> torch.Tensor:
    """x_T for each video index from its own generator: (len(indices), *shape)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(video_seed(seed, i)))
                        for i in indices])


def window_noise(indices: list[int], shape: tuple, seed: int, device):
    """`noise(frames)`: x_T (len(indices), C, frames, h, w) of each window in turn, each drawn after the
    windows before it from its video's own generator. A single window (of all the frames) is `initial_noise`'s
    x_T; the first of several is not (it is drawn in its own, shorter shape)."""
    generators = [torch.Generator().manual_seed(video_seed(seed, i)) for i in indices]

    def noise(frames: int) -> torch.Tensor:
        return torch.stack([torch.randn((shape[0], frames, *shape[2:]), generator=g) for g in generators]).to(device)
    return noise


def step_hooks(*hooks: Callable[[float], None] | None) -> Callable[[float], None] | None:
    """One `on_step(timestep)` callback for `sample` calling each hook given (None: skipped), or None."""
    hooks = [hook for hook in hooks if hook is not None]
    if not hooks:
        return None

    def on_step(timestep: float) -> None:
        for hook in hooks:
            hook(timestep)

    return on_step


@torch.no_grad()
def generate(model: Latte, objective, request: SampleRequest, indices: list[int] | None = None, vae=None,
             device: torch.device | str = "cpu", progress: bool = True,
             text_encoder=None, cache_stats: dict | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Videos (N, C, F, H, W) in [-1, 1] (decoded by the VAE when given) and their labels (None for text
    models, whose prompts are encoded by `text_encoder`), sampled with the run's objective
    (latte.diffusion.objective). `cache_stats`, when given, accumulates the
    attention cache's "calls" and "computed" counts. `on_progress(done, total)`, when given, hears the
    solver steps done over all batches and windows before each step and once at the end (the web demo's
    progress bar). Given frames and long videos: latte.frame_conditioning."""
    c = model.config
    indices = list(range(request.num_videos)) if indices is None else indices
    frames = request.num_frames or c.num_frames
    shape = (c.in_channels, frames, *c.latent_hw)
    model = model.eval().to(device)
    prompts = prompts_for(indices, model, request)
    if prompts is not None and (text_encoder is None or text_encoder.width != c.caption_channels):
        raise LatteError(f"the model reads {c.caption_channels}-wide text features; text encoder: {text_encoder}")
    labels = None if prompts is not None else labels_for(indices, model, request)
    guided = (prompts is not None or c.num_classes > 0) and request.cfg_scale != 1.0
    check_speed_options(request, objective.num_timesteps)
    layout = frame_layout(request, c, vae)  # None: no given frames, one pass
    given = encode_given(request, layout, vae) if layout is not None else None  # (C, N, h, w) latents
    outputs = []
    chunks = [indices[i:i + request.batch_size] for i in range(0, len(indices), request.batch_size)]
    windows = 1 if layout is None else len(layout.windows)
    steps = len(scheduler_for(objective, request.sampler, request.steps, request.scheduler_options,
                              request.grid).timesteps) if on_progress is not None else 0
    total = len(chunks) * windows * steps
    done = 0

    def count_step(_timestep: float) -> None:
        nonlocal done
        on_progress(done, total)
        done += 1

    for n, chunk in enumerate(tqdm(chunks, desc="sample", unit="batch", disable=not progress or len(chunks) == 1)):
        y = None if labels is None else labels[n * request.batch_size:n * request.batch_size + len(chunk)].to(device)
        generator = torch.Generator().manual_seed(video_seed(request.seed, chunk[0]) + 7)
        kwargs, uncond = {}, None
        if prompts is not None:
            kwargs = text_inputs(text_encoder, prompts[n * request.batch_size:n * request.batch_size + len(chunk)], device)
            uncond = text_inputs(text_encoder, [request.negative_prompt] * len(chunk), device) if guided else None

        def denoise(x_t, given_frames=None, given_mask=None, y=y, kwargs=kwargs, uncond=uncond, generator=generator):
            """x0 of one window from x_T (B, C, L, h, w), keeping given_frames (B, C, L, h, w) where given_mask (B, L)."""
            context, model_fn = sampling_context(model, request, device)
            with context:
                x0 = diffusion_sample(
                    model_fn, x_t.shape, objective, sampler=request.sampler, steps=request.steps, eta=request.eta,
                    cfg_scale=request.cfg_scale if guided else 1.0, y=y,
                    null_class=c.num_classes if guided and prompts is None else None, model_kwargs=kwargs,
                    uncond_kwargs=uncond, generator=generator, device=device, progress=progress and len(chunks) == 1,
                    noise=x_t, scheduler_options=request.scheduler_options, grid=request.grid,
                    on_step=step_hooks(getattr(model_fn, "at_time", None),  # the PAB cache hears each step's timestep
                                       count_step if on_progress is not None else None),
                    given=given_frames, given_mask=given_mask, image_cfg_scale=request.image_cfg_scale,
                    guidance_interval=request.guidance_interval)
                if cache_stats is not None and model_fn is not model:
                    for name in ("calls", "computed"):
                        cache_stats[name] = cache_stats.get(name, 0) + sum(getattr(model_fn, name).values())
            return x0

        if layout is None:
            x0 = denoise(initial_noise(chunk, shape, request.seed).to(device))
        else:
            x0 = sample_windows(denoise, window_noise(chunk, shape, request.seed, device), layout, given, len(chunk))
        if vae is not None:
            x0 = vae.decode(x0)
        outputs.append(x0.clamp(-1, 1).float().cpu())
    if on_progress is not None:
        on_progress(done, total)
    return torch.cat(outputs), labels
