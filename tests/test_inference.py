"""The inference entry point (latte.inference): every kind of source, written to disk by the real saving
code, loads into a generator that generates; inference and the sampling commands import nothing from
latte.train; no command imports another."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latte.checkpoint_files import load_checkpoint
from latte.diffusion import GaussianDiffusion
from latte.errors import LatteError
from latte.inference import DIFFUSERS, LATTE, OFFICIAL, load_generator, load_run
from latte.model_sources import run_model
from latte.models import create_model, export_diffusers_transformer
from latte.sampling import SampleRequest, generate
from latte.train.checks import load_config
from latte.train.run import train

TINY = ["train.device=cpu", "data.num_workers=0"]
SRC = Path(__file__).resolve().parent.parent / "src"


def tiny_run(output, *overrides):
    """A trained tiny class-conditional run (moving-mnist digits, 16x16 pixels, 4 frames) and its trainer."""
    config = load_config("tiny-test", None, [f"train.output_dir={output}", *TINY, *overrides])
    return train(config, write_samples_at_end=False, log=lambda *_: None)


def randomized(model, seed=0, std=0.05):
    """Non-zero weights everywhere (a fresh model's zero-initialised output layer would give zero outputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    return output, tiny_run(output, "train.max_steps=2")


def test_a_run_folder_loads_into_a_generator_that_samples_as_the_trained_ema_does(run):
    output, trainer = run
    generator = load_generator(output)
    assert generator.kind == LATTE and str(generator.path) == load_checkpoint(output)["path"] and generator.vae is None
    assert not generator.model.training and generator.fps == trainer.config.sample.fps
    request = generator.request(num_videos=3, batch_size=2)  # the run's sampler (ddim) and steps (4)
    assert (request.sampler, request.steps, request.cfg_scale) == ("ddim", 4, 1.0)
    videos, labels = generator.generate(request, progress=False)
    assert videos.shape == (3, 1, 4, 16, 16) and labels.tolist() == [0, 1, 2]
    expected, _ = generate(trainer.ema, trainer.diffusion, request, progress=False)
    assert torch.equal(videos, expected)
    assert [c["label"] for c in generator.conditions(request)] == [0, 1, 2]


def test_requests_take_the_runs_sample_settings_unless_given(run):
    generator = load_run(run[0])
    assert generator.request(sampler="ddpm").steps is None  # another sampler: its own default step count
    assert generator.request(sampler="ddim", steps=7, cfg_scale=None).steps == 7
    assert generator.request(cfg_scale=2.0).cfg_scale == 2.0
    with pytest.raises(LatteError, match="cache must be"):
        generator.check(generator.request(cache="bogus"))
    with pytest.raises(LatteError, match="has no setting nope"):
        generator.check(generator.request(scheduler_options={"nope": 1}))


def test_raw_weights_are_the_trained_model_and_differ_from_the_ema(run):
    output, trainer = run
    raw, ema = load_run(output, use_ema=False).model, load_run(output).model
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(raw.state_dict()[name], tensor), name
    assert any(not torch.equal(raw.state_dict()[k], v) for k, v in ema.state_dict().items())


def test_an_official_checkpoint_loads_with_the_default_diffusion_and_generates(tmp_path):
    model = randomized(create_model("Latte-T/4", in_channels=1, num_frames=4, input_size=16, num_classes=10))
    path = tmp_path / "ucf101.pt"
    torch.save({"ema": model.state_dict()}, path)  # the official layout
    generator = load_generator(path)
    assert generator.kind == OFFICIAL and generator.path == path.resolve()
    assert generator.diffusion.num_timesteps == 1000 and generator.config.data.num_frames == 4
    request = SampleRequest(num_videos=2, sampler="ddim", steps=3, class_label=7)
    videos, labels = generator.generate(request, progress=False)
    expected, _ = generate(model, GaussianDiffusion(learn_sigma=True), request, progress=False)
    assert labels.tolist() == [7, 7] and torch.equal(videos, expected) and videos.abs().sum() > 0


def test_a_diffusers_folder_needs_a_text_encoder_and_then_generates_from_prompts(tmp_path):
    model = randomized(create_model("LatteT2V-T", caption_channels=384, in_channels=1, input_size=8))
    folder = export_diffusers_transformer(model, tmp_path / "transformer")
    request = SampleRequest(num_videos=2, sampler="ddim", steps=2, prompts=["the digit 3 moves up"])
    with pytest.raises(LatteError, match="records no text encoder"):
        load_generator(folder).generate(request, progress=False)
    generator = load_generator(folder, text_encoder="minilm")
    assert generator.kind == DIFFUSERS and generator.model.config.is_text
    videos, labels = generator.generate(request, progress=False)
    assert videos.shape == (2, 1, 4, 8, 8) and labels is None and torch.isfinite(videos).all()
    assert generator.text_encoder is not None and generator.text_encoder.width == 384
    assert generator.conditions(request) == [{"caption": "the digit 3 moves up"}] * 2


def test_a_lora_run_loads_as_its_verified_base_with_the_adapters_merged(tmp_path, run):
    lora = tmp_path / "lora"
    tiny_run(lora, "train.max_steps=2", f"model.init_from={run[0]}", "model.lora_rank=2", "optim.lr=3e-2")
    generator = load_generator(lora)
    assert not any("lora_" in k or "base_layer" in k for k in generator.model.state_dict())
    adapted = run_model(load_checkpoint(lora), merge=False)  # the adapters applied, not merged
    request = generator.request(num_videos=2)
    expected, _ = generate(adapted, generator.diffusion, request, progress=False)
    torch.testing.assert_close(generator.generate(request, progress=False)[0], expected, atol=1e-5, rtol=1e-5)


def test_a_missing_source_is_a_one_line_error(tmp_path):
    with pytest.raises(LatteError, match="model source not found"):
        load_generator(tmp_path / "nope.pt")
    with pytest.raises(LatteError, match="checkpoint not found"):
        load_run(tmp_path / "nope.pt")


def test_inference_and_the_sampling_commands_import_nothing_from_train():
    code = ("import sys; import latte.inference, latte.commands.sample, latte.commands.convert; "
            "print([m for m in sys.modules if m == 'latte.train' or m.startswith('latte.train.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}).stdout
    assert out.strip() == "[]", out


def test_no_command_imports_another_command():
    for path in sorted((SRC / "latte" / "commands").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.startswith("latte.commands") for n in names), f"{path.name} imports {names}"
