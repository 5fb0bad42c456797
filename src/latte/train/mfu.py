"""Model FLOPs utilisation: the training FLOP/s a run achieves over the accelerator's peak.

MFU = 3 x forward FLOPs x clips/s / peak FLOP/s (the backward pass costs about twice the forward;
recomputed activations are not counted: PaLM's definition, Chowdhery et al. 2022, App. B). The peak
is the dense bf16 tensor-core figure of the GPU's datasheet, or train.peak_tflops when given; on a
device with no known peak (CPU, other GPUs) MFU is not logged.
"""
from __future__ import annotations

import torch

from latte.models import forward_flops

# Dense (no sparsity) bf16 peaks, TFLOP/s, from NVIDIA's datasheets; the first whose words all occur
# in torch.cuda.get_device_name() applies (SXM figures, except the H100 PCIe and the H200 NVL).
PEAK_TFLOPS = (("H200 NVL", 835.5), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0))


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of `device` (override first), or None when unknown."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for words, tflops in PEAK_TFLOPS:
        if all(word in name for word in words.split()):
            return tflops * 1e12
    return None


def utilisation(forward_flops_per_clip: float, clips_per_s: float, peak: float) -> float:
    """MFU in [0, 1]: 3 x forward FLOPs per clip x clips/s / peak FLOP/s."""
    return 3.0 * forward_flops_per_clip * clips_per_s / peak


def train_flops_per_clip(trainer) -> int:
    """Forward FLOPs of one training clip (video frames, joint-training images, label or caption), counted
    on the meta device: nothing is computed or allocated."""
    text = trainer.text_encoder
    return forward_flops(trainer.model_config, num_images=trainer.config.data.images_per_clip,
                         caption_tokens=text.max_length if text is not None else 0)
