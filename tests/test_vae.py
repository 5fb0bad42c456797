"""FrameVAE / load_vae with a tiny random AutoencoderKL written by save_pretrained and loaded back."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from test_data_video import one_thread  # noqa: F401  (autouse fixture)

from latte.errors import LatteError
from latte.vae import FrameVAE, load_vae


def tiny_autoencoder(blocks: int = 2, scaling_factor: float | None = None) -> AutoencoderKL:
    torch.manual_seed(0)
    extra = {} if scaling_factor is None else {"scaling_factor": scaling_factor}
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=(8, 16, 16)[:blocks],
                         layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32, **extra)


def save_tiny_vae(folder, blocks: int = 2, scaling_factor: float | None = None) -> str:
    tiny_autoencoder(blocks, scaling_factor).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_tiny_vae(tmp_path_factory.mktemp("vae"))


def test_load_from_folder_frozen_with_spec(vae_dir, monkeypatch):
    vae = load_vae(vae_dir)
    assert isinstance(vae, FrameVAE) and vae.spec == str(Path(vae_dir).resolve())
    monkeypatch.chdir(Path(vae_dir).parent)  # a relative folder is stored absolute: checkpoints work from anywhere
    assert load_vae(Path(vae_dir).name).spec == vae.spec
    assert vae.scaling_factor == pytest.approx(0.18215) and vae.latent_channels == 4 and vae.downsample == 2
    assert not vae.model.training and not any(p.requires_grad for p in vae.model.parameters())
    assert load_vae("none") is None and load_vae(None) is None


def test_factor_and_scaling_read_from_config(tmp_path):
    vae = load_vae(save_tiny_vae(tmp_path / "three", blocks=3, scaling_factor=0.5))
    assert vae.downsample == 4 and vae.scaling_factor == 0.5
    assert vae.encode(torch.zeros(1, 3, 2, 16, 16), sample=False).shape == (1, 4, 2, 4, 4)
    pipeline = tmp_path / "pipeline"  # a diffusers pipeline folder: the VAE lives in vae/
    save_tiny_vae(pipeline / "vae")
    assert load_vae(str(pipeline)).downsample == 2


def test_encode_matches_raw_model_frame_by_frame(vae_dir):
    vae = load_vae(vae_dir, chunk_size=3)
    raw = AutoencoderKL.from_pretrained(vae_dir).eval()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1  # (B, C, F, H, W)
    latents = vae.encode(video, sample=False)
    assert latents.shape == (2, 4, 5, 8, 8)
    with torch.no_grad():
        frame = video[1, :, 3][None]  # (1, C, H, W): clip 1, frame 3
        expected = raw.encode(frame).latent_dist.mode() * 0.18215
        torch.testing.assert_close(latents[1, :, 3], expected[0], atol=1e-5, rtol=1e-5)
        decoded = raw.decode(latents[1, :, 3][None] / 0.18215).sample
    pixels = vae.decode(latents)
    assert pixels.shape == video.shape
    torch.testing.assert_close(pixels[1, :, 3], decoded[0], atol=1e-5, rtol=1e-5)


def test_sampling_is_posterior_and_chunking_does_not_change_it(vae_dir):
    video = torch.rand(1, 3, 7, 16, 16) * 2 - 1
    one = load_vae(vae_dir, chunk_size=1)
    many = load_vae(vae_dir, chunk_size=100)
    a = one.encode(video, generator=torch.Generator().manual_seed(3))
    b = many.encode(video, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one.encode(video, sample=False), many.encode(video, sample=False), atol=1e-5, rtol=1e-5)
    mean, std = one.posterior(video)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, mean + std * noise)
    assert not a.equal(one.encode(video, generator=torch.Generator().manual_seed(4)))
    raw = AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        dist = raw.encode(video[0].permute(1, 0, 2, 3)).latent_dist  # (F, C, H, W)
    torch.testing.assert_close(std[0].permute(1, 0, 2, 3), dist.std * 0.18215, atol=1e-6, rtol=1e-5)


def test_user_errors(tmp_path, vae_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LatteError, match="not a folder"):
        load_vae(str(tmp_path / "missing"))
    with pytest.raises(LatteError, match="no config.json"):
        load_vae(str(tmp_path))
    with pytest.raises(LatteError, match="latte-tests/no-such-vae.*offline"):
        load_vae("latte-tests/no-such-vae")
    vae = load_vae(vae_dir)
    with pytest.raises(LatteError, match="divisible"):
        vae.encode(torch.zeros(1, 3, 1, 15, 16))
    with pytest.raises(LatteError, match=r"\(B, C, F, H, W\)"):
        vae.encode(torch.zeros(3, 1, 16, 16))
