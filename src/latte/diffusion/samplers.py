"""Samplers over any model callable `model(x_t, t, y=..., **kwargs)`, through diffusers' schedulers
built from the objective's settings (latte.diffusion.objective; for DDPM its betas): DDPM (ancestral,
respaced; learned-range variance), DDIM (Song et al. 2021, eta), DPM-Solver++ 2M (Lu et al. 2022)
as an ODE ("dpm-solver") and as an SDE ("dpm-solver-sde", fresh noise every step), UniPC (Zhao et
al. 2023, bh2 predictor-corrector) and DEIS (Zhang & Chen 2023). Classifier-free guidance (Ho &
Salimans 2022) runs the conditional and unconditional halves in one batched forward pass: the
unconditional half gets the null class, or other inputs (`uncond_kwargs`, e.g. the empty or negative
prompt's embedding). Flow models (latte.diffusion.flow) take Euler and Heun (diffusers' FlowMatch
schedulers) and UniPC / DPM-Solver++ on flow sigmas; each objective lists the samplers that fit it.

Timesteps of the multistep solvers on DDPM models: evenly spaced in log-SNR from t = T-1 down towards t = 0, so the
last model call is near t = 0 (`solver_timesteps`; docs/sampling.md). diffusers' default
("linspace") grid for them stops at t ~ T/steps and reaches the clean sample with one first-order
jump, x0 = D(x_t): with 20 steps from t = 50 alone, and that jump, not the solver's order, dominated
their error against a fine reference solution (26-29 dB for DPM-Solver++ 20, 43 dB on this grid).
On flow models every sampler keeps its scheduler's flow grid: evenly spaced in t from 1, then shifted.
"""
from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from latte.diffusion.objective import Objective, keep_given
from latte.errors import LatteError
from latte.files import atomic_path

# every sampler: its diffusers scheduler and the settings of the algorithm itself (the model's come from
# the objective's scheduler_settings); an objective lists the ones it supports
SCHEDULERS = {
    "ddpm": ("DDPMScheduler", dict(clip_sample=False)),
    "ddim": ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=True)),
    "dpm-solver": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
    # the SDE variant draws fresh noise at every step
    "dpm-solver-sde": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=2)),
    "unipc": ("UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2", predict_x0=True)),
    "deis": ("DEISMultistepScheduler", dict(solver_order=2)),
    # flow matching (rectified flow): Euler, and Heun (two model calls a step: 2 * steps - 1 in all)
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "heun": ("FlowMatchHeunDiscreteScheduler", {}),
}
SAMPLERS = tuple(SCHEDULERS)
DEFAULT_STEPS = {"ddpm": 250, "ddim": 50, "dpm-solver": 20, "dpm-solver-sde": 20, "unipc": 20, "deis": 20,
                 "euler": 50, "heun": 25}
MULTISTEP = ("dpm-solver", "dpm-solver-sde", "unipc", "deis")  # samplers that take the log-SNR grid of `solver_timesteps`
GRIDS = ("logsnr", "diffusers")
# Scheduler settings that describe the trained model (its noise schedule, what it predicts, its output
# channels), which make_scheduler sets from the checkpoint's objective: an override may only repeat them.
MODEL_SETTINGS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                  "variance_type", "rescale_betas_zero_snr", "use_flow_sigmas")


