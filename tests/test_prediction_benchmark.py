"""benchmarks/prediction.py (issue 30's measurement), run on a tiny run trained 2 steps with frame masks: the
mechanics only (SSIM's known values, the copy baseline, given frames kept, every column, the window joins);
whether predictions beat copying is the benchmark's to report, not a test's."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latte.errors import LatteError
from latte.frame_conditioning import plan_windows
from latte.inference import load_run
from latte.metrics.mnist import centroid_jitter, classifier, motion
from latte.train.checks import load_config
from latte.train.run import train
from latte.video_io import MARK_COLOUR

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("prediction", ROOT / "benchmarks" / "prediction.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
TINY = ["train.device=cpu", "data.num_workers=0", "train.max_steps=2", "train.checkpoint_every=2",
        "train.mask_prefix=0.5", "train.mask_prefix_frames=2"]  # 4-frame 16x16 windows, 2 frames given
FAST = {"steps": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prediction") / "run"
    train(load_config("tiny-test", None, [f"train.output_dir={folder}", *TINY]), write_samples_at_end=False,
          log=lambda *_: None)
    return folder


def test_ssim_is_one_for_identical_images_and_the_luminance_term_for_flat_ones():
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))  # (3, H, W) on [0, 1]
    torch.testing.assert_close(bench.ssim(x, x), torch.ones(3))
    # flat images: no variance or covariance, so only (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) is left
    a, b = torch.full((16, 16), 0.2), torch.full((16, 16), 0.6)
    assert bench.ssim(a, b).item() == pytest.approx((2 * 0.2 * 0.6 + 1e-4) / (0.2 ** 2 + 0.6 ** 2 + 1e-4), rel=1e-6)
    noise = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1))
    slightly, heavily = (x + 0.05 * noise).clamp(0, 1), (x + 0.3 * noise).clamp(0, 1)
    torch.testing.assert_close(bench.ssim(x, slightly), bench.ssim(slightly, x))  # symmetric
    assert (bench.ssim(x, heavily) < bench.ssim(x, slightly)).all() and (bench.ssim(x, slightly) < 1).all()
    assert (bench.ssim(x, 1 - x) < 0).all()  # the negative: structure correlation -1


def test_ssim_of_one_window_position_is_the_gaussian_weighted_statistics():
    # 11x11 images have one valid window position: the weighted means, variances and covariance by hand
    rng = np.random.default_rng(2)
    a, b = rng.random((11, 11)), rng.random((11, 11))
    g = np.exp(-(np.arange(11) - 5.0) ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mu_a, mu_b = (w * a).sum(), (w * b).sum()
    var_a, var_b, cov = (w * a * a).sum() - mu_a ** 2, (w * b * b).sum() - mu_b ** 2, (w * a * b).sum() - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    want = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    assert bench.ssim(torch.from_numpy(a), torch.from_numpy(b)).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(LatteError, match="at least 11x11"):
        bench.ssim(torch.rand(8, 8), torch.rand(8, 8))


def test_copying_a_still_clip_is_exact():
    frame = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1  # (C, 1, H, W)
    clip = frame.expand(-1, 4, -1, -1)  # (C, F, H, W): every frame equal
    video = bench.copy_last(clip, 2)  # (1, C, F, H, W)
    assert video.shape == (1, 1, 4, 16, 16)
    got = bench.readings(video, clip, 2, label=3, net=None)
    assert torch.equal(got["mse"], torch.zeros(1, 2)) and torch.equal(got["mse_frame"], torch.zeros(1, 2))
    torch.testing.assert_close(got["ssim"], torch.ones(1, 2))
    torch.testing.assert_close(got["velocity_error"], torch.zeros(1, 2))
    assert got["digit_kept"] is None
    rows = bench.summarize("copy last", [got], 2, 4)
    assert [r["frames"] for r in rows] == ["2", "3", "2-3"] and all(r["mse_mean"] == 0 for r in rows)
    moving = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    assert (bench.readings(bench.copy_last(moving, 2), moving, 2, None, None)["mse"] > 0).all()


def test_predictions_keep_the_held_out_frames_and_every_method_fills_every_column(run):
    generator = load_run(run)
    clips = bench.heldout_clips(generator, 2, 4)
    assert [tuple(c["video"].shape) for c in clips] == [(1, 4, 16, 16)] * 2
    clip = clips[0]["video"]
    videos = bench.predict(generator, clips[0], 2, 2, 0, FAST)  # (S, C, F, H, W)
    assert videos.shape == (2, 1, 4, 16, 16)
    assert torch.equal(videos[:, :, :2], clip[None, :, :2].expand(2, -1, -1, -1, -1))  # a pixel run: exactly
    assert not torch.equal(videos[0, :, 2:], videos[1, :, 2:])  # the samples have their own noise
    # a clip longer than the window, given as many frames as the window holds: shown the last half window
    long = bench.heldout_clips(generator, 1, 8)[0]
    videos = bench.predict(generator, long, 4, 2, 0, FAST)
    assert videos.shape == (2, 1, 8, 16, 16) and torch.equal(videos[:, :, :4], long["video"][None, :, :4].expand(2, -1, -1, -1, -1))
    net = classifier().eval()  # untrained: the mechanics only
    rows = bench.measure(generator, clips, 2, 2, net, FAST, progress=False)
    assert [(r["method"], r["frames"]) for r in rows] == [(m, f) for m in bench.METHODS for f in ("2", "3", "2-3")]
    for row in rows:
        assert tuple(row) == bench.COLUMNS
        assert all(math.isfinite(row[k]) for k in bench.COLUMNS[2:]) and 0 <= row["digit_kept"] <= 1
    copy = [r for r in rows if r["method"] == "copy last"]
    assert all(r["mse_best"] == r["mse_mean"] and r["ssim_best"] == r["ssim_mean"] for r in copy)  # one "sample"
    model = [r for r in rows if r["method"] == "model"]
    assert all(r["mse_best"] <= r["mse_mean"] + 1e-7 and r["ssim_best"] >= r["ssim_mean"] - 1e-7 for r in model)
    lines = bench.table(rows).splitlines()
    assert len(lines) == 2 + len(rows) and "MSE best" in lines[0] and "vel err px" in lines[0]
    goal = bench.goal(rows, 2, 4)
    assert goal["frames"] == "2-3" and goal["ratio_mean"] == pytest.approx(model[2]["mse_mean"] / copy[2]["mse_mean"])
    with pytest.raises(LatteError, match=r"--given must be in \[1, 3\]"):
        bench.check_prediction(generator, clips[0], 4, 2, FAST)
    with pytest.raises(LatteError, match="64x64"):
        bench.heldout_clips(generator, 1, 20, standard=True)


def test_long_videos_are_read_at_the_joins_plan_windows_makes(run):
    assert bench.window_joins(plan_windows(10, 4, 2)) == [4, 6, 8]
    # second differences centred at frames 1..8; those at 3..8 touch a join
    assert bench.jitter_places(10, [4, 6, 8]).tolist() == [False, False] + [True] * 6
    assert bench.jitter_places(12, [6]).tolist() == [False] * 4 + [True, True] + [False] * 4
    generator = load_run(run)
    request = bench.long_request(generator, 10, 1, FAST)
    assert request.overlap == 2  # half the 4-frame window
    videos, labels, windows = bench.long_videos(generator, request)
    assert videos.shape == (10, 1, 10, 16, 16) and labels.tolist() == list(range(10))
    assert windows == plan_windows(10, 4, 2)
    result = bench.long_readings(videos, labels, windows, classifier().eval())
    assert 0 <= result["digit_read"] <= 1 and result["windows"] == [[0, 4], [2, 4], [4, 4], [6, 4]]
    quarters = result["digit_read_by_quarter"]  # 10 frames in spans of 3, 3, 2, 2
    assert len(quarters) == 4 and result["digit_read"] == pytest.approx(sum(q * n for q, n in zip(quarters, (3, 3, 2, 2))) / 10)
    for key in ("jitter_boundary_median", "jitter_inside_median", "jitter_ratio"):
        assert math.isfinite(result[key]) and result[key] >= 0


def test_the_script_prints_its_table_and_writes_json(run, tmp_path, capsys):
    out = tmp_path / "rows.json"
    common = ["--checkpoint", str(run), "--steps", "2", "--device", "cpu", "--classifier-steps", "2",
              "--cache-dir", str(tmp_path / "cache")]
    strip = tmp_path / "prediction.png"
    assert bench.main([*common, "--clips", "1", "--samples", "2", "--json", str(out), "--filmstrip", str(strip)]) == 0
    printed = capsys.readouterr().out
    assert "1 held-out clips of 4 frames, 2 given, 2 samples each" in printed and f"{strip}\n" in printed
    grid = np.array(Image.open(strip))  # the true clip above the model's sample: 2 rows of 4 frames
    scale = grid.shape[1] // (4 * (16 + 2) - 2)
    bars = grid[scale * 17, ::scale * 18][:4]  # the gap under the first row, in each column
    assert grid.shape[0] == 2 * 18 * scale and [tuple(p) for p in bars] == [MARK_COLOUR] * 2 + [(40, 40, 40)] * 2
    assert "goal: MSE over frames 2-3 / copying the last given frame" in printed
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 9 and saved["settings"]["given"] == 2 and saved["goal"]["frames"] == "2-3"
    assert bench.main([*common, "--long", "6", "--per-class", "1", "--json", str(out)]) == 0
    assert "frames read as the asked digit" in capsys.readouterr().out
    assert json.loads(out.read_text())["long"]["windows"] == [[0, 4], [2, 4]]


def test_zero_given_frames_or_frames_is_an_error_not_the_default(capsys):
    for flag in ("--given", "--frames", "--long"):
        with pytest.raises(SystemExit) as exit_code:
            bench.parse_args(["--checkpoint", "runs/x", flag, "0"])
        assert exit_code.value.code == 2 and f"{flag} must be >= 1" in capsys.readouterr().err
    assert bench.parse_args(["--checkpoint", "runs/x", "--given", "1"]).given == 1


def test_centroid_jitter_is_zero_at_constant_velocity_and_the_second_difference_elsewhere():
    videos = -torch.ones(1, 1, 5, 16, 16)  # (N, 1, F, H, W): one bright pixel at x = 2, 4, 6, 8, then 12
    for f, x in enumerate((2, 4, 6, 8, 12)):
        videos[0, 0, f, 5, x] = 1.0
    torch.testing.assert_close(centroid_jitter(videos), torch.tensor([[0.0, 0.0, 2.0]]))
    assert motion(videos)[1] == pytest.approx(0.0)  # the median of the same jitter
