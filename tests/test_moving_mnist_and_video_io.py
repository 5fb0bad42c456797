import re

import av
import numpy as np
import pytest
import torch
from PIL import Image

from latte.data.moving_mnist import DIRECTIONS, MovingMNIST, direction_of, load_mnist
from latte.errors import LatteError
from latte.video_io import read_video, save_videos, to_uint8


@pytest.fixture(scope="module")
def clips():
    return MovingMNIST(num_frames=8, resolution=32, length=64, seed=3)


def test_clip_shape_range_and_determinism(clips):
    item = clips[5]
    assert item["video"].shape == (1, 8, 32, 32) and item["video"].dtype == torch.float32
    assert item["video"].min() == -1 and item["video"].max() <= 1
    assert torch.equal(item["video"], clips[5]["video"])
    other = MovingMNIST(num_frames=8, resolution=32, length=64, seed=4)[5]["video"]
    assert not torch.equal(item["video"], other)


def test_digits_move_and_stay_inside_the_canvas(clips):
    for i in range(20):
        item = clips[i]
        video = item["video"][0]
        assert not torch.equal(video[0], video[-1])
        corners = item["trajectory"] - clips.digit_size / 2
        assert corners.min() >= -0.5 and corners.max() <= 32 - clips.digit_size + 0.5


