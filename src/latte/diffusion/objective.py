"""What an objective is: the one owner of time. It draws the training times, corrupts clean clips,
computes the loss, says which number the network embeds for a time, and describes itself to the
samplers (diffusers scheduler settings, the sampler names it supports).

Times are (clips, frames) tensors: an objective that draws one time per clip returns it broadcast
over the frames (`expand`, no copy). The trainer, the samplers, the PAB cache and the config checks
use only this interface, and find objectives by name in `latte.diffusion.objectives.OBJECTIVES`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from latte.errors import LatteError


def is_per_clip(t: torch.Tensor) -> bool:
    """Whether (B,) or (B, F) times are one per clip by construction: (B,), one column, or a broadcast
    (stride 0 over frames, as `draw_times` returns). Read from the shape alone: no device sync."""
    return t.ndim == 1 or t.shape[1] == 1 or t.stride(1) == 0


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def frame_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch and the frames: (B, C, F, ...) -> (B, F)."""
    return x.mean(dim=(1, *range(3, x.ndim)))


def masked_frame_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the frames that count: values (B, F), mask (B, F) bool or 0/1 -> (B,). Frames left out
    do not enter at all (not even as NaN); a clip with no frame that counts gives 0."""
    keep = mask.to(device=values.device, dtype=torch.bool)
    total = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim=1)
    return total / keep.sum(dim=1).clamp(min=1).to(values.dtype)


def keep_given(x_t: torch.Tensor, x0: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """x_t (B, C, F, ...) with the clean x0 at the given frames (`given` (B, F) bool): those frames are
    inputs, exactly, whatever the objective's corruption leaves at its clean time (DDPM's t = 0 keeps
    sqrt(1 - abar_0) = 0.01 of the noise)."""
    where = given.to(device=x_t.device, dtype=torch.bool)
    where = where.view(where.shape[0], 1, where.shape[1], *([1] * (x_t.ndim - 3)))  # (B, 1, F, 1, ...)
    return torch.where(where, x0.to(x_t.dtype), x_t)


class Objective(ABC):
    """The interface of a training objective; `latte.diffusion.gaussian.GaussianDiffusion` ("ddpm") is one."""

    name: str  # its key in OBJECTIVES (config: diffusion.objective)
    settings: tuple[str, ...]  # the diffusion config keys it reads; the others keep their defaults in its runs
    samplers: tuple[str, ...]  # the sampler names (latte.diffusion.samplers.SAMPLERS) it can be sampled with
    choices: dict[str, tuple]  # diffusion config keys it reads that take one of a fixed set of values
    ranges: dict[str, tuple]  # its numeric config keys: (low, high, low excluded, high excluded)
    num_timesteps: int  # the scheduler's num_train_timesteps: sampling steps and PAB ranges are counted in it
    learn_sigma: bool  # whether the model also outputs a variance (2C channels)
    learns_variance: bool  # whether its models may output a variance at all (model.learn_sigma)

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: dict, learn_sigma: bool, tokens_per_clip: int | None = None) -> Objective:
        """Built from a config's diffusion section as a dict (keys it lacks take their defaults), for a model
        of `tokens_per_clip` tokens (None: not known; an objective whose settings need it says so)."""

    @classmethod  # noqa: B027 - optional: an objective whose keys combine freely needs no more checks
    def check_settings(cls, settings: dict) -> None:
        """One-line LatteErrors for combinations of its config keys that choices and ranges cannot catch."""

    @abstractmethod
    def to(self, device) -> Objective:
        """Its tables moved to `device` once (in place)."""

    @abstractmethod
    def draw_times(self, clips: int, frames: int, generator: torch.Generator | None, device, step: int) -> torch.Tensor:
        """Training times (clips, frames) for optimizer step `step`, drawn from `generator`."""

    @abstractmethod
    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t from clean clips x0 (B, C, F, H, W) at times t (B,) or (B, F)."""

    @abstractmethod
    def training_losses(self, model_fn, x0: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None,
                        noise: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                        given: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-clip losses (B,), `loss` the one to minimise; `mask` (B, F) marks the frames that count
        (None: all of them). `given` (B, F) bool marks frames given clean (frame conditioning): they take
        the clean time (`with_given`), x_t keeps x0 there (`keep_given`), and they leave the loss."""

    @abstractmethod
    def clean_time(self):
        """The time of a clean frame (no noise), in this objective's units: what given frames take."""

    def with_given(self, t: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Times (B,) or (B, F) as (B, F), the clean time at the frames `given` (B, F) marks."""
        t = (t[:, None] if t.ndim == 1 else t).expand(given.shape)  # (B, F)
        return torch.where(given.to(device=t.device, dtype=torch.bool), t.new_full((), self.clean_time()), t)

    def frames_that_count(self, x0: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None,
                          given: torch.Tensor | None):
        """(t, mask, given) of a training batch x0 (B, C, F, H, W): frames `given` (B, F) take the clean time
        and leave the mask (they are inputs, not scored); without a mask, times one per clip come back (B,)
        (the per-clip computation), otherwise (B, F) with a (B, F) bool mask."""
        if given is not None:
            given = given.to(device=x0.device, dtype=torch.bool)  # (B, F)
            t = self.with_given(t, given)
            mask = ~given if mask is None else mask.to(device=x0.device, dtype=torch.bool) & ~given
        if mask is None and is_per_clip(t):
            return (t if t.ndim == 1 else t[:, 0]), None, given  # (B,)
        t = (t[:, None] if t.ndim == 1 else t).expand(-1, x0.shape[2])  # (B, F)
        mask = torch.ones(t.shape, dtype=torch.bool, device=x0.device) if mask is None else mask
        return t, mask, given

    def noised_output(self, model_fn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                      mask: torch.Tensor | None, given: torch.Tensor | None, model_kwargs: dict | None):
        """The first half of a training loss: x0 (B, C, F, H, W) noised to times t (given frames kept clean,
        frames_that_count) and the network's output on it -> (t, mask, x_t, out)."""
        t, mask, given = self.frames_that_count(x0, t, mask, given)
        x_t = self.corrupt(x0, t, noise)
        if given is not None:
            x_t = keep_given(x_t, x0, given)
        return t, mask, x_t, model_fn(x_t, self.model_time(t), **(model_kwargs or {}))

    @abstractmethod
    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """The clean clip that the network's `prediction` (its first C channels) at x_t and times t implies."""

    @abstractmethod
    def time_at(self, fraction: float):
        """The time `fraction` of the way from clean (0) to pure noise (1), in this objective's units."""

    @abstractmethod
    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The number the network embeds for times t (same shape)."""

    @abstractmethod
    def step_time(self, timestep, shape: tuple[int, int], device) -> torch.Tensor:
        """Times `shape` (B, F) of a sampling step at the scheduler's `timestep` (a host-side value)."""

    @abstractmethod
    def scheduler_settings(self, sampler: str) -> dict:
        """The diffusers scheduler settings that describe the trained model (noise schedule, prediction
        type, variance) for `sampler`; latte.diffusion.samplers adds the sampler's own."""

    def held_out_times(self, count: int) -> torch.Tensor:
        """(n,) times, n <= count, for the held-out loss (latte.train.heldout): the midpoints of n equal
        buckets that span the objective's whole time range, from least to most noise, each as
        `draw_times` would give it for one clip (same dtype and units). n is below count only where the
        range holds fewer distinct times. A fixed grid, so evaluations differ only by the weights."""
        raise LatteError(f"objective {self.name} defines no held-out times: set train.eval_every=0")

    @abstractmethod
    def sampler_takes_variance(self, sampler: str) -> bool:
        """Whether `sampler`'s scheduler reads the model's variance channels (else it gets the first C)."""
