"""Model FLOPs utilisation: the training FLOP/s a run achieves over the accelerator's peak.

MFU = 3 x forward FLOPs x clips/s / peak FLOP/s (the backward pass costs about twice the forward;
recomputed activations are not counted: PaLM's definition, Chowdhery et al. 2022, App. B). The peak
is the dense bf16 tensor-core figure of the GPU's datasheet, or train.peak_tflops when given; on a
device with no known peak (CPU, other GPUs) MFU is not logged.
"""
from __future__ import annotations

import torch

# Dense (no sparsity) bf16 peaks, TFLOP/s, from NVIDIA's datasheets; the first whose words all occur
# in torch.cuda.get_device_name() applies (SXM figures unless the name says PCIe).
PEAK_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0))


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


def count_forward_flops(model: torch.nn.Module, *args, **kwargs) -> int:
    """FLOPs (2 x multiply-adds, attention included) of one forward call, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops()


def train_flops_per_clip(trainer) -> int:
    """Forward FLOPs of one training clip (video frames, joint-training images, label or caption), counted
    on a meta-device copy of the trainer's model: nothing is computed or allocated."""
    from latte.models import build_model
    from latte.models.text import build_t2v_model

    c, images = trainer.model_config, trainer.config.data.images_per_clip
    text = trainer.text_encoder is not None
    with torch.device("meta"):  # parameters only: forward code that builds tables on the CPU still may
        model = (build_t2v_model if text else build_model)(c).eval()
    hw = (c.sample_size,) * 2 if text else tuple(c.latent_hw)
    x = torch.zeros(1, c.in_channels, c.num_frames + images, *hw, device="meta")
    kwargs = {"num_images": images}
    if text:
        length = trainer.text_encoder.max_length
        kwargs["encoder_hidden_states"] = torch.zeros(1, 1 + images, length, c.caption_channels, device="meta")
        kwargs["encoder_attention_mask"] = torch.ones(1, 1 + images, length, dtype=torch.long, device="meta")
    elif c.num_classes:
        kwargs["y"] = torch.zeros(1, 1 + images, dtype=torch.long, device="meta")
    return count_forward_flops(model, x, torch.zeros(1, dtype=torch.long, device="meta"), **kwargs)
