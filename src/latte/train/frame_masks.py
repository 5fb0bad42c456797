"""Frame masks for frame-conditioned training (image-to-video, continuation, interpolation): per clip,
with the probabilities of the `train.mask_<kind>` keys, some frames are given clean and the model learns
to generate the others (Open-Sora 1.1's masking). The objective does the rest (`training_losses(...,
given=)`: the clean time and x0 at given frames, which leave the loss).

Kinds, one per clip, drawn by one uniform number against the cumulative probabilities (the rest of the
clips: no mask):

    first   the first frame                    (image-to-video)
    prefix  the first k frames                 (continuation): k = train.mask_prefix_frames, or, when
                                               that is 0, drawn per clip uniformly from 1 .. units - 1
    last    the last frame
    ends    the first and the last frame       (interpolation)
    random  each frame with probability 1/2, the one of largest draw never, so one is always generated

The unit is the model's token frame: with tubelet patches (`tubelet_frames` = s) a mask gives or
generates whole tubelets (first = the first s frames), so no token mixes a clean and a noisy frame; a
fixed k must then be a multiple of s. Joint image frames are never given. Masks are drawn in the
trainer from its noise stream for the whole global batch, after the times, noise and dropout (three
draws: kinds, k, frames); with every probability 0 nothing is drawn, so runs without masks are
bitwise those before the keys existed.
"""
from __future__ import annotations

from itertools import accumulate

import torch

from latte.config import TrainSection
from latte.errors import LatteError

KINDS = TrainSection.MASK_KINDS  # train.mask_<kind>: its probability per clip
KEYS = tuple(f"mask_{kind}" for kind in KINDS)
RANDOM_RATE = 0.5  # the random kind: the chance of each frame (unit) to be given


def check(train: TrainSection, video_frames: int, unit: int, where: str) -> None:
    """One-line errors for mask settings the clips cannot take: too few frames (units of `unit` frames) to
    give some and generate others, or a fixed prefix that is not whole units of a clip. `where` names
    what sets the frames and the unit, for the message."""
    total = sum(train.mask_probabilities)
    if total > 1 + 1e-9:
        raise LatteError(f"train.{' + '.join(KEYS)} = {total:g} must be <= 1 (the rest of the clips get no mask)")
    k = train.mask_prefix_frames
    if k and not train.mask_prefix:
        raise LatteError("train.mask_prefix_frames applies when train.mask_prefix > 0")
    if not train.trained_kinds():
        return
    units = video_frames // unit
    need = 3 if train.mask_ends else 2  # ends gives two units and must leave one
    if units < need:
        what = f"tubelets of {unit} frames" if unit > 1 else "frames"
        raise LatteError(f"train.mask_* need clips of at least {need} {what} (some given, one generated), "
                         f"{where} gives {units}")
    if k and k % unit:
        raise LatteError(f"train.mask_prefix_frames {k} splits a tubelet of {unit} frames ({where}): give a "
                         f"multiple of {unit}")
    if k and k // unit >= units:
        raise LatteError(f"train.mask_prefix_frames {k} must leave a frame to generate: below {units * unit} ({where})")


def draw_given(train: TrainSection, clips: int, video_frames: int, unit: int, image_frames: int,
               generator: torch.Generator | None, device) -> torch.Tensor:
    """(clips, video_frames + image_frames) bool, True at the given frames: one kind per clip (or none),
    drawn from `generator` where it lives. Draws the same amount whatever the probabilities."""
    units = video_frames // unit
    where = generator.device if generator is not None else torch.device(device)
    kind_draw = torch.rand(clips, generator=generator, device=where)  # (G,)
    k_draw = torch.rand(clips, generator=generator, device=where)  # (G,)
    frame_draw = torch.rand((clips, units), generator=generator, device=where)  # (G, U)
    kind = torch.zeros(clips, dtype=torch.long, device=where)  # (G,) index into KINDS; len(KINDS): no mask
    for edge in accumulate(train.mask_probabilities):  # host numbers: no host-to-device copy per step
        kind += (kind_draw.double() >= edge).long()
    fixed = train.mask_prefix_frames // unit
    k = torch.full_like(kind, fixed) if fixed else 1 + (k_draw * (units - 1)).long().clamp(max=units - 2)  # (G,)
    index = torch.arange(units, device=where)[None]  # (1, U)
    shapes = {"first": index == 0, "prefix": index < k[:, None], "last": index == units - 1,
              "ends": (index == 0) | (index == units - 1),
              "random": (frame_draw < RANDOM_RATE) & (frame_draw < frame_draw.amax(dim=1, keepdim=True))}
    given = torch.zeros((clips, units), dtype=torch.bool, device=where)  # (G, U)
    for i, name in enumerate(KINDS):
        given |= (kind == i)[:, None] & shapes[name]
    given = given.repeat_interleave(unit, dim=1)  # (G, F): whole tubelets
    images = torch.zeros((clips, image_frames), dtype=torch.bool, device=where)  # joint image frames: never given
    return torch.cat([given, images], dim=1).to(device)  # (G, F + I)
