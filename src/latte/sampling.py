"""Generating videos from a trained model: used by `latte sample` and by training's sample filmstrips.

Video i of a run is drawn from its own generator seeded by (seed, i), so a video does not depend
on the batch size, on how many processes share the work, or on whether a run was resumed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from latte.diffusion import sample as diffusion_sample
from latte.errors import LatteError
from latte.models import Latte


@dataclass
class SampleRequest:
    num_videos: int = 8
    sampler: str = "ddpm"
    steps: int | None = None
    cfg_scale: float = 1.0
    class_label: int | None = None  # None: cycle through the classes (class models)
    seed: int = 0
    batch_size: int = 8
    num_frames: int | None = None  # None: the trained frame count (any count works)
    eta: float = 0.0


def labels_for(indices: list[int], model: Latte, request: SampleRequest) -> torch.Tensor | None:
    classes = model.config.num_classes
    if classes == 0:
        if request.class_label is not None:
            raise LatteError("this model is unconditional: --class-label does not apply")
        return None
    if request.class_label is not None:
        if not 0 <= request.class_label < classes:
            raise LatteError(f"--class-label must be in [0, {classes - 1}], got {request.class_label}")
        return torch.full((len(indices),), request.class_label, dtype=torch.long)
    return torch.tensor([i % classes for i in indices], dtype=torch.long)


def initial_noise(indices: list[int], shape: tuple, seed: int) -> torch.Tensor:
    """x_T for each video index from its own generator: (len(indices), *shape)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
                        for i in indices])


@torch.no_grad()
def generate(model: Latte, diffusion, request: SampleRequest, indices: list[int] | None = None, vae=None,
             device: torch.device | str = "cpu", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Videos (N, C, F, H, W) in [-1, 1] (decoded by the VAE when given) and their labels."""
    c = model.config
    indices = list(range(request.num_videos)) if indices is None else indices
    frames = request.num_frames or c.num_frames
    shape = (c.in_channels, frames, *c.latent_hw)
    model = model.eval().to(device)
    labels = labels_for(indices, model, request)
    guided = c.num_classes > 0 and request.cfg_scale != 1.0
    outputs = []
    chunks = [indices[i:i + request.batch_size] for i in range(0, len(indices), request.batch_size)]
    for n, chunk in enumerate(tqdm(chunks, desc="sample", unit="batch", disable=not progress or len(chunks) == 1)):
        x_t = initial_noise(chunk, shape, request.seed).to(device)
        y = None if labels is None else labels[n * request.batch_size:n * request.batch_size + len(chunk)].to(device)
        generator = torch.Generator().manual_seed(request.seed * 1_000_003 + chunk[0] + 7)
        x0 = diffusion_sample(
            model, x_t.shape, diffusion, sampler=request.sampler, steps=request.steps, eta=request.eta,
            cfg_scale=request.cfg_scale if guided else 1.0, y=y, null_class=c.num_classes if guided else None,
            generator=generator, device=device, progress=progress and len(chunks) == 1, noise=x_t)
        if vae is not None:
            x0 = vae.decode(x0)
        outputs.append(x0.clamp(-1, 1).float().cpu())
    return torch.cat(outputs), labels
