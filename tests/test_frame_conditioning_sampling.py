"""Sampling with given frames (issue 30): `latte sample --image / --context / --end-image`, videos longer than
the model's window made window by window, `--image-cfg-scale`; the given frames of the videos are the inputs
(pixel runs exactly, VAE runs after the VAE round trip), bad inputs are one line and write nothing, a sample
folder records its inputs' sha256. Tiny runs trained one step with the tiny-test preset and frame masks."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_vae import save_tiny_vae

import latte.sampling
from latte.cli import main
from latte.config import Config, TrainSection
from latte.diffusion import GaussianDiffusion
from latte.diffusion.samplers import image_guided_output
from latte.errors import LatteError, LatteWarning
from latte.frame_conditioning import check_layout, check_trained, plan_windows, read_context, read_image
from latte.inference import VideoGenerator, load_run
from latte.models import create_model
from latte.sampling import SampleRequest
from latte.train.checks import load_config
from latte.train.run import train
from latte.vae import load_vae
from latte.video_io import MARK_COLOUR, save_videos

TINY = ["train.device=cpu", "data.num_workers=0", "train.max_steps=1", "train.checkpoint_every=1"]
RUNS = {"prefix": ["train.mask_first=0.3", "train.mask_prefix=0.3"],  # never a given last frame
        "ends": ["train.mask_first=0.3", "train.mask_prefix=0.3", "train.mask_ends=0.3"],
        "plain": [],
        "tubelet": ["model.patch_embed=tubelet", "train.mask_prefix=0.5"]}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Tiny runs (16x16 grey, 4-frame windows) and input files: a grey and an RGB image of other sizes, a
    broken image, a 6-frame npz written by `latte sample`, a 2-frame gif, a .npy named .npz and a damaged .npz."""
    ws = tmp_path_factory.mktemp("frames")
    for name, overrides in RUNS.items():
        train(load_config("tiny-test", None, [f"train.output_dir={ws / name}", *TINY, *overrides]),
              write_samples_at_end=False, log=lambda *_: None)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(ws / "first.png")
    Image.fromarray(rng.integers(0, 256, (32, 24, 3), dtype=np.uint8), "RGB").save(ws / "last.png")
    (ws / "broken.png").write_bytes(b"\x89PNG not really" * 10)
    assert main(["sample", "--checkpoint", str(ws / "ends"), "--output", str(ws / "six.npz"), "--num-videos", "1",
                 "--num-frames", "6", "--steps", "2", "--device", "cpu"]) == 0
    save_videos(ws / "two.gif", torch.rand(1, 1, 2, 16, 16) * 2 - 1)
    with open(ws / "array.npz", "wb") as file:  # np.load reads it as a bare array, not an archive
        np.save(file, np.load(ws / "six.npz")["videos"])
    (ws / "damaged.npz").write_bytes((ws / "six.npz").read_bytes()[:300])  # a zip cut short
    return ws


def randomize(model, seed=0, std=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std, generator=torch.Generator().manual_seed(seed))
    return model


def sample(ws: Path, run: str, output: Path, *flags: str) -> int:
    return main(["sample", "--checkpoint", str(ws / run), "--output", str(output), "--num-videos", "2", "--steps", "2",
                 "--device", "cpu", *flags])


