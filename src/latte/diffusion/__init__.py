"""Objectives (what training minimises and what time means: DDPM with the IDDPM hybrid loss) and
samplers (DDPM, DDIM, DPM-Solver++, UniPC, DEIS) over any objective."""
from latte.diffusion.gaussian import PREDICTIONS, GaussianDiffusion
from latte.diffusion.objective import Objective
from latte.diffusion.objectives import OBJECTIVES, make_objective, objective_class
from latte.diffusion.samplers import DEFAULT_STEPS, SAMPLERS, guided_output, make_scheduler, sample

__all__ = ["DEFAULT_STEPS", "GaussianDiffusion", "OBJECTIVES", "Objective", "PREDICTIONS", "SAMPLERS", "guided_output",
           "make_objective", "make_scheduler", "objective_class", "sample"]
