"""Gaussian diffusion as Latte trains it, the "ddpm" objective: linear betas, epsilon (or v, x0)
prediction, learned-range variance and the hybrid loss L_simple + L_vlb of IDDPM (Nichol & Dhariwal
2021, Sec. 3.1). Its time is the integer timestep 0..T-1, drawn one per clip.

Tensors are videos (B, C, F, H, W); times are (B,) per clip or (B, F) per frame. The model returns
C channels, or 2C with learned sigma (first C the prediction, last C the variance interpolation v in
[-1, 1]).
"""
from __future__ import annotations

import math

import torch

from latte.diffusion.objective import Objective, frame_mean, masked_frame_mean, mean_flat
from latte.errors import LatteError

PREDICTIONS = ("epsilon", "v", "x0")
LOSS_WEIGHTINGS = ("none", "min-snr")
# the diffusion config keys this objective reads (from_settings)
SETTINGS = ("num_timesteps", "beta_start", "beta_end", "prediction", "loss_weighting", "min_snr_gamma",
            "timestep_power", "timestep_power_until")


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by DDPM's decoder."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """log p(x) of data in [-1, 1] quantised to 256 levels under N(means, e^(2 log_scales)) (DDPM Eq. 13)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class GaussianDiffusion(Objective):
    """Forward process, prediction targets, posterior and the training losses."""

    name = "ddpm"
    settings = SETTINGS
    learns_variance = True
    samplers = ("ddpm", "ddim", "dpm-solver", "dpm-solver-sde", "unipc", "deis")
    choices = {"prediction": PREDICTIONS, "loss_weighting": LOSS_WEIGHTINGS}
    ranges = {"num_timesteps": (2, math.inf, False, False), "beta_start": (0, 1, True, True),
              "beta_end": (0, 1, True, True), "min_snr_gamma": (0, math.inf, True, True),
              "timestep_power": (0, math.inf, True, True),
              "timestep_power_until": (0, math.inf, False, False)}  # past max_steps the power holds throughout

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 learn_sigma: bool = True, prediction: str = "epsilon", loss_weighting: str = "none",
                 min_snr_gamma: float = 5.0, timestep_power: float = 1.0, timestep_power_until: int = 0):
        if prediction not in PREDICTIONS:
            raise LatteError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise LatteError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
        if min_snr_gamma <= 0:
            raise LatteError(f"min_snr_gamma must be > 0, got {min_snr_gamma}")
        if not 0 < beta_start < beta_end < 1:
            raise LatteError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.num_timesteps, self.beta_start, self.beta_end = num_timesteps, beta_start, beta_end
        self.learn_sigma, self.prediction = learn_sigma, prediction
        self.loss_weighting, self.min_snr_gamma = loss_weighting, min_snr_gamma
        self.timestep_power, self.timestep_power_until = timestep_power, timestep_power_until
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.betas, self.alphas_cumprod, self.alphas_cumprod_prev = betas, alphas_cumprod, prev
        self.posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
        # log of the posterior variance with the t = 0 entry (0) replaced by t = 1's
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * prev.sqrt() / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)
        # per-step lookups index these directly (no table-wide op per step)
        self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
        self.log_betas = torch.log(betas)

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        if settings["beta_start"] > settings["beta_end"]:
            raise LatteError(f"diffusion.beta_start {settings['beta_start']} must be <= diffusion.beta_end "
                             f"{settings['beta_end']}")

    @classmethod
    def from_settings(cls, settings: dict, learn_sigma: bool, tokens_per_clip: int | None = None) -> GaussianDiffusion:
        return cls(learn_sigma=learn_sigma, **{key: settings[key] for key in SETTINGS if key in settings})

    def to(self, device) -> GaussianDiffusion:
        """Move every table to `device` once (in place), so no step copies them."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped to broadcast against `like`: t (B,) -> (B, 1, 1, ...); t (B, F) against a
        video (B, C, F, ...) -> (B, 1, F, 1, ...)."""
        values = table.to(t.device)[t].to(like.dtype)
        if t.ndim == 2:
            return values.view(values.shape[0], 1, values.shape[1], *([1] * (like.ndim - 3)))
        return values.view(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None, device="cpu",
                         power: float = 1.0) -> torch.Tensor:
        """One timestep per clip, t = T * u**power for uniform u: 1 is uniform; below 1, high-noise steps
        (where a sample's layout is set) come more often."""
        T = self.num_timesteps
        where = generator.device if generator is not None else device  # drawn where the generator lives
        if power == 1.0:
            return torch.randint(0, T, (batch,), generator=generator, device=where).to(device)
        return (torch.rand(batch, generator=generator, device=where) ** power * T).long().clamp(max=T - 1).to(device)

    def draw_times(self, clips: int, frames: int, generator: torch.Generator | None = None, device="cpu",
                   step: int = 0) -> torch.Tensor:
        """(clips, frames): one timestep per clip (sample_timesteps, the same draws as always), broadcast
        over the frames. The power holds before step `timestep_power_until` (0: always), then t is uniform."""
        until = self.timestep_power_until
        power = self.timestep_power if not until or step < until else 1.0
        t = self.sample_timesteps(clips, generator, device=device, power=power)  # (clips,)
        return t[:, None].expand(clips, frames)

    def held_out_times(self, count: int) -> torch.Tensor:
        """Timesteps at the midpoints of min(count, T) equal buckets of 0..T-1: T = 1000 and count 10
        give 50, 150, ..., 950."""
        n = min(count, self.num_timesteps)
        return ((torch.arange(n, dtype=torch.float64) + 0.5) * self.num_timesteps / n).long()  # (n,)

    def clean_time(self) -> int:
        """Timestep 0 (x_0 = sqrt(abar_0) x0 + 0.01 noise: given frames keep x0 itself, `keep_given`)."""
        return 0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The network embeds the integer timestep itself."""
        return t

    def step_time(self, timestep, shape: tuple[int, int], device) -> torch.Tensor:
        """One timestep for every clip and frame: a broadcast (is_per_clip holds)."""
        return torch.full(shape[:1], int(timestep), dtype=torch.long, device=device)[:, None].expand(shape)

    def scheduler_settings(self, sampler: str) -> dict:
        settings = dict(num_train_timesteps=self.num_timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
                        beta_schedule="linear",
                        prediction_type={"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}[self.prediction])
        if sampler == "ddpm":  # ancestral steps draw with the model's variance
            settings["variance_type"] = "learned_range" if self.learn_sigma else "fixed_small"
        return settings

    def sampler_takes_variance(self, sampler: str) -> bool:
        return sampler == "ddpm" and self.learn_sigma

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.q_sample(x0, t, noise)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model learns: eps, x0, or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        return self._at(self.sqrt_alphas_cumprod, t, x0) * noise - self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def time_at(self, fraction: float) -> int:
        """The integer timestep round(fraction * T), at most T - 1: 0.9 of T = 1000 is 900."""
        return min(int(round(fraction * self.num_timesteps)), self.num_timesteps - 1)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        a, s = self._at(self.sqrt_alphas_cumprod, t, x_t), self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if self.prediction == "epsilon":
            return (x_t - s * prediction) / a
        if self.prediction == "x0":
            return prediction
        return a * x_t - s * prediction

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Weight of the MSE at each time, t's shape. min-snr (Hang et al. 2023) weights the x0 error by
        min(SNR_t, gamma), SNR_t = abar / (1 - abar), written for the target actually predicted:
        x0 min(SNR, g); epsilon min(SNR, g) / SNR; v min(SNR, g) / (SNR + 1)."""
        if self.loss_weighting == "none":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        abar = self.alphas_cumprod.to(t.device)[t]
        snr = abar / (1 - abar)
        clipped = snr.clamp(max=self.min_snr_gamma)
        weight = {"x0": clipped, "epsilon": clipped / snr, "v": clipped / (snr + 1)}[self.prediction]
        return weight.float()

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of q(x_{t-1} | x_t, x0)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, t, x_t)

    def model_log_variance(self, var_values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Learned range: log var = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2 (IDDPM Eq. 15)."""
        frac = (var_values + 1) / 2
        max_log = self._at(self.log_betas, t, var_values)
        min_log = self._at(self.posterior_log_variance_clipped, t, var_values)
        return frac * max_log + (1 - frac) * min_log

    def vb_term(self, prediction, var_values, x0, x_t, t) -> torch.Tensor:
        """L_vlb in bits per dimension, t's shape ((B,) per clip, (B, F) per frame): KL(q(x_{t-1}|x_t,x0) ||
        p(x_{t-1}|x_t)) for t > 0, the decoder NLL at t = 0. Pass a detached `prediction` so this term trains
        only the variance (IDDPM Sec. 3.1)."""
        reduce = mean_flat if t.ndim == 1 else frame_mean
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        model_mean, _ = self.q_posterior(self.predict_x0(x_t, t, prediction), x_t, t)
        model_log_var = self.model_log_variance(var_values, t)
        kl = reduce(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
        nll = -reduce(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model_fn, x0: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None,
                        noise: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                        given: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-clip losses (B,): `loss` = `mse` (+ `vb` with learned sigma), as Latte trains (MSE, not rescaled);
        with a loss weighting, `loss` holds the weighted MSE and `mse` stays the plain one. Times t (B,) or
        (B, F). Without a `mask`, times one per clip (is_per_clip) take Latte's per-clip computation, bit for
        bit; otherwise each term is the mean over the frames that count (`mask` (B, F); None: all) of its
        per-frame value. Frames `given` (B, F) are clean inputs at t = 0 and do not count."""
        noise = torch.randn_like(x0) if noise is None else noise
        t, mask, x_t, out = self.noised_output(model_fn, x0, t, noise, mask, given, model_kwargs)
        channels = x0.shape[1]
        prediction = out[:, :channels]
        error = (self.target(x0, t, noise) - prediction.float()) ** 2
        if t.ndim == 1:
            mse = mean_flat(error)
            losses = {"mse": mse, "loss": mse * self.loss_weight(t)}
        else:
            per_frame = frame_mean(error)  # (B, F)
            losses = {"mse": masked_frame_mean(per_frame, mask),
                      "loss": masked_frame_mean(per_frame * self.loss_weight(t), mask)}
        if self.learn_sigma:
            if out.shape[1] != 2 * channels:
                raise LatteError(f"learned sigma needs {2 * channels} output channels, the model gives {out.shape[1]}")
            vb = self.vb_term(prediction.detach().float(), out[:, channels:].float(), x0.float(), x_t.float(), t)
            losses["vb"] = vb if t.ndim == 1 else masked_frame_mean(vb, mask)
            losses["loss"] = losses["loss"] + losses["vb"]
        return losses