def test_given_frames_of_a_pixel_run_are_the_inputs_exactly(ws, tmp_path, capsys):
    out = tmp_path / "ends.npz"
    assert sample(ws, "ends", out, "--image", str(ws / "first.png"), "--end-image", str(ws / "last.png")) == 0
    err = capsys.readouterr().err  # a warning, not an error: one line, from the library's LatteWarning
    assert f"latte sample: warning: {ws / 'last.png'} is 24x32, resized to the model's 16x16\n" in err, err
    with pytest.warns(LatteWarning, match="is 24x32, resized to the model's 16x16"):
        read_image(ws / "last.png", 1, (16, 16))
    videos = torch.from_numpy(np.load(out)["videos"])  # (2, 1, 4, 16, 16)
    first, last = read_image(ws / "first.png", 1, (16, 16)), read_image(ws / "last.png", 1, (16, 16))
    png = torch.from_numpy(np.array(Image.open(ws / "first.png"))).float() / 127.5 - 1
    torch.testing.assert_close(first[0, 0], png, rtol=0, atol=1e-6)  # grey image read as it is
    for video in videos:
        assert torch.equal(video[:, :1], first) and torch.equal(video[:, 3:], last)
        assert not torch.equal(video[:, 1], video[:, 0])  # the frames between are generated
    # the filmstrip marks the given frames (0 and the last) with a bar in the gap under each row
    strip = tmp_path / "ends.png"
    assert sample(ws, "ends", strip, "--image", str(ws / "first.png"), "--end-image", str(ws / "last.png")) == 0
    grid = np.array(Image.open(strip))  # 2 rows x 4 frames of 16 px, 2 px gaps, scaled by `scale`
    scale = grid.shape[1] // (4 * 18 - 2)
    assert grid.shape[0] == scale * 2 * 18
    bar = grid[scale * 17, ::scale * 18][:4]  # a pixel of the gap under row 0, in each column
    assert [tuple(p) for p in bar] == [MARK_COLOUR, (40, 40, 40), (40, 40, 40), MARK_COLOUR]
    # continuation: the last 2 frames of a 6-frame npz written by `latte sample` are the first 2
    out = tmp_path / "more.npz"
    assert sample(ws, "prefix", out, "--context", str(ws / "six.npz"), "--context-frames", "2") == 0
    context = torch.from_numpy(np.load(ws / "six.npz")["videos"])[0, :, 4:]  # (1, 2, 16, 16)
    assert torch.equal(read_context(ws / "six.npz", 2, 1, (16, 16)), context)
    for video in torch.from_numpy(np.load(out)["videos"]):
        assert torch.equal(video[:, :2], context)


def test_image_guidance_keeps_the_given_frames_and_follows_its_formula(ws):
    generator = load_run(ws / "prefix")
    randomize(generator.model)  # a model whose output depends on its input (one step leaves it near zero)
    image = read_image(ws / "first.png", 1, (16, 16))
    videos = {}
    for scale in (1.0, 3.0):
        request = generator.request(num_videos=2, steps=2, given=image, given_at=(0,), image_cfg_scale=scale)
        generator.check(request)
        videos[scale], _ = generator.generate(request, progress=False)
        assert torch.equal(videos[scale][:, :, :1], image.expand(2, -1, -1, -1, -1))
    assert not torch.equal(videos[1.0][:, :, 1:], videos[3.0][:, :, 1:])
    c_f, n_f, n_0 = (torch.full((1, 2, 3, 1, 1), v) for v in (5.0, 3.0, 2.0))  # 1 prediction + 1 variance channel
    mask = torch.tensor([[True, False, False]])
    out = image_guided_output((c_f, n_f, n_0), 4.0, 1.5, 1, mask)
    assert out[0, 0, 1:].flatten().tolist() == [2 + 1.5 * 1 + 4 * 2] * 2 and out[0, 1, 1:].unique().item() == 5.0
    assert out[0, :, 0].flatten().tolist() == [2.0, 2.0]  # a given frame follows the frameless branch
    out = image_guided_output((c_f, n_0), 1.0, 1.5, 1, mask)
    assert out[0, 0, 1:].flatten().tolist() == [2 + 1.5 * 3] * 2


