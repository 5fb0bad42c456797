"""The frozen image VAE Latte works in: a diffusers AutoencoderKL applied to each frame on its own.

Latent = E(x).sample() * scaling_factor (0.18215 for Stable Diffusion's KL-f8), decoding divides by it
(Latte paper, Sec. 3; the official release uses sd-vae-ft-ema / sd-vae-ft-mse). Frames go through the
VAE `chunk_size` at a time, so memory stays bounded for long clips and large batches.
"""
from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch

from latte.errors import LatteError

# Short names for the two VAEs the official release uses.
ALIASES = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse",
           "sd-ema": "stabilityai/sd-vae-ft-ema", "sd-mse": "stabilityai/sd-vae-ft-mse"}
DEFAULT_SCALING = 0.18215


class FrameVAE:
    """A frozen AutoencoderKL over videos (B, C, F, H, W) <-> latents (B, latent_channels, F, H/f, W/f).

    The VAE follows its input: called with a tensor on another device, it moves there first.
    Single-channel videos are encoded as grey RGB when the VAE takes three channels.
    `spec` is what it was loaded from (a folder as an absolute path), stored in checkpoints and latent caches.
    """

    def __init__(self, model, spec: str, chunk_size: int = 32):
        if chunk_size < 1:
            raise LatteError(f"VAE chunk_size must be >= 1, got {chunk_size}")
        self.model = model.requires_grad_(False).eval()
        self.spec = spec
        self.chunk_size = int(chunk_size)
        config = model.config
        self.scaling_factor = float(getattr(config, "scaling_factor", None) or DEFAULT_SCALING)
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)  # one 2x downsampling per block but the last

    def __repr__(self) -> str:
        return (f"FrameVAE({self.spec!r}, latent_channels={self.latent_channels}, downsample={self.downsample}, "
                f"scaling_factor={self.scaling_factor})")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> FrameVAE:
        if device is not None:
            self.model.to(device)
        if dtype is not None:
            self.model.to(dtype)
        return self

    def latent_shape(self, video_shape) -> tuple[int, ...]:
        """(C, F, H, W) or (B, C, F, H, W) of pixels -> the latent shape."""
        *lead, _, frames, height, width = video_shape
        return (*lead, self.latent_channels, frames, height // self.downsample, width // self.downsample)

    def _frames(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise LatteError(f"the VAE takes videos (B, C, F, H, W), got shape {tuple(video.shape)}")
        if video.device != self.device:
            self.model.to(video.device)
        if video.shape[1] == 1 and self.model.config.in_channels == 3:  # grey clips (Moving MNIST) as RGB
            video = video.expand(-1, 3, -1, -1, -1)
        b, c, f, h, w = video.shape
        return video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (B*F, C, H, W)

    @staticmethod
    def _video(frames: torch.Tensor, batch: int) -> torch.Tensor:
        bf, c, h, w = frames.shape
        return frames.reshape(batch, bf // batch, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, F, H, W)

    @torch.no_grad()
    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | frame), scaled: each float32 (B, latent_channels, F, h, w)."""
        height, width = video.shape[-2:]
        if height % self.downsample or width % self.downsample:
            raise LatteError(f"frame size {height}x{width} is not divisible by the VAE's factor {self.downsample}")
        frames = self._frames(video)
        means, stds = [], []
        for chunk in frames.split(self.chunk_size):
            dist = self.model.encode(chunk.to(self.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        s = self.scaling_factor
        return self._video(torch.cat(means) * s, video.shape[0]), self._video(torch.cat(stds) * s, video.shape[0])

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None,
               sample: bool = True) -> torch.Tensor:
        """Pixels in [-1, 1] (B, C, F, H, W) -> latents float32 (B, latent_channels, F, H/f, W/f).

        sample=True: mean + std * noise, the noise drawn in one call of shape (B, latent_channels, F, h, w)
        (on the generator's device), so chunking does not change the result; sample=False: the mean (mode).
        """
        mean, std = self.posterior(video)
        if not sample:
            return mean
        noise_device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=noise_device).to(mean.device)
        return mean + std * noise

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_channels, F, h, w) -> float32 pixels (B, C, F, h*f, w*f), about [-1, 1] (not clamped)."""
        frames = self._frames(latents) / self.scaling_factor
        out = [self.model.decode(chunk.to(self.dtype)).sample.float() for chunk in frames.split(self.chunk_size)]
        return self._video(torch.cat(out), latents.shape[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _from_folder(folder: Path):
    from diffusers import AutoencoderKL  # local: diffusers takes ~4 s to import; only VAE loading needs it

    if (folder / "config.json").is_file():
        return AutoencoderKL.from_pretrained(folder, low_cpu_mem_usage=False)
    if (folder / "vae" / "config.json").is_file():  # a whole diffusers pipeline folder
        return AutoencoderKL.from_pretrained(folder, subfolder="vae", low_cpu_mem_usage=False)
    raise LatteError(f"VAE folder {folder} has no config.json (expected AutoencoderKL.save_pretrained output "
                     f"or a pipeline folder with vae/)")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick check before a download: the hub client retries for ~30 s when there is no network."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(name: str):
    from diffusers import AutoencoderKL  # local: diffusers takes ~4 s to import; only VAE loading needs it

    for subfolder in (None, "vae"):  # the local Hugging Face cache first: a VAE repo or a pipeline's vae/
        try:
            with warnings.catch_warnings():  # the hub client's deprecation notices are not the user's concern
                warnings.simplefilter("ignore")
                return AutoencoderKL.from_pretrained(name, subfolder=subfolder, local_files_only=True,
                                                     low_cpu_mem_usage=False)
        except (OSError, ValueError):
            pass
    if not _hub_reachable():
        raise LatteError(f"VAE {name!r} is not a local folder nor in the Hugging Face cache, and the hub cannot "
                         f"be reached (offline?): download it once online (huggingface-cli download {name}) "
                         f"or pass a folder written by AutoencoderKL.save_pretrained")
    try:
        from huggingface_hub import list_repo_files  # local: ~0.3 s to import; only a hub download needs it

        files = set(list_repo_files(name))
        subfolder = None if "config.json" in files else "vae" if "vae/config.json" in files else False
        if subfolder is False:
            raise LatteError(f"Hugging Face repo {name!r} holds no AutoencoderKL (no config.json or vae/config.json)")
        return AutoencoderKL.from_pretrained(name, subfolder=subfolder, low_cpu_mem_usage=False)
    except (OSError, ValueError) as exc:
        raise LatteError(f"cannot load VAE {name!r} from the Hugging Face hub: {_first_line(exc)}") from None


def check_vae_spec(spec: str) -> Path | None:
    """The local folder a VAE spec names, None for a Hugging Face id or alias; a path that is not a
    folder is an error (checked before any work: config validation calls this too)."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists() or spec.startswith(("/", "./", "../", "~", ".\\")) or "\\" in spec:
        raise LatteError(f"VAE {spec!r}: not a folder (give an AutoencoderKL folder or a Hugging Face id)")
    return None


def load_vae(spec: str | None, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             chunk_size: int = 32) -> FrameVAE | None:
    """"none" -> None (pixel space); a local folder, a Hugging Face id, or an alias (ema, mse) -> FrameVAE."""
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return None
    spec = str(spec)
    folder = check_vae_spec(spec)
    if folder is not None:
        model = _from_folder(folder)
        spec = str(folder.resolve())  # found again from any working directory (checkpoints, caches)
    else:
        model = _from_hub(ALIASES.get(spec.lower(), spec))
    vae = FrameVAE(model, spec, chunk_size)
    if device is not None or dtype is not None:
        vae.to(device, dtype)
    return vae
