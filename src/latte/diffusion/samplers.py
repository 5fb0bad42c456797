"""Samplers over any model callable `model(x_t, t, y=..., **kwargs)`, through diffusers' schedulers
built from the same betas: DDPM (ancestral, respaced; learned-range variance), DDIM (Song et al.
2021, eta), DPM-Solver++ 2M (Lu et al. 2022). Classifier-free guidance (Ho & Salimans 2022) runs
the conditional and unconditional halves in one batched forward pass: the unconditional half gets
the null class, or other inputs (`uncond_kwargs`, e.g. the empty or negative prompt's embedding).
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from latte.diffusion.gaussian import GaussianDiffusion
from latte.errors import LatteError

SAMPLERS = ("ddpm", "ddim", "dpm-solver")
DEFAULT_STEPS = {"ddpm": 250, "ddim": 50, "dpm-solver": 20}


def guided_output(out_cond: torch.Tensor, out_uncond: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """uncond + scale * (cond - uncond) on the first `channels` (the prediction); variance channels
    are taken from the conditional half."""
    guided = out_uncond[:, :channels] + scale * (out_cond[:, :channels] - out_uncond[:, :channels])
    return torch.cat([guided, out_cond[:, channels:]], dim=1)


def make_scheduler(diffusion: GaussianDiffusion, sampler: str):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=diffusion.num_timesteps, beta_start=diffusion.beta_start,
                  beta_end=diffusion.beta_end, beta_schedule="linear",
                  prediction_type={"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}[diffusion.prediction])
    if sampler == "ddpm":
        variance = "learned_range" if diffusion.learn_sigma else "fixed_small"
        return DDPMScheduler(variance_type=variance, clip_sample=False, **common)
    if sampler == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    if sampler == "dpm-solver":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common)
    raise LatteError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def _pair(cond, uncond):
    """One batch of the conditional and unconditional inputs (non-tensors, such as num_images, are shared)."""
    return torch.cat([cond, uncond]) if isinstance(cond, torch.Tensor) else cond


@torch.no_grad()
def sample(model_fn, shape, diffusion: GaussianDiffusion, sampler: str = "ddpm", steps: int | None = None,
           eta: float = 0.0, cfg_scale: float = 1.0, y: torch.Tensor | None = None, null_class: int | None = None,
           model_kwargs: dict | None = None, uncond_kwargs: dict | None = None,
           generator: torch.Generator | None = None, device="cpu", progress: bool = True,
           noise: torch.Tensor | None = None) -> torch.Tensor:
    """Draw x0 of `shape` (B, C, F, H, W) from x_T = `noise` (or fresh noise from `generator`). With
    guidance the unconditional half takes `uncond_kwargs` in place of those model kwargs, else y = null_class."""
    if sampler not in SAMPLERS:
        raise LatteError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    steps = steps or DEFAULT_STEPS[sampler]
    if not 1 <= steps <= diffusion.num_timesteps:
        raise LatteError(f"steps must be in [1, {diffusion.num_timesteps}], got {steps}")
    guided = cfg_scale != 1.0
    if guided and uncond_kwargs is None and (y is None or null_class is None):
        raise LatteError("classifier-free guidance needs class labels and the null class, or unconditional inputs")
    scheduler = make_scheduler(diffusion, sampler)
    scheduler.set_timesteps(steps)
    channels = shape[1]
    x = torch.randn(shape, generator=generator) if noise is None else noise.clone()
    x = x.to(device) * scheduler.init_noise_sigma
    kwargs = dict(model_kwargs or {})
    if y is not None:
        kwargs["y"] = y
    if guided:
        uncond = {**kwargs, **(uncond_kwargs if uncond_kwargs is not None else {"y": torch.full_like(y, null_class)})}
        kwargs = {key: _pair(value, uncond[key]) for key, value in kwargs.items()}
    step_kwargs = {"generator": generator} if sampler != "dpm-solver" else {}
    if sampler == "ddim":
        step_kwargs["eta"] = eta
    for t in tqdm(scheduler.timesteps, desc=sampler, disable=not progress, leave=False):
        t_batch = torch.full((shape[0],), int(t), dtype=torch.long, device=device)
        if guided:
            out = model_fn(torch.cat([x, x]), torch.cat([t_batch, t_batch]), **kwargs)
            out = guided_output(*out.float().chunk(2), cfg_scale, channels)
        else:
            out = model_fn(x, t_batch, **kwargs).float()
        if not (sampler == "ddpm" and diffusion.learn_sigma):
            out = out[:, :channels]  # DDIM / DPM-Solver use the prediction only
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x