def test_long_videos_are_made_window_by_window_each_given_the_last_frames_before(ws, tmp_path, monkeypatch):
    assert plan_windows(7, 4, 2) == ((0, 4), (2, 4), (4, 3)) and plan_windows(4, 4, 2) == ((0, 4),)
    assert plan_windows(10, 4, 1) == ((0, 4), (3, 4), (6, 4))
    calls = []
    inner = latte.sampling.diffusion_sample

    def recording(*args, given=None, given_mask=None, **kwargs):
        x0 = inner(*args, given=given, given_mask=given_mask, **kwargs)
        calls.append((given, given_mask, x0))
        return x0

    monkeypatch.setattr(latte.sampling, "diffusion_sample", recording)
    generator = load_run(ws / "prefix")
    image = read_image(ws / "first.png", 1, (16, 16))
    request = generator.request(num_videos=2, steps=2, num_frames=7, given=image, given_at=(0,))
    assert request.overlap == 2  # half the 4-frame window, as the run trained with masks
    generator.check(request)
    videos, _ = generator.generate(request, progress=False)
    assert videos.shape == (2, 1, 7, 16, 16) and len(calls) == 3
    (g0, m0, x0), (g1, m1, x1), (g2, m2, x2) = calls
    assert m0.tolist() == [[True, False, False, False]] * 2 and torch.equal(x0[:, :, :1], g0[:, :, :1])
    assert m1.tolist() == [[True, True, False, False]] * 2 and torch.equal(x1[:, :, :2], x0[:, :, 2:])
    assert m2.tolist() == [[True, True, False]] * 2 and torch.equal(x2[:, :, :2], x1[:, :, 2:])
    assert torch.equal(videos, torch.cat([x0, x1[:, :, 2:], x2[:, :, 2:]], dim=2).clamp(-1, 1))
    # no frames given: the first window is the plain sample; the CLI writes all N frames
    calls.clear()
    request = generator.request(num_videos=2, steps=2, num_frames=6, overlap=1)  # windows (0, 4), (3, 3)
    videos, _ = generator.generate(request, progress=False)
    assert [mask is None for _, mask, _ in calls] == [True, False] and videos.shape[2] == 6
    assert calls[1][1].tolist() == [[True, False, False]] * 2 and torch.equal(calls[1][2][:, :, :1], calls[0][2][:, :, 3:])
    plain, _ = generator.generate(generator.request(num_videos=2, steps=2), progress=False)
    assert torch.equal(videos[:, :, :4], plain)
    out = tmp_path / "long.npz"
    assert sample(ws, "prefix", out, "--num-frames", "9", "--overlap", "3") == 0
    assert np.load(out)["videos"].shape == (2, 1, 9, 16, 16)


def test_a_vae_run_keeps_its_given_frames_after_the_vae_round_trip(tmp_path):
    vae = load_vae(save_tiny_vae(tmp_path / "vae"))  # 2x down: 16x16 pixels, 8x8 latents
    model = create_model("Latte-T/4", hidden_size=32, depth=2, num_heads=2, in_channels=4, num_frames=4, input_size=8)
    randomize(model)
    config = Config()
    config.train.mask_first = 0.5
    generator = VideoGenerator(model=model.eval(), diffusion=GaussianDiffusion(), config=config, vae=vae)
    image = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    request = generator.request(num_videos=2, sampler="ddim", steps=2, given=image, given_at=(0,))
    generator.check(request)
    videos, _ = generator.generate(request, progress=False)
    round_trip = vae.decode(vae.encode(image[None], sample=False)).clamp(-1, 1)  # (1, 3, 1, 16, 16)
    for video in videos:
        torch.testing.assert_close(video[:, :1], round_trip[0], rtol=0, atol=1e-5)
    assert (videos[:, :, 1:] - round_trip).abs().amax() > 0.01


