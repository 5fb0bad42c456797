"""Bad input over every command, table-driven: each row is refused with exit 2 and one line on stderr that
names the key, never a traceback, and leaves the workspace as it was (no folder, no lock file, no file
written or changed). Then the write-over rules: no command writes over what a run depends on, and any
other existing file only with --overwrite. A new option adds a row (float options add theirs themselves)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_vae import save_tiny_vae

from latte.checkpoint_files import list_checkpoints
from latte.cli import build_parser, main
from latte.config import Config
from latte.errors import LatteError
from latte.files import check_output_folder, record_dependency
from latte.inference import load_run
from latte.models import create_model, export_diffusers_transformer
from latte.train.checks import load_config
from latte.train.run import train
from latte.video_io import write_mp4

TINY = ["train.device=cpu", "data.num_workers=0", "train.max_steps=1", "train.checkpoint_every=1"]


def tiny_run(output: Path, *overrides: str) -> Path:
    train(load_config("tiny-test", None, [f"train.output_dir={output}", *TINY, *overrides]), write_samples_at_end=False)
    return output


def official_file(path: Path) -> Path:
    """Random weights in the official layout ({"ema": state_dict}), shaped for the tiny-test data."""
    model = create_model("Latte-T/4", in_channels=1, num_frames=4, input_size=16, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    torch.save({"ema": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The workspace every row runs in: a base run, a LoRA run over it, a LoRA run over an official file
    outside any run folder, a latent cache, a sample folder, real, short and broken videos, existing files."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATTE_CACHE_DIR", str(tmp_path_factory.mktemp("latte-cache")))  # the dependency record
        ws = tmp_path_factory.mktemp("ws")
        tiny_run(ws / "base")
        tiny_run(ws / "lora", f"model.init_from={ws / 'base'}", "model.lora_rank=2")
        tiny_run(ws / "lora-official", f"model.init_from={official_file(ws / 'official.pt')}", "model.lora_rank=2")
        rng = np.random.default_rng(0)
        for name, frames in (("clips/a.mp4", 6), ("clips/b.mp4", 6), ("fake/a.mp4", 20)):
            (ws / name).parent.mkdir(exist_ok=True)
            write_mp4(ws / name, rng.integers(0, 255, (frames, 16, 16, 3), dtype=np.uint8), fps=8)
        (ws / "broken").mkdir()
        (ws / "broken" / "x.mp4").write_bytes(b"\x00garbage" * 100)
        for name in ("afile", "existing.mp4", "existing.npz", "existing.json", "existing.png", "existing.pt"):
            (ws / name).write_text("x")
        vae = save_tiny_vae(ws / "vae")
        assert main(["encode", "--dataset", "folder", "--root", str(ws / "clips"), "--vae", vae, "--output",
                     str(ws / "cache"), "--num-frames", "4", "--frame-interval", "1", "--resolution", "16",
                     "--workers", "0"]) == 0
        assert main(["sample", "--checkpoint", str(ws / "base"), "--output", str(ws / "fvd"), "--steps", "2",
                     "--num-videos", "1"]) == 0
        yield ws


def snapshot(folder: Path) -> dict:
    """Every file (size, mtime) and folder under `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def rows(ws: Path) -> list[tuple[list[str], str]]:
    """(argv, what the one line must name)."""
    base, step = ws / "base", list_checkpoints(ws / "base")[-1]
    dry = ["train", "--preset", "tiny-test", "--dry-run"]
    new_run = ["train", "--preset", "tiny-test", "--output-dir", str(ws / "new-run"), "--set", "train.device=cpu"]
    lora = ["--set", f"model.init_from={base}", "--set", "model.lora_rank=2"]
    sample = ["sample", "--checkpoint", str(base), "--output", str(ws / "v.npz")]
    sample_ddpm = [*sample, "--sampler", "ddpm", "--scheduler-options"]
    evaluate = ["eval", "--real", str(ws / "clips"), "--fake", str(ws / "fake"), "--workers", "0", "--no-cache"]
    encode = ["encode", "--dataset", "folder", "--root", str(ws / "clips"), "--vae", str(ws / "vae")]
    convert = ["convert", "--from", "latte", "--to", "latte"]
    ablate = ["ablate", "--preset", "tiny-test", "--options", "optim.lr=1e-3,2e-3"]
    inspect = ["data", "inspect", "--dataset", "moving-mnist", "--num-frames", "4", "--resolution", "16"]
    return [
        # train: choices, unknown arguments, floats, outputs, LoRA sizes; a refused run leaves no folder
        (["train", "--preset", "nope"], "argument --preset: invalid choice"),
        (["train", "--bogus", "1"], "unrecognized arguments: --bogus"),
        ([*dry, *lora, "--set", "model.lora_alpha=nan"], "model.lora_alpha"),
        ([*dry, "--set", "diffusion.min_snr_gamma=inf"], "diffusion.min_snr_gamma"),
        ([*dry, "--set", "data.mnist_max_speed=nan"], "data.mnist_max_speed"),
        ([*dry, "--set", "model.name=Latte-Q/2"], "unknown model 'Latte-Q/2'"),
        ([*new_run, *lora, "--set", "model.lora_alpha=inf"], "model.lora_alpha"),
        ([*new_run, "--set", f"model.init_from={base}", "--set", "model.lora_rank=64"], "model.lora_rank 64 exceeds"),
        ([*new_run, "--set", "model.lora_targets=attn.nope", *lora], "model.lora_targets"),
        ([*dry, "--set", "train.eval_every=-1"], "train.eval_every must be in"),
        ([*dry, "--set", "train.mask_first=1.5"], "train.mask_first must be in [0, 1]"),
        ([*dry, "--set", "train.mask_first=0.6", "--set", "train.mask_ends=0.6"], "must be <= 1"),
        ([*dry, "--set", "train.mask_middle=0.1"], "unknown key train.mask_middle"),
        ([*dry, "--set", "train.mask_prefix_frames=2"], "train.mask_prefix_frames applies when train.mask_prefix > 0"),
        ([*dry, "--set", "train.mask_prefix=0.2", "--set", "train.mask_prefix_frames=1", "--set",
          "model.patch_embed=tubelet"], "train.mask_prefix_frames 1 splits a tubelet"),
        ([*new_run, "--set", "train.mask_ends=0.1", "--set", "data.num_frames=2"], "need clips of at least 3 frames"),
        ([*dry, "--set", "train.eval_every=5", "--set", f"data.cache={ws / 'cache'}"], "no held-out slice"),
        ([*new_run, "--set", "data.dataset=folder", "--set", f"data.root={ws / 'clips'}", "--set", "train.eval_every=1"],
         "train.eval_clips 64 would hold out more than half of the 2 clips"),
        (["train", "--preset", "tiny-test", "--output-dir", str(base / "checkpoints")], "in the checkpoints of run"),
        (["train", "--preset", "tiny-test", "--output-dir", str(ws / "cache")], "is a latent cache"),
        (["train", "--preset", "tiny-test", "--output-dir", str(ws / "afile")], "a file of that name exists"),
        # sample: settings that contradict the checkpoint, ranges, outputs
        ([*sample, "--sampler", "x"], "argument --sampler: invalid choice"),
        ([*sample_ddpm, "num_train_timesteps=500"], "num_train_timesteps=500 contradicts the checkpoint"),
        ([*sample_ddpm, "beta_schedule=squaredcos_cap_v2"], "beta_schedule"),
        ([*sample_ddpm, "beta_start=0.001"], "beta_start"),
        ([*sample_ddpm, "prediction_type=v_prediction"], "prediction_type"),
        ([*sample_ddpm, "variance_type=fixed_large"], "variance_type"),
        ([*sample_ddpm, "clip_sample_range=inf"], "clip_sample_range=inf must be a finite number"),
        ([*sample, "--cache", "pab", "--cache-options", "spatial=3@50-1000"], "timesteps are 0-999"),
        ([*sample, "--steps", "1000", "--sampler", "unipc"], "solver steps do not fit"),
        ([*sample, "--cfg-scale", "-1"], "--cfg-scale must be a finite number >= 0"),
        (["sample", "--checkpoint", str(base), "--output", str(ws / "new-folder"), "--steps", "5000"], "steps"),
        (["sample", "--checkpoint", str(ws / "nope"), "--output", str(ws / "new-folder")], "checkpoint not found"),
        (["sample", "--checkpoint", str(base), "--output", str(ws / "fvd"), "--steps", "3"], "other settings"),
        (["sample", "--checkpoint", str(base), "--output", str(ws / "existing.mp4")], "pass --overwrite"),
        (["sample", "--checkpoint", str(base), "--output", str(base / "checkpoints" / "v.npz")], "checkpoints of run"),
        (["sample", "--checkpoint", str(base), "--output", str(base)], "is a training run folder"),
        (["sample", "--checkpoint", str(base), "--output", str(ws / "cache" / "v.png")], "in the latent cache"),
        (["sample", "--output", "x.mp4"], "required: --checkpoint"),
        # demo: what is refused before the server starts (the model loaded, nothing served or written)
        (["demo", "--checkpoint", str(ws / "nope")], "model source not found"),
        (["demo", "--checkpoint", str(base), "--port", "70000"], "--port must be in [1, 65535], got 70000"),
        (["demo", "--checkpoint", str(base), "--port", "0"], "--port must be in [1, 65535], got 0"),
        (["demo", "--checkpoint", str(base), "--queue-size", "0"], "--queue-size must be at least 1, got 0"),
        (["demo", "--checkpoint", str(base), "--cache", "pab", "--cache-options", "spatial=3@50-1000"],
         "timesteps are 0-999"),
        (["demo", "--checkpoint", str(base), "--cache-options", "spatial=2"], "--cache-options apply to --cache pab only"),
        (["demo", "--checkpoint", str(base), "--precision", "fp8"], "argument --precision: invalid choice"),
        (["demo", "--port", "7860"], "required: --checkpoint"),
        # eval: metrics, devices, the real cause of no clips, the report
        ([*evaluate, "--metrics", "fvd,xyz"], "--metrics"),
        ([*evaluate, "--device", "tpu"], "argument --device: invalid choice"),
        (["eval", "--real", str(ws / "clips"), "--fake", str(ws / "broken")], "no readable video under"),
        ([*evaluate, "--stride", "1"], "the longest has 6): evaluation clips are 16 frames: give longer videos"),
        ([*evaluate, "--output", str(ws / "existing.json")], "pass --overwrite"),
        ([*evaluate, "--output", str(step), "--overwrite"], "as the base of its LoRA adapters"),
        ([*evaluate, "--output", str(base / "checkpoints" / "r.json")], "in the checkpoints of run"),
        # encode: only into a new folder or its own cache
        ([*encode, "--output", str(base)], "is a training run folder"),
        ([*encode, "--output", str(base / "checkpoints" / "c")], "in the checkpoints of run"),
        ([*encode, "--output", str(ws / "clips")], "is not a latent cache"),
        ([*encode, "--output", str(ws / "c2"), "--dtype", "int8"], "argument --dtype: invalid choice"),
        # convert: outputs first, never what a run depends on
        ([*convert, "--merge-lora", str(ws / "lora"), str(step)], "is the base of this LoRA run"),
        ([*convert, str(ws / "lora-official"), str(ws / "official.pt"), "--merge-lora", "--overwrite"],
         "is the base of this LoRA run"),
        ([*convert, str(base), str(ws / "official.pt"), "--overwrite"], "depends on"),
        ([*convert, str(ws / "lora"), str(ws / "existing.pt"), "--merge-lora"], "pass --overwrite"),
        ([*convert, str(base), str(base / "config.yaml"), "--overwrite"], "the config of run"),
        ([*convert, str(ws / "lora"), str(ws / "new.pt")], "is a LoRA run (adapters over a base model): pass --merge-lora"),
        ([*convert, "--merge-lora", str(base), str(ws / "new.pt")], "--merge-lora: "),
        (["convert", "--from", "latte", "--to", "diffusers", str(base), str(base)], "is the input itself"),
        (["convert", "--from", "nope", "--to", "latte", "a", "b"], "argument --from: invalid choice"),
        # ablate: the study folder first
        ([*ablate, "--output-dir", str(ws / "afile")], "afile is a file, not a folder"),
        ([*ablate, "--output-dir", str(base / "checkpoints")], "in the checkpoints of run"),
        ([*ablate, "--classifier-steps", "1.5"], "argument --classifier-steps: invalid int value"),
        ([*ablate, "--classifier-steps", "0"], "--classifier-steps: must be >= 1"),
        ([*ablate, "--metrics", "fvd,nope"], "--metrics"),
        # info and data
        (["info", "--model", "Latte-Q/2"], "argument --model: invalid choice"),
        (["info", "--model", "Latte-1", "--num-classes", "3"], "--num-classes applies to class/unconditional"),
        (["info", "--variant", "9"], "argument --variant: invalid choice"),
        (["info", "--num-frames", "0"], "--num-frames must be >= 1"),
        (["data", "inspect", "--dataset", "nope"], "argument --dataset: invalid choice"),
        (["data", "nope"], "argument ACTION: invalid choice"),
        ([*inspect, "--filmstrip", str(ws / "existing.png")], "pass --overwrite"),
        ([*inspect, "--filmstrip", str(base / "checkpoints" / "f.png"), "--overwrite"], "checkpoints of run"),
        (["nope"], "argument COMMAND: invalid choice"),
    ]


def float_rows() -> list[tuple[list[str], str]]:
    """Every float option of every command, given nan: found in the parsers, so a new one is covered."""
    required = {"sample": ["--checkpoint", "c", "--output", "o.mp4"], "eval": ["--fake", "f"],
                "convert": ["--from", "latte", "--to", "latte", "a", "b"],
                "encode": ["--dataset", "folder", "--vae", "v", "--output", "o"]}
    found = []
    commands = next(a for a in build_parser()[0]._actions if a.dest == "command").choices  # name -> sub-parser
    for name, sub in commands.items():
        for action in sub._actions:
            if action.type is float:
                flag = action.option_strings[0]
                found.append(([name, *required.get(name, []), flag, "nan"], f"{flag} must be a finite number"))
    assert found, "no float option found: the search is broken"
    return found


def test_every_bad_input_is_one_line_naming_the_key_and_leaves_nothing(ws, capsys):
    table = rows(ws) + float_rows()
    assert len(table) >= 40
    for argv, needle in table:
        before = snapshot(ws)
        code = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv, err)
        assert "Traceback" not in err and len(lines) == 1, (argv, err)
        assert lines[0].startswith(("latte ", "latte:")) and needle in lines[0], (argv, lines[0])
        assert snapshot(ws) == before, (argv, "the refused command changed the workspace")


def float_keys() -> list[str]:
    return [f"{section.name}.{key.name}" for section in dataclasses.fields(Config)
            for key in dataclasses.fields(section.default_factory()) if "float" in str(key.type)]


@pytest.mark.parametrize("key", float_keys())
def test_every_float_config_key_refuses_nan_and_inf_naming_it(key):
    lora = ["model.lora_rank=2"] if key.startswith("model.lora_") else []
    for value in ("nan", "inf", "-inf"):
        with pytest.raises(LatteError) as err:
            load_config("tiny-test", None, [*lora, f"{key}={value}"])
        assert key in str(err.value) and "\n" not in str(err.value)


# -- the write-over rules ---------------------------------------------------------------------------------

def refused(argv: list[str], needle: str, capsys) -> None:
    capsys.readouterr()  # what came before
    assert main(argv) == 2, argv
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert needle in line, line


def test_issue_33_merging_a_lora_run_over_its_base_checkpoint_is_refused(ws, capsys):
    base = list_checkpoints(ws / "base")[-1]
    kept = base.read_bytes()
    for extra in ([], ["--overwrite"]):
        refused(["convert", "--from", "latte", "--to", "latte", "--merge-lora", str(ws / "lora"), str(base), *extra],
                "is the base of this LoRA run", capsys)
    # nor by another command that does not read the LoRA run: the file is a checkpoint of a run and a recorded base
    refused(["convert", "--from", "latte", "--to", "latte", str(ws / "lora-official"), str(base), "--merge-lora",
             "--overwrite"], "depends on", capsys)
    assert base.read_bytes() == kept
    load_run(str(ws / "lora"))  # the LoRA run still finds its base as it was


def test_a_base_recorded_by_hash_is_protected_while_its_run_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATTE_CACHE_DIR", str(tmp_path / "cache"))
    base = official_file(tmp_path / "base.pt")
    run = tiny_run(tmp_path / "lora", f"model.init_from={base}", "model.lora_rank=2")
    source = tiny_run(tmp_path / "other")
    kept = base.read_bytes()
    argv = ["convert", "--from", "latte", "--to", "latte", str(source), str(base), "--overwrite"]
    refused(argv, f"run {run} depends on {base}", capsys)
    refused(["eval", "--fake", str(tmp_path), "--output", str(base), "--overwrite"], "depends on", capsys)
    assert base.read_bytes() == kept
    shutil.rmtree(run)  # no run depends on it any more: an ordinary file, replaced with --overwrite
    assert main(argv) == 0 and base.read_bytes() != kept


def test_checkpoint_pruning_keeps_a_base_a_lora_run_depends_on(tmp_path, monkeypatch):
    monkeypatch.setenv("LATTE_CACHE_DIR", str(tmp_path / "cache"))
    base = tiny_run(tmp_path / "base")
    first = list_checkpoints(base)[-1]
    tiny_run(tmp_path / "lora", f"model.init_from={base}", "model.lora_rank=2")
    tiny_run(base, "train.max_steps=3", "train.keep_checkpoints=1")  # the base run goes on, keeping one checkpoint
    assert [p.name for p in list_checkpoints(base)] == [first.name, "step_0000003.pt"]
    load_run(str(tmp_path / "lora"))


def test_existing_outputs_are_replaced_only_with_overwrite(ws, tmp_path, capsys):
    out = tmp_path / "copy.pt"
    convert = ["convert", "--from", "latte", "--to", "latte", str(ws / "base"), str(out)]
    assert main(convert) == 0
    before = out.stat().st_mtime_ns
    refused(convert, f"output {out} exists: pass --overwrite to replace it", capsys)
    assert main([*convert, "--overwrite"]) == 0 and out.stat().st_mtime_ns != before
    video = tmp_path / "v.npz"
    video.write_text("old")
    sample = ["sample", "--checkpoint", str(ws / "base"), "--output", str(video), "--steps", "1", "--num-videos", "1"]
    refused(sample, "pass --overwrite", capsys)
    assert video.read_text() == "old"
    assert main([*sample, "--overwrite"]) == 0 and np.load(video)["videos"].shape[0] == 1
    strip = tmp_path / "strip.png"
    strip.write_text("old")
    inspect = ["data", "inspect", "--dataset", "moving-mnist", "--num-frames", "4", "--resolution", "16",
               "--filmstrip", str(strip)]
    refused(inspect, "pass --overwrite", capsys)
    assert main([*inspect, "--overwrite"]) == 0 and strip.read_bytes()[:4] == b"\x89PNG"


def test_a_diffusers_folder_is_replaced_only_with_overwrite_and_never_a_recorded_base(ws, tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setenv("LATTE_CACHE_DIR", str(tmp_path / "cache"))
    source = export_diffusers_transformer(create_model("LatteT2V-T"), tmp_path / "source")
    out = tmp_path / "out"
    argv = ["convert", "--from", "diffusers", "--to", "diffusers", str(source), str(out)]
    assert main(argv) == 0
    refused(argv, "exists and is not empty: pass --overwrite", capsys)
    assert main([*argv, "--overwrite"]) == 0
    record_dependency(out, "0" * 64, ws / "lora")  # as a text LoRA run over this folder records it
    kept = snapshot(out)
    refused([*argv, "--overwrite"], "depends on", capsys)
    for folder in (out, tmp_path):  # the folder, or one holding it, replaced whole
        with pytest.raises(LatteError, match="depends on"):
            check_output_folder(folder, overwrite=True)
    assert snapshot(out) == kept
