"""Pyramid Attention Broadcast (PAB; Zhao et al. 2024, "Real-Time Video Generation with Pyramid
Attention Broadcast", arXiv 2408.12588), applied to a model from outside.

Attention outputs change little between neighbouring denoising steps in the middle of the
trajectory (Sec. 3.1: a U-shaped difference curve), and the less the more an attention's content
is low-frequency: spatial attention varies most, temporal less, cross-attention to the caption
least (Sec. 3.2). So inside a timestep range each attention output is computed once every
`interval` model calls and broadcast (reused) for the calls in between, with a longer interval for
the more stable kinds (the "pyramid"). Outside the range every call computes.

`PABCache(model, settings)` is a context manager: on entry it overrides `forward` of every
attention module (block.attn, block.temporal_attn, block.cross_attn) with one that reuses the
output, and on exit restores the modules. The sampling loop tells it each step's timestep from the
host-side schedule (`at_time`, which `sample` calls through `on_step`), so any sampler works and no
device tensor is read (a read would wait for the GPU at every step); the guidance pass runs the
conditional and unconditional halves as one batch, so a cached output covers both. Variant 4's
split-head attention is one fused computation and is not cached. Nothing in the model's code or
state dict changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from latte.errors import LatteError

KINDS = ("spatial", "temporal", "cross")


@dataclass(frozen=True)
class Broadcast:
    """Reuse an attention output for `interval` calls (1 = compute every call) while lo <= t <= hi
    (t in the objective's timesteps, 0..num_timesteps-1)."""

    interval: int
    lo: int
    hi: int

    def __post_init__(self):
        if self.interval < 1:
            raise LatteError(f"PAB interval must be >= 1, got {self.interval}")
        if not 0 <= self.lo <= self.hi:
            raise LatteError(f"PAB timestep range must satisfy 0 <= lo <= hi, got {self.lo}-{self.hi}")


@dataclass(frozen=True)
class PABSettings:
    """Defaults follow the paper's pyramid (spatial shortest, cross longest) over the middle of the
    trajectory: timesteps 100..800 of 1000 for self-attention, 100..900 for cross-attention."""

    spatial: Broadcast = field(default_factory=lambda: Broadcast(2, 100, 800))
    temporal: Broadcast = field(default_factory=lambda: Broadcast(4, 100, 800))
    cross: Broadcast = field(default_factory=lambda: Broadcast(6, 100, 900))

    @classmethod
    def parse(cls, spec: str | None, num_timesteps: int | None = None) -> PABSettings:
        """'' or None: defaults; else comma-separated KIND=INTERVAL[@LO-HI], e.g. "spatial=2,temporal=4@100-800".
        A range given must lie in the model's timesteps 0..num_timesteps-1 (when known)."""
        settings = {k: getattr(cls(), k) for k in KINDS}
        for item in filter(None, (s.strip() for s in (spec or "").split(","))):
            kind, _, value = item.partition("=")
            if kind not in KINDS or not value:
                raise LatteError(f"--cache-options {item!r}: expected KIND=INTERVAL[@LO-HI], KIND one of {', '.join(KINDS)}")
            interval, _, span = value.partition("@")
            lo, hi = settings[kind].lo, settings[kind].hi
            try:
                if span:
                    lo, hi = (int(v) for v in span.split("-"))
                settings[kind] = Broadcast(int(interval), lo, hi)
            except ValueError:
                raise LatteError(f"--cache-options {item!r}: INTERVAL and LO-HI must be integers") from None
            if span and num_timesteps is not None and hi > num_timesteps - 1:
                raise LatteError(f"--cache-options {item!r}: the model's timesteps are 0-{num_timesteps - 1}, "
                                 f"the range ends at {hi}")
        return cls(**settings)

    def describe(self) -> str:
        return ", ".join(f"{k} every {b.interval} in t {b.lo}-{b.hi}" for k in KINDS for b in [getattr(self, k)])


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(kind, module) of every cacheable attention of the model's blocks."""
    found = []
    for block in model.blocks:
        kind = getattr(block, "kind", None)
        if kind in ("spatial", "temporal"):
            found.append((kind, block.attn))
        elif kind == "factorised":
            found += [("spatial", block.attn), ("temporal", block.temporal_attn)]
        if hasattr(block, "cross_attn"):
            found.append(("cross", block.cross_attn))
    return found


class PABCache:
    """Wraps a model's attention modules while active; `calls`/`computed` count per kind (for reports)."""

    def __init__(self, model: nn.Module, settings: PABSettings | None = None):
        self.model, self.settings = model, settings or PABSettings()
        self.modules = attention_modules(model)
        self.timestep: float | None = None  # of the model calls now running
        self._told = False  # whether the sampling loop gives the timesteps (at_time)
        self._state: dict[int, tuple[torch.Tensor, int, tuple]] = {}  # id(module) -> (output, age, input key)
        self.calls = dict.fromkeys(KINDS, 0)
        self.computed = dict.fromkeys(KINDS, 0)

    def at_time(self, timestep: float) -> None:
        """The timestep of the model calls that follow, from the sampler's host-side schedule."""
        self.timestep, self._told = float(timestep), True

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The model's forward. Called without at_time (outside `sample`), it takes the timestep from `t`,
        which must then be a host tensor: reading a device one would wait for the device at every call."""
        if not self._told:
            if t.device.type != "cpu":
                raise LatteError("PABCache on a device needs each step's timestep from the schedule: "
                                 "sample(..., on_step=cache.at_time)")
            self.timestep = float(t.reshape(-1)[0])
        return self.model(x, t, *args, **kwargs)

    def parameters(self):
        return self.model.parameters()

    def reset(self) -> None:
        """Forget cached outputs (a new trajectory starts)."""
        self._state.clear()

    def _wrap(self, kind: str, module: nn.Module):
        rule: Broadcast = getattr(self.settings, kind)
        original = module.forward

        @torch.compiler.disable  # the reuse decision is Python state: keep it out of compiled graphs
        def forward(x, *args, **kwargs):
            self.calls[kind] += 1
            key = (tuple(x.shape), x.dtype, x.device)
            held = self._state.get(id(module))
            inside = self.timestep is not None and rule.lo <= self.timestep <= rule.hi
            if inside and held is not None and held[2] == key and held[1] < rule.interval:
                self._state[id(module)] = (held[0], held[1] + 1, key)
                return held[0]
            out = original(x, *args, **kwargs)
            self.computed[kind] += 1
            self._state[id(module)] = (out, 1, key)
            return out

        return forward

    def __enter__(self) -> PABCache:
        for kind, module in self.modules:
            if "forward" in module.__dict__:
                raise LatteError("attention modules are already wrapped by another cache")
            module.forward = self._wrap(kind, module)
        self.reset()
        self.timestep, self._told = None, False
        return self

    def __exit__(self, *exc) -> None:
        for _, module in self.modules:
            module.__dict__.pop("forward", None)
        self.reset()
