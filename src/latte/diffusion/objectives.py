"""The registry of objectives, by the name `diffusion.objective` gives (latte.diffusion.objective says
what an objective owns). Adding one: a file with an Objective subclass, and one entry here."""
from __future__ import annotations

import dataclasses

from latte.diffusion.flow import RectifiedFlow
from latte.diffusion.gaussian import GaussianDiffusion
from latte.diffusion.objective import Objective
from latte.errors import LatteError

OBJECTIVES: dict[str, type[Objective]] = {
    "ddpm": GaussianDiffusion,
    "flow": RectifiedFlow,
}
DEFAULT_OBJECTIVE = "ddpm"  # configs written before diffusion.objective existed trained this one


def objective_class(name: str) -> type[Objective]:
    """The objective registered as `name`; a one-line error naming the choices otherwise."""
    if name not in OBJECTIVES:
        raise LatteError(f"diffusion.objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def make_objective(settings, learn_sigma: bool, tokens_per_clip: int | None = None) -> Objective:
    """The objective a config's diffusion section describes: a DiffusionSection or its dict (a checkpoint's;
    keys it lacks, `objective` included, take their defaults), for a model of `tokens_per_clip` tokens
    (flow's time_shift_base_tokens derives its shift from them)."""
    values = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
    return objective_class(values.pop("objective", DEFAULT_OBJECTIVE)).from_settings(values, learn_sigma,
                                                                                     tokens_per_clip)