def test_each_bad_input_is_one_line_and_writes_nothing(ws, tmp_path, capsys):
    image, out = str(ws / "first.png"), tmp_path / "out"
    rows = [
        ("prefix", ["--image", str(ws / "broken.png")], "cannot read image"),
        ("prefix", ["--image", str(ws / "missing.png")], "cannot read image"),
        ("prefix", ["--context", str(ws / "missing.mp4")], "not found"),
        ("prefix", ["--context", str(ws / "two.gif"), "--context-frames", "3"], "holds 2 frames, fewer than"),
        ("prefix", ["--context", str(ws / "six.npz"), "--context-frames", "4"], "all given"),
        ("prefix", ["--context", str(ws / "array.npz")], "array.npz is not an .npz archive"),
        ("prefix", ["--context", str(ws / "damaged.npz")], "cannot read"),
        ("prefix", ["--end-image", image], "never learned a given last frame"),
        ("prefix", ["--image", image, "--end-image", image], "never learned given first and last frames"),
        ("ends", ["--context", str(ws / "six.npz"), "--context-frames", "2", "--end-image", image],
         "never learned given frames in other places (frames 0, 1, 3 given in frames 0..3): it trained "
         "train.mask_first, mask_prefix, mask_ends, this needs one of mask_random"),
        ("tubelet", ["--image", image], "split a tubelet of 2 frames"),
        ("tubelet", ["--num-frames", "8", "--overlap", "1"], "--overlap 1 splits a tubelet"),
        ("tubelet", ["--num-frames", "7", "--overlap", "2"], "are not whole tubelets of 2 frames"),
        ("plain", ["--image", image], "trained without frame masks"),
        ("plain", ["--num-frames", "6", "--overlap", "2"], "trained without frame masks"),
        ("prefix", ["--overlap", "4", "--num-frames", "6"], "--overlap must be in [1, 3]"),
        ("prefix", ["--image-cfg-scale", "2"], "--image-cfg-scale applies to given frames"),
        ("prefix", ["--image", image, "--context", str(ws / "six.npz")], "use one"),
        ("prefix", ["--context-frames", "2"], "--context-frames applies with --context"),
    ]
    for run, flags, needle in rows:
        for output in (out, out.with_suffix(".mp4")):
            before = sorted(p.name for p in tmp_path.iterdir())
            capsys.readouterr()
            assert sample(ws, run, output, *flags) == 2, (run, flags)
            lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert len(lines) == 1 and needle in lines[0], (flags, lines)
            assert sorted(p.name for p in tmp_path.iterdir()) == before, (flags, "wrote something")
    assert sample(ws, "plain", tmp_path / "forced.npz", "--image", image, "--force") == 0
    videos = torch.from_numpy(np.load(tmp_path / "forced.npz")["videos"])
    assert torch.equal(videos[:, :, :1], read_image(image, 1, (16, 16)).expand(2, -1, -1, -1, -1))
    # a pattern the run's masks never showed, forced: sampled, the given frames kept
    assert sample(ws, "prefix", tmp_path / "forced-end.npz", "--image", image, "--end-image", image, "--force") == 0
    videos = torch.from_numpy(np.load(tmp_path / "forced-end.npz")["videos"])
    assert torch.equal(videos[:, :, 3:], read_image(image, 1, (16, 16)).expand(2, -1, -1, -1, -1))


