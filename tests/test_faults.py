"""Faults a run must survive: kills during saves, a second writer, a full disk, files that break while
training, resumes on real video files, and bad input (one line, exit 2, never a traceback)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from latte.checkpoint_files import list_checkpoints, load_checkpoint
from latte.cli import main
from latte.files import LOCK_NAME, FolderLock
from latte.train.checks import load_config
from latte.train.run import train
from latte.video_io import write_mp4

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["train.device=cpu", "data.num_workers=0"]


def tiny_config(out: Path, *overrides: str):
    return load_config("tiny-test", None, [f"train.output_dir={out}", *TINY, *overrides])


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"]
    for key in ("model", "ema"):
        for name, tensor in sa[key].items():
            assert torch.equal(tensor, sb[key][name]), f"{key}.{name} differs"
    for ta, tb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


def error_lines(err: str, command: str) -> list[str]:
    """The error lines of stderr (progress bars and warnings also go there)."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith(f"latte {command}: error:")]


# -- SIGKILL during checkpoint writes ---------------------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, signal, sys, torch
    real, calls = torch.save, [0]
    def save(obj, f, *args, **kwargs):  # the n-th checkpoint write is cut off half way by SIGKILL
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_AT_SAVE"]):
            f.write(b"PK-half-a-checkpoint" * 1000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(obj, f, *args, **kwargs)
    torch.save = save
    from latte.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def run_killed(out: Path, kill_at: int) -> subprocess.CompletedProcess:
    argv = ["train", "--preset", "tiny-test", "--output-dir", str(out), "--max-steps", "4", "--checkpoint-every", "1",
            "--no-samples", *[a for s in TINY for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "KILL_AT_SAVE": str(kill_at)}
    return subprocess.run([sys.executable, "-c", KILLER, *argv], env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_during_saves_then_resume_equals_an_uninterrupted_run(tmp_path):
    old_mask = os.umask(0o022)
    try:
        straight = tmp_path / "straight"
        train(tiny_config(straight, "train.max_steps=4", "train.checkpoint_every=1"), write_samples_at_end=False)
        out = tmp_path / "killed"
        for kill_at, last_good in ((2, 1), (2, 2)):  # killed writing step 2, then (resumed at 1) writing step 3
            proc = run_killed(out, kill_at)
            assert proc.returncode == -signal.SIGKILL, proc.stderr
            assert list_checkpoints(out)[-1].name == f"step_{last_good:07d}.pt"
            assert list((out / "checkpoints").glob(".step_*.pt.*.tmp")), "the kill did not land inside a save"
        resumed = train(tiny_config(out, "train.max_steps=4", "train.checkpoint_every=1"), write_samples_at_end=False)
        assert resumed.step == 4
        assert_same_weights(straight, out)
        assert not list((out / "checkpoints").glob("*.tmp"))  # the interrupted writes' temp files were removed
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4]  # the killed runs' steps past their last checkpoint were dropped
        assert (list_checkpoints(out)[-1].stat().st_mode & 0o777) == 0o644  # the umask, not mkstemp's 0600
    finally:
        os.umask(old_mask)


# -- one writer per folder --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(out, "train.max_steps=1", "train.checkpoint_every=1"), write_samples_at_end=False)
    return out


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, run_dir, capsys):
    out = tmp_path / "busy"
    commands = {
        "train": ["train", "--preset", "tiny-test", "--output-dir", str(out), *[a for s in TINY for a in ("--set", s)]],
        "sample": ["sample", "--checkpoint", str(run_dir), "--output", str(out), "--steps", "2"],
        "encode": ["encode", "--dataset", "moving-mnist", "--vae", "none", "--output", str(out)],
    }
    with FolderLock(out, "train"):
        for command, argv in commands.items():
            assert main(argv) == 2
            (line,) = error_lines(capsys.readouterr().err, command)
            assert f"in use by pid {os.getpid()}" in line and "latte train" in line
    assert not out.exists()  # the lock's folder held nothing else: removed with it


def test_a_killed_writer_leaves_no_stuck_lock(tmp_path):
    out = tmp_path / "run"
    code = (f"import os, signal; from latte.files import FolderLock; FolderLock({str(out)!r}, 'train').acquire(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, timeout=60)
    assert proc.returncode == -signal.SIGKILL and (out / LOCK_NAME).is_file()
    assert "pid" in (out / LOCK_NAME).read_text()
    trainer = train(tiny_config(out, "train.max_steps=1"), write_samples_at_end=False)
    assert trainer.step == 1


# -- exact resume on real video files ---------------------------------------------------------------------

def write_clips(root: Path, count: int = 4, frames: int = 12, size: int = 24) -> None:
    """Small mp4s written with latte's own writer: a bright square moving over a gradient."""
    y, x = np.mgrid[0:size, 0:size]
    for v in range(count):
        video = np.zeros((frames, size, size, 3), np.uint8)
        for f in range(frames):
            video[f, ..., 0] = (x * 255 // size).astype(np.uint8)
            video[f, ..., 1] = (40 * v) % 255
            top = (f * 2 + v * 3) % (size - 8)
            video[f, top:top + 8, 4 + v:12 + v] = 255
        write_mp4(root / f"clip{v}.mp4", video, fps=8)


VIDEO_DATA = ["data.dataset=faceforensics", "data.num_frames=4", "data.frame_interval=2", "data.resolution=16",
              "data.images_per_clip=1", "train.checkpoint_every=2"]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_on_real_video_files_is_exact_with_any_worker_count(tmp_path, workers):
    root = tmp_path / "videos"
    write_clips(root)
    data = [f"data.root={root}", *VIDEO_DATA]
    straight = tmp_path / "straight"
    train(tiny_config(straight, *data, "train.max_steps=4"), write_samples_at_end=False)
    out = tmp_path / "resumed"
    train(tiny_config(out, *data, "train.max_steps=2", f"data.num_workers={workers}"), write_samples_at_end=False)
    train(tiny_config(out, *data, "train.max_steps=4", f"data.num_workers={workers}"), write_samples_at_end=False)
    assert_same_weights(straight, out)


def test_resume_accepts_the_data_folder_spelled_another_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_clips(tmp_path / "videos", count=2)
    for spelling, steps in (("videos", 1), ("videos/", 2), (str(tmp_path / "videos"), 3)):
        trainer = train(tiny_config(tmp_path / "run", *VIDEO_DATA, f"data.root={spelling}", f"train.max_steps={steps}"),
                        write_samples_at_end=False)
        assert trainer.step == steps


def test_a_frame_that_breaks_while_training_is_skipped_with_one_warning(tmp_path, caplog):
    from PIL import Image

    root = tmp_path / "sky"
    for clip in range(3):
        (root / f"c{clip}").mkdir(parents=True)
        for f in range(6):
            noise = np.random.default_rng(10 * clip + f).integers(0, 255, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(noise).save(root / f"c{clip}" / f"{f}.png")  # noise: a PNG of some length
    broken = root / "c1" / "3.png"
    broken.write_bytes(broken.read_bytes()[:40])  # the header survives, so the scan (first frame only) passes
    data = ["data.dataset=skytimelapse", f"data.root={root}", "data.num_frames=6", "data.frame_interval=1",
            "data.resolution=16", "train.max_steps=3", "train.batch_size=3"]
    with caplog.at_level("WARNING", logger="latte.data"):
        trainer = train(tiny_config(tmp_path / "run", *data), write_samples_at_end=False)
    assert trainer.step == 3
    warnings = [r for r in caplog.records if str(broken.parent) in r.getMessage()]
    assert len(warnings) == 1 and "1 file(s) found unreadable" in warnings[0].getMessage()


# -- a full disk ------------------------------------------------------------------------------------------

def test_disk_full_gives_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the step-4 checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny-test", "--output-dir", str(out), "--no-samples",
            *[a for s in TINY for a in ("--set", s)]]
    assert main(argv) == 2
    (line,) = error_lines(capsys.readouterr().err, "train")
    assert "no space left on device" in line and "last good checkpoint" in line and "step_0000002.pt" in line
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000002.pt"]  # no temp file left
    assert load_checkpoint(out)["step"] == 2


# -- bad input: exit 2, one line, no traceback ------------------------------------------------------------

def dry(*sets: str) -> list[str]:
    return ["train", "--preset", "tiny-test", "--dry-run", *[a for s in sets for a in ("--set", s)]]


CONFIG_CASES = [
    (dry("optim.lr=nan"), "optim.lr must be in (0, inf)"),
    (dry("diffusion.num_timesteps=0"), "diffusion.num_timesteps must be in [2, inf)"),
    (dry("diffusion.num_timesteps=1"), "diffusion.num_timesteps must be in [2, inf)"),
    (dry("diffusion.num_timesteps=-3"), "diffusion.num_timesteps must be in [2, inf)"),
    (dry("data.num_workers=-1"), "data.num_workers must be in [0, inf)"),
    (dry("model.hidden_size=0"), "model.hidden_size must be in [1, inf)"),
    (dry("model.depth=0"), "model.depth must be in [1, inf)"),
    (dry("optim.beta1=1.5"), "optim.beta1 must be in [0, 1)"),
    (dry("train.seed=-1"), "train.seed must be in [0, 2147483647]"),
    (dry("sample.num_videos=0"), "sample.num_videos must be in [1, inf)"),
    (dry("model.mlp_ratio=0"), "model.mlp_ratio must be in (0, inf)"),
    (dry("optim.grad_clip=-1"), "optim.grad_clip must be in [0, inf)"),
    (dry("optim.warmup_steps=-5"), "optim.warmup_steps must be in [0, inf)"),
    (dry("train.sample_every=-1"), "train.sample_every must be in [0, inf)"),
    (dry("data.resolution=18"), "input_size 18x18 is not divisible by patch_size 4"),
    (dry("sample.cfg_scale=inf"), "sample.cfg_scale must be in [0, inf)"),
    (dry("diffusion.beta_start=0.5", "diffusion.beta_end=0.1"), "beta_start 0.5 must be <="),
    (dry("train.batch_size=4", "train.grad_accum=3"), "must be divisible by train.grad_accum 3"),
    (dry("data.vae=/no-such-vae"), "VAE '/no-such-vae': not a folder"),  # named before the shapes it decides
]


@pytest.mark.parametrize("argv,needle", CONFIG_CASES, ids=[" ".join(c[0][4:]) for c in CONFIG_CASES])
def test_bad_config_values_are_one_line(argv, needle, capsys):
    assert main(argv) == 2
    (line,) = error_lines(capsys.readouterr().err, argv[0])
    assert needle in line


def test_a_latent_cache_run_does_not_check_data_vae_which_it_ignores(capsys):
    """With data.cache the cache's own VAE is used: a stale data.vae path must not refuse the run."""
    assert main(dry("data.cache=/no-such-cache", "data.vae=/no-such-vae")) == 0


def sample_cases(run: Path, tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "a-file").write_text("x")
    (tmp / "folder.mp4").mkdir()
    base = ["sample", "--checkpoint", str(run)]
    return [
        ([*base, "--output", str(tmp / "v.mp4"), "--fps", "-5"], "--fps must be >= 1"),
        ([*base, "--output", str(tmp / "v.mp4"), "--fps", "0"], "--fps must be >= 1"),
        ([*base, "--output", str(tmp / "v.mp4"), "--steps", "0"], "--steps must be >= 1"),
        ([*base, "--output", str(tmp / "v.mp4"), "--steps", "-4"], "--steps must be >= 1"),
        ([*base, "--output", str(tmp / "v.mp4"), "--num-frames", "0"], "--num-frames must be >= 1"),
        ([*base, "--output", str(tmp / "v.mp4"), "--num-videos", "0"], "--num-videos must be >= 1"),
        ([*base, "--output", str(tmp / "v.mp4"), "--cfg-scale", "nan"], "--cfg-scale must be a finite number"),
        ([*base, "--output", str(tmp / "v.mp4"), "--eta", "2"], "--eta must be in [0, 1]"),
        ([*base, "--output", str(tmp / "folder.mp4")], "it is an existing folder"),
        ([*base, "--output", str(tmp / "a-file")], "a file of that name exists"),
        ([*base, "--output", "/proc/latte-x/a.mp4"], "cannot create"),
        ([*base, "--output", "/proc/a.mp4"], "cannot create output /proc/a.mp4"),  # a folder that takes no files
        ([*base, "--output", str(tmp / "v.avi")], "--output must end in"),
        ([*base, "--output", str(tmp / "v.mp4"), "--scheduler-options", "order"], "'order' is not KEY=VALUE"),
        ([*base, "--output", str(tmp / "v.mp4"), "--sampler", "dpm-solver", "--scheduler-options", "solver_orde=3"],
         "dpm-solver scheduler has no setting solver_orde"),
        ([*base, "--output", str(tmp / "v.mp4"), "--sampler", "dpm-solver", "--scheduler-options", "algorithm_type=sde"],
         "dpm-solver scheduler rejects algorithm_type=sde"),
        ([*base, "--output", str(tmp / "v.mp4"), "--sampler", "unipc", "--scheduler-options", "solver_order=0"],
         "unipc scheduler fails with solver_order=0"),  # diffusers only fails inside step(): rehearsed up front
        ([*base, "--output", ""], "--output is empty"),  # not the working directory
        *([([*base, "--output", str(tmp / "v.mp4"), "--device", "cuda"], "--device=cuda asks for CUDA")]
          if not torch.cuda.is_available() else []),
    ]


def test_bad_sample_arguments_are_one_line_before_any_work(run_dir, tmp_path, capsys):
    for argv, needle in sample_cases(run_dir, tmp_path):
        assert main(argv) == 2, argv
        (line,) = error_lines(capsys.readouterr().err, "sample")
        assert needle in line, (argv, line)
    assert not (tmp_path / "v.mp4").exists()


def test_a_sample_folder_refuses_videos_of_other_settings(run_dir, tmp_path, capsys):
    out = tmp_path / "fvd"
    argv = ["sample", "--checkpoint", str(run_dir), "--output", str(out), "--steps", "2", "--num-videos", "2"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0, 1]  # each video's own noise seed
    assert main([*argv, "--num-videos", "3"]) == 0  # more videos of the same settings: resumed
    assert sorted(p.name for p in out.glob("*.mp4")) == ["000000.mp4", "000001.mp4", "000002.mp4"]
    for other in (["--seed", "1"], ["--cfg-scale", "3"], ["--steps", "3"], ["--precision", "bf16"],
                  ["--scheduler-options", "timestep_spacing=trailing"], ["--cache", "pab"]):
        capsys.readouterr()
        assert main([*argv, *other]) == 2
        (line,) = error_lines(capsys.readouterr().err, "sample")
        assert "holds videos of other settings" in line
    settings = out / "sample-settings.json"  # a folder from before latte recorded the sampler's options
    older = {k: v for k, v in json.loads(settings.read_text()).items()
             if k not in ("scheduler_options", "cache", "cache_options", "precision")}
    settings.write_text(json.dumps(older))
    assert main([*argv, "--num-videos", "4"]) == 0
    assert main([*argv, "--cache", "pab"]) == 2  # lacking keys read as their defaults, not as anything


def test_sampling_several_videos_into_an_mp4_writes_that_file(run_dir, tmp_path, capsys):
    out = tmp_path / "named.mp4"
    assert main(["sample", "--checkpoint", str(run_dir), "--output", str(out), "--steps", "2", "--num-videos", "3"]) == 0
    assert capsys.readouterr().out.split() == [str(out)] and out.is_file()
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def other_cases(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "latin1.csv").write_bytes("path,caption\nclip.mp4,caf\xe9 au lait\n".encode("latin-1"))
    (tmp / "empty.csv").write_text("path,caption\nclip.mp4,\n")
    (tmp / "a-file").write_text("x")
    (tmp / "binary.yaml").write_bytes(b"\xd5\x8a\x00\xff")
    inspect = ["data", "inspect", "--num-frames", "4", "--resolution", "16"]
    return [
        ([*inspect, "--dataset", "captions", "--root", str(tmp / "latin1.csv")], "is not UTF-8"),
        ([*inspect, "--dataset", "captions", "--root", str(tmp / "empty.csv")], "has no caption"),
        ([*inspect, "--dataset", "folder", "--root", str(tmp / "a-file")], "is a file: give the dataset's folder"),
        ([*inspect, "--dataset", "moving-mnist", "--filmstrip", str(tmp / "f.txt")], "give a .png file"),
        (["info", "--num-frames", "0"], "--num-frames must be >= 1"),
        (["info", "--input-size", "15"], "not divisible by patch_size 2"),  # and no table header before it
        (["train", "--preset", "tiny-test", "--output-dir", str(tmp / "a-file")], "a file of that name exists"),
        (["encode", "--dataset", "moving-mnist", "--vae", "none", "--output", str(tmp / "a-file")],
         "a file of that name exists"),
        (["encode", "--dataset", "moving-mnist", "--vae", "none", "--output", str(tmp / "cache"), "--batch-size", "0"],
         "batch size and chunk size must be >= 1 and workers >= 0"),
        (["encode", "--dataset", "moving-mnist", "--vae", "none", "--output", str(tmp / "cache"), "--workers", "-1"],
         "batch size and chunk size must be >= 1 and workers >= 0"),
        (["train", "--config", str(tmp / "binary.yaml"), "--dry-run"], "is not UTF-8 text"),
        (["train", "--config", str(tmp), "--dry-run"], "is a folder: give a YAML file"),
        (["ablate", "--preset", "tiny-test", "--output-dir", str(tmp / "ab"), "--dry-run", "--options",
          "optim.lr=abc,1e-3"], "option lr-abc (optim.lr=abc): optim.lr must be float"),
        (["ablate", "--preset", "tiny-test", "--output-dir", str(tmp / "ab"), "--dry-run", "--study", "init",
          "--dit", str(tmp / "no-dit.pt")], "DiT checkpoint not found"),
    ]


def test_other_bad_inputs_are_one_line(tmp_path, capsys):
    for argv, needle in other_cases(tmp_path):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        (line,) = error_lines(captured.err, argv[0])
        assert needle in line, (argv, line)
        assert captured.out == "", (argv, captured.out)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ab").exists()  # refused before any folder


def test_convert_refuses_to_write_over_its_input(run_dir, tmp_path, capsys):
    checkpoint = tmp_path / "run.pt"
    checkpoint.write_bytes(list_checkpoints(run_dir)[-1].read_bytes())
    before = checkpoint.read_bytes()
    assert main(["convert", "--from", "latte", "--to", "latte", str(checkpoint), str(checkpoint)]) == 2
    (line,) = error_lines(capsys.readouterr().err, "convert")
    assert "is the input itself" in line and checkpoint.read_bytes() == before
    latest = list_checkpoints(run_dir)[-1]  # a run folder is read through its latest checkpoint
    kept = latest.read_bytes()
    assert main(["convert", "--from", "latte", "--to", "latte", str(run_dir), str(latest)]) == 2
    assert "is the input itself" in error_lines(capsys.readouterr().err, "convert")[0] and latest.read_bytes() == kept


def test_weights_that_do_not_fit_the_stored_model_config_are_one_line(run_dir, tmp_path, capsys):
    state = load_checkpoint(list_checkpoints(run_dir)[-1])
    state["model_config"]["hidden_size"] *= 2  # edited by hand, or another model's weights
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    for argv in (["sample", "--checkpoint", str(bad), "--output", str(tmp_path / "v.mp4"), "--steps", "1"],
                 ["convert", "--from", "latte", "--to", "latte", str(bad), str(tmp_path / "c.pt")]):
        assert main(argv) == 2, argv
        (line,) = error_lines(capsys.readouterr().err, argv[0])
        assert "ema weights do not match its model_config" in line and "of other shape" in line, line
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "c.pt").exists()


def test_traceback_flag_prints_the_trace_and_version_prints_the_version(capsys):
    assert main(["--traceback", *dry("optim.lr=nan")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("latte train: error: optim.lr")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("latte ")


def test_debug_environment_variable_prints_the_trace(monkeypatch, capsys):
    monkeypatch.setenv("LATTE_DEBUG", "1")
    assert main(dry("train.seed=-1")) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "train.seed must be in" in err.strip().splitlines()[-1]


def test_data_inspect_lists_each_skipped_file_once(tmp_path, capsys):
    root = tmp_path / "clips"
    write_clips(root, count=1)
    (root / "broken.mp4").write_bytes(b"\x00garbage" * 100)
    assert main(["data", "inspect", "--dataset", "folder", "--root", str(root), "--num-frames", "4",
                 "--resolution", "16"]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("broken.mp4") == 1


def test_convert_official_on_a_latte_checkpoint_is_one_plain_line(run_dir, tmp_path, capsys):
    checkpoint = list_checkpoints(run_dir)[-1]
    for source, kind in (("official", "an official Latte checkpoint"), ("dit", "a DiT state dict")):
        assert main(["convert", "--from", source, "--to", "latte", str(checkpoint), str(tmp_path / "out.pt")]) == 2
        (line,) = error_lines(capsys.readouterr().err, "convert")
        assert f"is not {kind}" in line and "--from latte" in line and "\x1b" not in line


def test_a_device_that_is_not_there_is_one_named_error():
    from latte.devices import pick_device
    from latte.errors import LatteError

    assert pick_device("cpu").type == "cpu"
    with pytest.raises(LatteError, match="train.device=gpu is not a device"):
        pick_device("gpu", "train.device")
    if not torch.cuda.is_available():
        with pytest.raises(LatteError, match="--device=cuda:1 asks for CUDA, but no CUDA device is visible"):
            pick_device("cuda:1")
