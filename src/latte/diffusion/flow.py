"""Rectified flow, the "flow" objective (Liu et al. 2022; Esser et al. 2024, "Scaling Rectified Flow
Transformers", SD3): continuous time t in [0, 1], x_t = (1 - t) x0 + t noise on the straight path
from data (t = 0) to noise (t = 1), and the network predicts the velocity dx_t/dt = noise - x0.
Sampling integrates that ODE from t = 1 to 0 (diffusers' FlowMatch Euler / Heun schedulers, or UniPC
and DPM-Solver++ with flow sigmas).

Training times, one per clip: uniform, or logit-normal t = sigmoid(N(mean, std)) (SD3 Sec. 3.1, its
best choice rf/lognorm(0, 1)), then the time shift t' = a t / (1 + (a - 1) t), a > 1 moving times
towards noise. The network embeds t * num_timesteps (SD3 and diffusers pass sigma * 1000), so
sampling steps and PAB ranges are counted in 0..num_timesteps as for DDPM.

Tensors are videos (B, C, F, H, W); times are float (B,) per clip or (B, F) per frame.
"""
from __future__ import annotations

import math

import torch

from latte.diffusion.objective import Objective, frame_mean, masked_frame_mean, mean_flat
from latte.errors import LatteError

TIME_SAMPLINGS = ("uniform", "logit-normal")
# every weighting of the velocity MSE is a change of the time density (SD3 Sec. 3.1), which
# time_sampling and the shift already choose: the loss is the plain velocity MSE
LOSS_WEIGHTINGS = ("none",)
# the diffusion config keys this objective reads (from_settings)
SETTINGS = ("num_timesteps", "time_sampling", "logit_mean", "logit_std", "time_shift", "time_shift_base_tokens",
            "loss_weighting")
# flow's samplers and their diffusers scheduler settings for the trained model (latte.diffusion.samplers
# adds each algorithm's own); the shift of the sampling grid is the training shift unless overridden
SHIFT_SETTING = {"euler": "shift", "heun": "shift", "unipc": "flow_shift", "dpm-solver": "flow_shift"}


def shift_time(t: torch.Tensor, a: float) -> torch.Tensor:
    """t' = a t / (1 + (a - 1) t) (SD3 Eq. 23): keeps 0 and 1, maps 1/2 to a / (1 + a)."""
    return a * t / (1 + (a - 1) * t)


def resolution_shift(tokens: int, base_tokens: int, scale: float = 1.0) -> float:
    """The shift for clips of `tokens` tokens: scale * sqrt(tokens / base_tokens). SD3 (Sec. 5.3.2, "resolution-
    dependent shifting of timestep schedules") derives a = sqrt(m / n) for m pixels (tokens) against a base
    resolution of n, from the SNR of a constant image seen through m independent noisy pixels. Open-Sora 1.2
    applies the same rule to video (sqrt of the spatial ratio to 512x512 times sqrt of the latent frames);
    Open-Sora 2.0 keeps the sqrt(frames) factor and makes the spatial one linear in the tokens per frame (1 at
    256, 3 at 4096)."""
    if tokens < 1 or base_tokens < 1:
        raise LatteError(f"the time shift rule needs positive token counts, got {tokens} and {base_tokens}")
    return scale * math.sqrt(tokens / base_tokens)