def test_an_image_over_pils_pixel_limit_is_one_line(ws, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16x16 = 256 pixels: over twice the limit, a "bomb"
    assert sample(ws, "prefix", tmp_path / "out.npz", "--image", str(ws / "first.png")) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot read image" in lines[0] and "decompression bomb" in lines[0], lines
    assert not (tmp_path / "out.npz").exists()


def test_a_multi_video_npz_continues_its_first_video_with_a_warning(tmp_path):
    videos = torch.rand(3, 1, 6, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    save_videos(tmp_path / "three.npz", videos)
    with pytest.warns(LatteWarning, match="holds 3 videos: continuing the first"):
        context = read_context(tmp_path / "three.npz", 2, 1, (16, 16))
    assert torch.equal(context, videos[0, :, 4:])


def layout(at=(), frames=4, overlap=None, unit=1):
    """check_layout of a request giving frames at `at` to a model of 4-frame windows and `unit`-frame tubelets."""
    given = torch.zeros(1, len(at), 2, 2) if at else None
    return check_layout(SampleRequest(num_frames=frames, given=given, given_at=tuple(at), overlap=overlap), 4, unit)


@pytest.mark.parametrize("trained, asked, refused", [
    # a first frame: first, prefix, ends or random
    ({"first"}, {"at": (0,)}, None), ({"ends"}, {"at": (0,)}, None), ({"random"}, {"at": (0,)}, None),
    ({"last"}, {"at": (0,)}, "a given first frame (frame 0 given in frames 0..3): it trained train.mask_last, this "
                             "needs one of mask_first, mask_prefix, mask_ends, mask_random"),
    ({"first", "last"}, {"at": (0, 1), "unit": 2}, None),  # one tubelet of two frames is the first
    # more first frames (--context K > 1, and each later window of a long video): prefix or random
    ({"first", "ends"}, {"at": (0, 1)}, "given first frames (frames 0, 1 given in frames 0..3)"),
    ({"prefix"}, {"at": (0, 1)}, None), ({"random"}, {"at": (0, 1, 2)}, None),
    ({"first"}, {"at": (0,), "frames": 7, "overlap": 2}, "given first frames (frames 2, 3 given in frames 2..5)"),
    ({"first", "prefix"}, {"at": (0,), "frames": 7, "overlap": 2}, None),
    ({"first"}, {"frames": 6, "overlap": 1}, None),  # windows (0, 4), (3, 3): the second given its first frame
    ({"last"}, {"frames": 6, "overlap": 1}, "a given first frame (frame 3 given in frames 3..5)"),
    # a last frame: last, ends or random; both ends: ends or random
    ({"first", "prefix"}, {"at": (-1,)}, "a given last frame (frame 3 given in frames 0..3): it trained train."
                                         "mask_first, mask_prefix, this needs one of mask_last, mask_ends, mask_random"),
    ({"last"}, {"at": (-1,)}, None), ({"ends"}, {"at": (-1,)}, None),
    ({"first", "last"}, {"at": (0, -1)}, "given first and last frames"), ({"ends"}, {"at": (0, -1)}, None),
    # any other pattern: random only
    ({"first", "prefix", "last", "ends"}, {"at": (1,)}, "given frames in other places (frame 1 given in frames 0..3)"
                                                        ": it trained train.mask_first, mask_prefix, mask_last, "
                                                        "mask_ends, this needs one of mask_random"),
    ({"random"}, {"at": (1,)}, None), ({"random"}, {"at": (0, 1), "frames": 6, "overlap": 2}, None),
])
def test_each_window_needs_a_mask_kind_that_showed_its_given_frames(trained, asked, refused):
    train = TrainSection(**{f"mask_{kind}": 0.2 for kind in trained})
    assert train.trained_kinds() == trained
    if refused is None:
        check_trained(train, layout(**asked), force=False)
        return
    with pytest.raises(LatteError) as error:
        check_trained(train, layout(**asked), force=False)
    assert f"this checkpoint never learned {refused}" in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).endswith("pass --force to try anyway")
    check_trained(train, layout(**asked), force=True)  # --force: sampled anyway


def test_the_same_frame_given_twice_is_refused():
    for at in ((3, -1), (0, -4), (1, 1)):
        with pytest.raises(LatteError, match=r"given frame position -?\d is frame \d, given twice: give each frame once"):
            layout(at)
    assert layout((0, -1)).given.tolist() == [True, False, False, True]


def test_a_window_of_one_tubelet_makes_longer_videos_in_one_pass(tmp_path):
    model = create_model("Latte-T/4", hidden_size=32, depth=2, num_heads=2, in_channels=1, num_frames=2, input_size=16,
                         patch_embed="tubelet")  # a window of one two-frame tubelet: no overlap fits in it
    config = Config()
    config.train.mask_first = 0.5
    generator = VideoGenerator(model=randomize(model).eval(), diffusion=GaussianDiffusion(), config=config)
    request = generator.request(num_videos=1, sampler="ddim", steps=1, num_frames=4)
    assert request.overlap is None  # not a default overlap that check would then refuse as a flag never given
    generator.check(request)
    videos, _ = generator.generate(request, progress=False)
    assert videos.shape == (1, 1, 4, 16, 16)
    with pytest.raises(LatteError, match=r"--overlap must be in \[1, 1\]"):  # one the user asks for is still refused
        generator.check(generator.request(num_videos=1, num_frames=4, overlap=2))


def test_a_sample_folder_records_each_inputs_sha256_and_refuses_other_inputs(ws, tmp_path, capsys):
    folder = tmp_path / "folder"
    assert sample(ws, "ends", folder, "--image", str(ws / "first.png"), "--end-image", str(ws / "last.png")) == 0
    lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and sorted(p.name for p in folder.glob("*.mp4")) == ["000000.mp4", "000001.mp4"]
    for line in lines:
        assert [(g["flag"], g["sha256"], g["frames"]) for g in line["given"]] == [
            ("--image", hashlib.sha256((ws / "first.png").read_bytes()).hexdigest(), [0]),
            ("--end-image", hashlib.sha256((ws / "last.png").read_bytes()).hexdigest(), [-1])]
    capsys.readouterr()
    assert sample(ws, "ends", folder, "--image", str(ws / "last.png"), "--end-image", str(ws / "last.png")) == 2
    assert "holds videos of other settings (given" in capsys.readouterr().err