def test_label_is_the_drawn_digit(clips):
    digits, labels = load_mnist(clips.csv_path)
    item = clips[7]
    rng = np.random.default_rng([3, 0, 7])
    pick = clips.pool[rng.integers(0, len(clips.pool), size=1)[0]]
    assert item["label"] == labels[pick]
    # the first frame contains the resized source digit at the trajectory's corner
    y, x = np.rint(item["trajectory"][0].numpy() - clips.digit_size / 2).astype(int)
    patch = (item["video"][0, 0, y:y + clips.digit_size, x:x + clips.digit_size].numpy() + 1) / 2
    resized = np.asarray(Image.fromarray(digits[pick]).resize((clips.digit_size,) * 2, Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(patch, resized, atol=1e-6)


def test_train_and_test_pools_are_disjoint():
    train, test = MovingMNIST(split="train", length=4), MovingMNIST(split="test", length=4)
    assert set(train.pool).isdisjoint(test.pool)


def test_captions_match_the_measured_motion_of_the_rendered_video(clips):
    checked = agree = 0
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for i in range(60):
        item = clips[i]
        assert item["caption"].startswith(f"the digit {item['label']} ")
        assert item["direction"] in item["caption"]
        net = item["trajectory"][-1] - item["trajectory"][0]
        if net.norm() < 4:  # bounces cancelled the motion: too little to measure on pixels
            continue
        frames = (item["video"][0] + 1) / 2  # (F, H, W), brightness as mass
        mass = frames.sum(dim=(1, 2))
        cy, cx = (frames * ys).sum(dim=(1, 2)) / mass, (frames * xs).sum(dim=(1, 2)) / mass
        dy, dx = (cy[-1] - cy[0]).item(), (cx[-1] - cx[0]).item()
        measured = direction_of(dy, dx, dead_zone=max(1.0, 0.25 * float(np.hypot(dy, dx))))
        checked += 1
        agree += measured == item["direction"]
    assert checked >= 30 and agree >= 0.9 * checked, (agree, checked)


def test_clips_without_bounces_cross_in_a_straight_line_named_by_their_caption():
    clips = MovingMNIST(num_frames=8, resolution=32, speed=(1.0, 2.0), bounce=False, length=300)
    room = clips.resolution - clips.digit_size
    for i in range(len(clips)):
        item = clips[i]
        path = item["trajectory"].numpy() - clips.digit_size / 2  # top-left corners (F, 2)
        steps = np.diff(path, axis=0)
        assert np.allclose(steps, steps[0], atol=1e-4), i  # constant velocity, never reflected
        assert path.min() >= -1e-4 and path.max() <= room + 1e-4
        speed = float(np.hypot(*steps[0]))
        assert 1.0 - 1e-4 <= speed <= 2.0 + 1e-4
        # the caption's compass word is the velocity's own direction (within pi/16 of one of the 8)
        angle = np.arctan2(-steps[0][0], steps[0][1]) % (2 * np.pi)
        assert item["direction"] == DIRECTIONS[int(np.rint(angle / (np.pi / 4))) % 8], (i, item["direction"], angle)
    with pytest.raises(LatteError, match="without bounces need max speed <= 2.00"):
        MovingMNIST(num_frames=8, resolution=32, speed=(1.0, 3.0), bounce=False)
    with pytest.raises(LatteError, match="speed must be"):
        MovingMNIST(speed=(2.0, 1.0))


def test_speed_and_bounce_reach_the_dataset_from_the_training_config():
    from latte.train.build import build_training_data
    from latte.train.checks import load_config

    config = load_config("moving-mnist-text", None, ["data.mnist_bounce=false", "data.mnist_max_speed=2",
                                                     "data.mnist_min_speed=1"])
    dataset = build_training_data(config)[0]
    assert dataset.base.bounce is False and dataset.base.speed == (1.0, 2.0)
    with pytest.raises(LatteError, match="data.mnist_bounce applies to the moving-mnist dataset only"):
        load_config(None, None, ["data.dataset=ucf101", "data.mnist_bounce=false"])
    assert "num_digits" not in config.data.mnist_kwargs()  # unset: the fingerprints of earlier runs stay


def test_digit_count_and_size_reach_the_dataset_from_the_training_config():
    """The standard prediction setting's shape: two 28 px digits on 64x64 (benchmarks/prediction.py --shape standard)."""
    from latte.train.build import build_training_data
    from latte.train.checks import load_config

    config = load_config("moving-mnist", None, ["data.resolution=64", "data.mnist_digits=2", "data.mnist_digit_size=28"])
    dataset = build_training_data(config)[0]
    assert dataset.base.num_digits == 2 and dataset.base.digit_size == 28
    video = dataset.base[0]["video"][0]  # (F, 64, 64): two digits' worth of ink, most frames
    one = MovingMNIST(num_frames=16, resolution=64, digit_size=28)[0]["video"][0]
    assert (video > 0).float().mean() > (one > 0).float().mean()
    for overrides, needle in ((["data.mnist_digits=0"], "data.mnist_digits must be in [1, inf), got 0"),
                              (["data.mnist_digit_size=33"], "data.mnist_digit_size 33 must fit the 32 px canvas"),
                              (["data.dataset=ucf101", "data.mnist_digits=2"],
                               "data.mnist_digits applies to the moving-mnist dataset only")):
        with pytest.raises(LatteError, match=re.escape(needle)):
            load_config("moving-mnist", None, overrides)


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(LatteError, match="not found"):
        MovingMNIST(csv_path=str(tmp_path / "none.csv.gz"))
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    with pytest.raises(LatteError, match="785"):
        MovingMNIST(csv_path=str(bad))


def smooth_videos(n=2, frames=5, size=32):
    t = torch.linspace(-1, 1, size)
    base = (t[None, :] + t[:, None]) / 2  # a gradient: codecs keep it well
    video = torch.stack([base * (0.5 + 0.1 * f) for f in range(frames)])[None]  # (1, F, H, W)
    return torch.stack([video] * n)  # (N, 1, F, H, W)


def test_mp4_is_h264_yuv420p_with_every_frame_and_close_content(tmp_path):
    videos = smooth_videos(n=1)
    (path,) = save_videos(tmp_path / "clip.mp4", videos, fps=4)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    decoded = read_video(path)
    assert decoded.shape == (5, 64, 64, 3)  # 32 px frames enlarged 2x for players
    expected = to_uint8(videos[0]).repeat(2, axis=1).repeat(2, axis=2)
    assert np.abs(decoded.astype(float) - expected).mean() < 3.0
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_gif_png_npz_and_unknown_suffix(tmp_path):
    videos = smooth_videos(n=2)
    gifs = save_videos(tmp_path / "a.gif", videos, separate=True)
    assert [p.name for p in gifs] == ["a_000.gif", "a_001.gif"]
    assert Image.open(gifs[0]).n_frames == 5
    (grid,) = save_videos(tmp_path / "b.gif", videos)  # the file named: both videos side by side
    assert grid.name == "b.gif" and Image.open(grid).n_frames == 5
    assert Image.open(grid).size == (2 * (2 * 32 + 2), 2 * 32)
    (png,) = save_videos(tmp_path / "grid.png", videos)
    width, height = Image.open(png).size
    assert (width, height) == (2 * (5 * 34 - 2), 2 * (2 * 34 - 2))
    (npz,) = save_videos(tmp_path / "raw.npz", videos)
    np.testing.assert_array_equal(np.load(npz)["videos"], videos.numpy())
    with pytest.raises(LatteError, match="unknown video format"):
        save_videos(tmp_path / "x.avi", videos)


def test_grayscale_videos_become_rgb_for_the_detectors():
    from latte.metrics.videos import to_uint8 as metrics_uint8

    gray = torch.linspace(-1, 1, 2 * 4 * 3 * 3).reshape(2, 1, 4, 3, 3)
    rgb = metrics_uint8(gray)  # (N, F, H, W, 3)
    assert rgb.shape == (2, 4, 3, 3, 3)
    assert torch.equal(rgb[..., 0], rgb[..., 2]) and torch.equal(rgb, metrics_uint8(gray.expand(-1, 3, -1, -1, -1)))
    with pytest.raises(LatteError):
        metrics_uint8(torch.zeros(1, 2, 4, 3, 3))


def test_errors_raised_in_data_loader_workers_stay_one_line():
    from latte.cli import one_line

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise LatteError(f"clip {index} is corrupt")

    loader = torch.utils.data.DataLoader(Broken(), num_workers=1)
    with pytest.raises(LatteError) as err:
        next(iter(loader))
    assert "\n" in str(err.value)  # the worker's traceback rides in the message
    assert one_line(err.value) == "clip 0 is corrupt"
