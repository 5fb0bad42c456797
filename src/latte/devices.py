"""The device a command runs on, from its --device / train.device setting, and the compute precisions."""
from __future__ import annotations

import torch

from latte.errors import LatteError

PRECISIONS = ("bf16", "fp32")  # sampling, eval and training (which adds "auto")


def pick_device(name: str, setting: str = "--device") -> torch.device:
    """"auto" (CUDA when visible, else the CPU), "cpu", "cuda" or "cuda:N"; `setting` names the option in
    the one-line error a device that is not there gets."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LatteError(f"{setting}={name} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LatteError(f"{setting}={name} asks for CUDA, but no CUDA device is visible: use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise LatteError(f"{setting}={name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def default_precision(device) -> str:
    """bf16 on CUDA, fp32 elsewhere (CPU bf16 works but is slower than fp32 on most CPUs): sampling's and eval's
    default when --precision is not given."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"