class RectifiedFlow(Objective):
    """The straight-path flow: time draws, corruption, velocity target and loss, sampler settings."""

    name = "flow"
    settings = SETTINGS
    samplers = ("euler", "heun", "unipc", "dpm-solver")
    choices = {"time_sampling": TIME_SAMPLINGS, "loss_weighting": LOSS_WEIGHTINGS}
    ranges = {"num_timesteps": (2, math.inf, False, False), "logit_std": (0, math.inf, True, True),
              "time_shift": (0, math.inf, True, True), "time_shift_base_tokens": (0, math.inf, False, False)}
    learns_variance = False
    learn_sigma = False

    def __init__(self, num_timesteps: int = 1000, time_sampling: str = "logit-normal", logit_mean: float = 0.0,
                 logit_std: float = 1.0, time_shift: float = 1.0, time_shift_base_tokens: int = 0,
                 loss_weighting: str = "none", tokens_per_clip: int | None = None):
        if time_sampling not in TIME_SAMPLINGS:
            raise LatteError(f"time_sampling must be one of {', '.join(TIME_SAMPLINGS)}, got {time_sampling!r}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise LatteError(f"flow's loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
        if not (logit_std > 0 and time_shift > 0):
            raise LatteError(f"need logit_std > 0 and time_shift > 0, got {logit_std}, {time_shift}")
        self.num_timesteps, self.time_sampling = num_timesteps, time_sampling
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.loss_weighting = loss_weighting
        if time_shift_base_tokens:
            if tokens_per_clip is None:
                raise LatteError("diffusion.time_shift_base_tokens derives the shift from the model's tokens per clip, "
                                 "which this objective was not given")
            self.shift = resolution_shift(tokens_per_clip, time_shift_base_tokens, time_shift)
        else:
            self.shift = time_shift

    @classmethod
    def from_settings(cls, settings: dict, learn_sigma: bool, tokens_per_clip: int | None = None) -> RectifiedFlow:
        if learn_sigma:
            raise LatteError("model.learn_sigma applies to diffusion.objective=ddpm only: a flow model predicts a "
                             "velocity and no variance; set model.learn_sigma=false")
        return cls(tokens_per_clip=tokens_per_clip, **{key: settings[key] for key in SETTINGS if key in settings})

    def to(self, device) -> RectifiedFlow:
        """No tables: times are computed where they are used."""
        return self

    def sample_times(self, batch: int, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        """One time per clip (batch,) in [0, 1], float32: uniform or logit-normal, then shifted."""
        where = generator.device if generator is not None else device  # drawn where the generator lives
        if self.time_sampling == "uniform":
            t = torch.rand(batch, generator=generator, device=where)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(batch, generator=generator, device=where))
        return (shift_time(t, self.shift) if self.shift != 1.0 else t).to(device)

    def draw_times(self, clips: int, frames: int, generator: torch.Generator | None = None, device="cpu",
                   step: int = 0) -> torch.Tensor:
        """(clips, frames): one time per clip, broadcast over the frames."""
        return self.sample_times(clips, generator, device)[:, None].expand(clips, frames)

    def held_out_times(self, count: int) -> torch.Tensor:
        """The midpoints of `count` equal buckets of [0, 1], unshifted (a fixed grid whatever the training
        shift): count 10 gives 0.05, 0.15, ..., 0.95."""
        return (torch.arange(count, dtype=torch.float32) + 0.5) / count  # (count,)

    @staticmethod
    def _at(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """t shaped to broadcast against a video `like`: (B,) -> (B, 1, 1, ...); (B, F) -> (B, 1, F, 1, ...)."""
        t = t.to(like.dtype)
        if t.ndim == 2:
            return t.view(t.shape[0], 1, t.shape[1], *([1] * (like.ndim - 3)))
        return t.view(-1, *([1] * (like.ndim - 1)))

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x0 + t noise."""
        t = self._at(t, x0)
        return (1 - t) * x0 + t * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """x0 = x_t - t v: the velocity v = noise - x0 points from the clean clip to the noise."""
        return x_t - self._at(t, x_t) * prediction

    def time_at(self, fraction: float) -> float:
        """t itself: 0 is clean, 1 pure noise."""
        return float(fraction)

    def clean_time(self) -> float:
        """t = 0: x_t is x0."""
        return 0.0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """t scaled to the timestep embedder's range: t * num_timesteps."""
        return t * self.num_timesteps

    def step_time(self, timestep, shape: tuple[int, int], device) -> torch.Tensor:
        """The scheduler's timestep (sigma * num_timesteps) as a time, one for every clip and frame."""
        value = float(timestep) / self.num_timesteps
        return torch.full(shape[:1], value, dtype=torch.float32, device=device)[:, None].expand(shape)

    def scheduler_settings(self, sampler: str) -> dict:
        settings = {"num_train_timesteps": self.num_timesteps, SHIFT_SETTING[sampler]: self.shift}
        if sampler in ("unipc", "dpm-solver"):  # the DDPM-family solvers, on the flow's sigmas
            settings.update(prediction_type="flow_prediction", use_flow_sigmas=True)
        return settings

    def sampler_takes_variance(self, sampler: str) -> bool:
        return False

    def training_losses(self, model_fn, x0: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None,
                        noise: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                        given: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-clip velocity MSE (B,), `loss` = `mse`: || model(x_t, t) - (noise - x0) ||^2, the mean over
        the frames that count (`mask` (B, F); None: all) of each frame's mean. Frames `given` (B, F) are clean
        inputs at t = 0 and do not count."""
        noise = torch.randn_like(x0) if noise is None else noise
        t, mask, _, out = self.noised_output(model_fn, x0, t, noise, mask, given, model_kwargs)
        if out.shape[1] != x0.shape[1]:
            raise LatteError(f"a flow model outputs {x0.shape[1]} channels (the velocity), this one {out.shape[1]}")
        error = ((noise - x0).float() - out.float()) ** 2
        mse = mean_flat(error) if t.ndim == 1 else masked_frame_mean(frame_mean(error), mask)  # (B,)
        return {"mse": mse, "loss": mse}
