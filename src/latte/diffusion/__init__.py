"""Diffusion process (IDDPM hybrid loss) and samplers (DDPM, DDIM, DPM-Solver++)."""
from latte.diffusion.gaussian import PREDICTIONS, GaussianDiffusion
from latte.diffusion.samplers import DEFAULT_STEPS, SAMPLERS, guided_output, make_scheduler, sample

__all__ = ["DEFAULT_STEPS", "GaussianDiffusion", "PREDICTIONS", "SAMPLERS", "guided_output", "make_scheduler", "sample"]