def guided_output(out_cond: torch.Tensor, out_uncond: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """uncond + scale * (cond - uncond) on the first `channels` (the prediction); variance channels
    are taken from the conditional half. The weights sum to 1, so guiding the x0, epsilon or v
    prediction gives the same update at the same x_t."""
    guided = out_uncond[:, :channels] + scale * (out_cond[:, :channels] - out_uncond[:, :channels])
    return torch.cat([guided, out_cond[:, channels:]], dim=1)


def image_guided_output(outputs: tuple[torch.Tensor, ...], scale: float, image_scale: float, channels: int,
                        given_mask: torch.Tensor) -> torch.Tensor:
    """Guidance of the given frames beside the class or text guidance (Open-Sora 2.0's image guidance):
    out = n_0 + image_scale * (n_f - n_0) + scale * (c_f - n_f) on the prediction channels, where c / n
    are the condition / the null class or negative prompt, and _f / _0 the model with the given frames
    in (clean, at the clean time) / without them (those frames noisy at the step's time, sampled too).
    `outputs` is (c_f, n_f, n_0), or (c_f, c_0) without class or text guidance: out = c_0 + image_scale *
    (c_f - c_0). Variance channels come from c_f. At the given frames `given_mask` (B, F) the frameless
    branch's own output is used: its sample of those frames, which the given frames replace at the end."""
    if len(outputs) == 3:
        with_frames, null_with_frames, without = outputs
    else:
        (with_frames, without), null_with_frames = outputs, outputs[0]
    p = slice(0, channels)
    guided = (without[:, p] + image_scale * (null_with_frames[:, p] - without[:, p])
              + scale * (with_frames[:, p] - null_with_frames[:, p]))
    return keep_given(torch.cat([guided, with_frames[:, channels:]], dim=1), without, given_mask)


def solver_timesteps(alphas_cumprod: torch.Tensor, steps: int) -> np.ndarray:
    """`steps` integer timesteps, the first T-1, evenly spaced in log-SNR lambda_t = log(sqrt(abar_t / (1 -
    abar_t))) (DPM-Solver, Lu et al. 2022, Sec. 3.3) on the way to t = 0, which is the end point of the
    grid, not a model call: the solver's last step goes from the last of them to the clean sample."""
    abar = alphas_cumprod.double()
    lambdas = 0.5 * torch.log(abar / (1 - abar))  # increasing as t falls
    targets = torch.linspace(float(lambdas[-1]), float(lambdas[0]), steps + 1, dtype=torch.float64)[:-1]
    if steps > len(abar) - 1:  # the model calls are at distinct t in [1, T-1]
        raise LatteError(f"{steps} solver steps do not fit into timesteps 1..{len(abar) - 1}")
    chosen = (lambdas[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
    # near t = 0 lambda moves faster than one target per integer (38 or more steps of 1000), so neighbours
    # round to the same t: make the sequence strictly decreasing, pushing up from t = 1, then down from T-1
    chosen[-1] = max(chosen[-1], 1)
    for i in range(steps - 2, -1, -1):
        chosen[i] = max(chosen[i], chosen[i + 1] + 1)
    chosen[0] = min(chosen[0], len(abar) - 1)
    for i in range(1, steps):
        chosen[i] = min(chosen[i], chosen[i - 1] - 1)
    return np.array(chosen, dtype=np.int64)


def check_sampler(objective: Objective, sampler: str) -> None:
    """One-line errors for a sampler nobody knows, or one the objective cannot be sampled with."""
    if sampler not in SAMPLERS:
        raise LatteError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler not in objective.samplers:
        raise LatteError(f"objective {objective.name} does not take sampler {sampler!r}; choose one of "
                         f"{', '.join(objective.samplers)}")


def make_scheduler(objective: Objective, sampler: str, **overrides):
    """The diffusers scheduler of `sampler` for this objective's settings (for DDPM its betas and
    prediction). `overrides` replace scheduler settings (benchmarks/sampling_quality.py compares them);
    unknown ones are errors."""
    import diffusers  # local: ~4 s to import; only the diffusers-scheduler samplers need it

    check_sampler(objective, sampler)
    name, own = SCHEDULERS[sampler]
    cls = getattr(diffusers, name)
    settings = {**objective.scheduler_settings(sampler), **own}
    known = dict(inspect.signature(cls.__init__).parameters)
    known.pop("self")
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise LatteError(f"{sampler} scheduler has no setting {', '.join(unknown)}")
    for key in MODEL_SETTINGS:  # what the model was trained with is the checkpoint's, not a sampling choice
        fixed = settings.get(key, known[key].default if key in known else None)
        if key in overrides and overrides[key] != fixed:
            raise LatteError(f"scheduler option {key}={overrides[key]} contradicts the checkpoint, whose model was "
                             f"trained with {key}={fixed}: leave it out")
    shown = ", ".join(f"{key}={value}" for key, value in overrides.items())
    try:
        scheduler = cls(**{**settings, **overrides})
    except (ValueError, TypeError, NotImplementedError) as exc:  # e.g. an algorithm_type it does not know
        raise LatteError(f"{sampler} scheduler rejects {shown}: {exc}") from exc
    if overrides:  # some values (solver_order=0) only fail inside step(): find out now, not mid-sampling
        try:
            _rehearse(copy.deepcopy(scheduler), 2 if objective.sampler_takes_variance(sampler) else 1)
        except Exception as exc:  # noqa: BLE001 - any failure here is the options' doing
            raise LatteError(f"{sampler} scheduler fails with {shown}: {type(exc).__name__}: {exc}") from exc
    return scheduler


def write_scheduler_config(objective: Objective, sampler: str, folder) -> None:
    """`folder`/scheduler_config.json: `sampler`'s diffusers scheduler for this objective (for a flow model
    FlowMatchEulerDiscreteScheduler and its kin with the trained shift), which `<its class>.from_pretrained(folder)`
    and `diffusers.SchedulerMixin` loaders read. Written atomically."""
    with atomic_path(Path(folder) / "scheduler_config.json") as tmp:
        tmp.write_text(make_scheduler(objective, sampler).to_json_string())


def _rehearse(scheduler, output_channels: int, steps: int = 4) -> None:
    """A few steps of `scheduler` on a tiny zero video (1 channel; the model's output has
    `output_channels`, 2 when it carries the learned variance)."""
    scheduler.set_timesteps(steps)
    sample = torch.zeros(1, 1, 2, 2, 2)
    output = torch.zeros(1, output_channels, 2, 2, 2)
    with torch.random.fork_rng(devices=[]):  # stochastic steps draw from the global RNG: leave it as it was
        for t in scheduler.timesteps:
            sample = scheduler.step(output, t, sample).prev_sample


def parse_scheduler_options(spec: str | None) -> dict:
    """'algorithm_type=sde-dpmsolver++,solver_order=3' -> {'algorithm_type': 'sde-dpmsolver++', 'solver_order': 3}:
    values read as bool (true/false), int, float, else text. make_scheduler checks the keys."""
    options = {}
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise LatteError(f"scheduler option {item!r} is not KEY=VALUE")
        value = parse_option_value(text.strip())
        if isinstance(value, float) and not math.isfinite(value):
            raise LatteError(f"scheduler option {key.strip()}={text.strip()} must be a finite number")
        options[key.strip()] = value
    return options


def parse_option_value(text: str):
    """'true'/'false' -> bool, then int, then float, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def set_timesteps(scheduler, sampler: str, steps: int, grid: str = "logsnr") -> None:
    """Timesteps of the scheduler: grid "logsnr" gives the multistep solvers `solver_timesteps`;
    "diffusers" keeps the scheduler's own spacing (DDPM and DDIM always use theirs, and so does every
    sampler of a flow model: its flow grid)."""
    if grid not in GRIDS:
        raise LatteError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    if sampler not in MULTISTEP or grid == "diffusers" or scheduler.config.get("use_flow_sigmas"):
        scheduler.set_timesteps(steps)
        return
    timesteps = solver_timesteps(scheduler.alphas_cumprod, steps)
    if "timesteps" in inspect.signature(scheduler.set_timesteps).parameters:
        scheduler.set_timesteps(timesteps=timesteps.tolist())
        return
    # UniPC and DEIS take no custom timesteps: their sigma table is rebuilt for ours, the way their
    # own set_timesteps builds it (sigma at each timestep, then the final sigma: 0, or DEIS's sigma at t = 0).
    scheduler.set_timesteps(steps)
    alphas = scheduler.alphas_cumprod.double()
    table = ((1 - alphas) / alphas).sqrt()
    final = table[:1] if sampler == "deis" else table.new_zeros(1)
    scheduler.sigmas = torch.cat([table[torch.from_numpy(timesteps)], final]).float()
    scheduler.timesteps = torch.from_numpy(timesteps)
    scheduler.num_inference_steps = steps


def scheduler_for(objective: Objective, sampler: str, steps: int | None = None,
                  scheduler_options: dict | None = None, grid: str = "logsnr"):
    """The scheduler `sample` steps with, its timesteps set: every sampler setting checked (`latte sample`
    calls it before any work)."""
    check_sampler(objective, sampler)
    steps = steps or DEFAULT_STEPS[sampler]
    if not 1 <= steps <= objective.num_timesteps:
        raise LatteError(f"steps must be in [1, {objective.num_timesteps}], got {steps}")
    scheduler = make_scheduler(objective, sampler, **(scheduler_options or {}))
    set_timesteps(scheduler, sampler, steps, grid)
    return scheduler


def _pair_times(t: torch.Tensor) -> torch.Tensor:
    """(B, F) times twice, for the batched guidance pass: (2B, F), still a broadcast when one per clip."""
    if t.shape[1] > 1 and t.stride(1) == 0:
        return torch.cat([t[:, :1], t[:, :1]]).expand(-1, t.shape[1])
    return torch.cat([t, t])


def _pair(cond, uncond):
    """One batch of the conditional and unconditional inputs (non-tensors, such as num_images, are shared)."""
    return torch.cat([cond, uncond]) if isinstance(cond, torch.Tensor) else cond


@torch.no_grad()
def sample(model_fn, shape, objective: Objective, sampler: str = "ddpm", steps: int | None = None,
           eta: float = 0.0, cfg_scale: float = 1.0, y: torch.Tensor | None = None, null_class: int | None = None,
           model_kwargs: dict | None = None, uncond_kwargs: dict | None = None,
           generator: torch.Generator | None = None, device="cpu", progress: bool = True,
           noise: torch.Tensor | None = None, scheduler_options: dict | None = None,
           grid: str = "logsnr", on_step=None, given: torch.Tensor | None = None,
           given_mask: torch.Tensor | None = None, image_cfg_scale: float = 1.0,
           guidance_interval: tuple[float, float] | None = None) -> torch.Tensor:
    """Draw x0 of `shape` (B, C, F, H, W) from x_T = `noise` (or fresh noise from `generator`). With
    guidance the unconditional half takes `uncond_kwargs` in place of those model kwargs, else y = null_class.
    The model runs in its own dtype; the solver state stays float32. `on_step(timestep)`, when given, hears
    each step's timestep from the host-side schedule before that step's model call (the PAB cache's at_time).
    Frame conditioning: the frames `given_mask` (B, F) marks are the clean clips `given` (B, C, F, H, W) at
    every step (the objective's clean time, x_t replaced by them), so the result holds them exactly.
    `image_cfg_scale` != 1 guides the given frames too (image_guided_output): each step also runs the model
    without them, and the state keeps that branch's own sample at the given frames until the end.
    `guidance_interval` (lo, hi): class or text guidance only at steps whose time is lo < t / T <= hi of
    the way from clean to noise, scale 1 at the others (Kynkaanniemi et al. 2024, guidance in a limited
    interval); the batch stays paired, so a PAB cache sees one shape throughout."""
    guided = cfg_scale != 1.0
    if guided and uncond_kwargs is None and (y is None or null_class is None):
        raise LatteError("classifier-free guidance needs class labels and the null class, or unconditional inputs")
    if (given is None) != (given_mask is None):
        raise LatteError("frame conditioning needs both the given clips and their frame mask")
    if given is not None and (tuple(given.shape) != tuple(shape) or tuple(given_mask.shape) != (shape[0], shape[2])):
        raise LatteError(f"given clips {tuple(given.shape)} and frame mask {tuple(given_mask.shape)} do not fit "
                         f"samples of shape {tuple(shape)}")
    scheduler = scheduler_for(objective, sampler, steps, scheduler_options, grid)
    channels = shape[1]
    dtype = next((p.dtype for p in getattr(model_fn, "parameters", lambda: iter(()))()), torch.float32)
    x = torch.randn(shape, generator=generator) if noise is None else noise.clone()
    x = x.to(device).float() * getattr(scheduler, "init_noise_sigma", 1.0)  # the FlowMatch ones start at 1
    if given is not None:
        given, given_mask = given.to(device).float(), given_mask.to(device=device, dtype=torch.bool)  # (B, C, F, H, W), (B, F)
    image_guided = given is not None and image_cfg_scale != 1.0
    if given is not None and not image_guided:
        x = keep_given(x, given, given_mask)
    kwargs = dict(model_kwargs or {})
    if y is not None:
        kwargs["y"] = y
    if guided:
        uncond = {**kwargs, **(uncond_kwargs if uncond_kwargs is not None else {"y": torch.full_like(y, null_class)})}
        if image_guided:  # (c_f, n_f, n_0): the null condition twice, with and without the given frames
            kwargs = {key: _pair(_pair(value, uncond[key]), uncond[key]) for key, value in kwargs.items()}
        else:
            kwargs = {key: _pair(value, uncond[key]) for key, value in kwargs.items()}
    elif image_guided:  # (c_f, c_0)
        kwargs = {key: _pair(value, value) for key, value in kwargs.items()}
    # every scheduler that draws noise (DDPM, DDIM with eta, SDE variants of DPM-Solver++) draws it from
    # `generator`, never from the global RNG: samples are a function of the seed alone
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    if sampler == "ddim":
        step_kwargs["eta"] = eta
    for t in tqdm(scheduler.timesteps, desc=sampler, disable=not progress, leave=False):
        if on_step is not None:
            on_step(float(t))  # the schedule lives on the host: no device read
        t_step = objective.step_time(t, (shape[0], shape[2]), device)  # (B, F)
        scale = cfg_scale if guidance_interval is None or \
            guidance_interval[0] < float(t) / objective.num_timesteps <= guidance_interval[1] else 1.0
        if image_guided:  # t_step: the frameless branch generates every frame
            t_given = objective.with_given(t_step, given_mask)
            x_given, x_free = keep_given(x, given, given_mask).to(dtype), x.to(dtype)
            xs = [x_given, x_given, x_free] if guided else [x_given, x_free]
            ts = [t_given, t_given, t_step] if guided else [t_given, t_step]
            out = model_fn(torch.cat(xs), objective.model_time(torch.cat(ts)), **kwargs).float()
            out = image_guided_output(out.chunk(len(xs)), scale, image_cfg_scale, channels, given_mask)
        else:
            if given is not None:
                t_step = objective.with_given(t_step, given_mask)
            t_batch = objective.model_time(t_step)
            x_in = x.to(dtype)
            if guided:
                out = model_fn(torch.cat([x_in, x_in]), _pair_times(t_batch), **kwargs)
                out = guided_output(*out.float().chunk(2), scale, channels)
            else:
                out = model_fn(x_in, t_batch, **kwargs).float()
        if not objective.sampler_takes_variance(sampler):
            out = out[:, :channels]  # the prediction only
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
        if given is not None and not image_guided:  # the solver moved the given frames too (elementwise: the
            x = keep_given(x, given, given_mask)  # others do not see it)
    if image_guided:  # the state held the frameless branch's sample of the given frames
        x = keep_given(x, given, given_mask)
    return x
