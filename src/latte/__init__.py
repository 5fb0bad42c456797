"""Latte: Latent Diffusion Transformer for Video Generation (arXiv 2401.03048)."""

__version__ = "0.1.0"
