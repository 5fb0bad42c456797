"""The exponential moving average of a run's weights (what samples and checkpoints' "ema" hold)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """EMA copy of the model whose frozen parameters are the model's own tensors (never copied)."""
    shared = {id(p): p for p in model.parameters() if not p.requires_grad}
    return copy.deepcopy(model, memo=shared).requires_grad_(False).eval()


def ema_pairs(model: nn.Module, ema: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (ema, trained) parameter pairs the EMA update walks, matched by name."""
    own = dict(model.named_parameters())
    return [(p, own[n]) for n, p in ema.named_parameters() if own[n].requires_grad]


def decay_at(step: int, decay: float, warmup: bool) -> float:
    """train.ema_decay, or with train.ema_warmup min(decay, (1 + step) / (10 + step)): the first steps'
    weights (near the zero init) fade out quickly."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def update(ema: list[torch.Tensor], trained: list[torch.Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * trained, one fused kernel over the tensors (local shards under FSDP)."""
    torch._foreach_lerp_(ema, trained, 1.0 - decay)
