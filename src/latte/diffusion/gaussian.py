"""Gaussian diffusion as Latte trains it: linear betas, epsilon (or v) prediction, learned-range
variance and the hybrid loss L_simple + L_vlb of IDDPM (Nichol & Dhariwal 2021, Sec. 3.1).

Tensors are videos (B, C, F, H, W); the model returns C channels, or 2C with learned sigma
(first C the prediction, last C the variance interpolation v in [-1, 1]).
"""
from __future__ import annotations

import math

import torch

from latte.errors import LatteError

PREDICTIONS = ("epsilon", "v", "x0")
LOSS_WEIGHTINGS = ("none", "min-snr")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


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


class GaussianDiffusion:
    """Forward process, prediction targets, posterior and the training losses."""

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 learn_sigma: bool = True, prediction: str = "epsilon", loss_weighting: str = "none",
                 min_snr_gamma: float = 5.0):
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

    def to(self, device) -> "GaussianDiffusion":
        """Move every table to `device` once (in place), so no step copies them."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped (B, 1, 1, ...) to broadcast against `like`."""
        values = table.to(t.device)[t].to(like.dtype)
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

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        a, s = self._at(self.sqrt_alphas_cumprod, t, x_t), self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if self.prediction == "epsilon":
            return (x_t - s * prediction) / a
        if self.prediction == "x0":
            return prediction
        return a * x_t - s * prediction

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-clip weight (B,) of the MSE. min-snr (Hang et al. 2023) weights the x0 error by
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
        """L_vlb in bits per dimension, (B,): KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, the decoder
        NLL at t = 0. Pass a detached `prediction` so this term trains only the variance (IDDPM Sec. 3.1)."""
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        model_mean, _ = self.q_posterior(self.predict_x0(x_t, t, prediction), x_t, t)
        model_log_var = self.model_log_variance(var_values, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model_fn, x0: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None,
                        noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-clip losses (B,): `loss` = `mse` (+ `vb` with learned sigma), as Latte trains (MSE, not rescaled);
        with a loss weighting, `loss` holds the weighted MSE and `mse` stays the plain one."""
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, t, **(model_kwargs or {}))
        channels = x0.shape[1]
        prediction = out[:, :channels]
        mse = mean_flat((self.target(x0, t, noise) - prediction.float()) ** 2)
        losses = {"mse": mse, "loss": mse * self.loss_weight(t)}
        if self.learn_sigma:
            if out.shape[1] != 2 * channels:
                raise LatteError(f"learned sigma needs {2 * channels} output channels, the model gives {out.shape[1]}")
            vb = self.vb_term(prediction.detach().float(), out[:, channels:].float(), x0.float(), x_t.float(), t)
            losses["vb"] = vb
            losses["loss"] = losses["loss"] + vb
        return losses
