"""Fine-tuning: model.init_from (latte run, official layout, diffusers folder), model.trainable
(temporal, lora through peft), LoRA checkpoints (adapters + base reference), merge and export."""
from pathlib import Path

import pytest
import torch

from latte.checkpoint_files import atomic_save, list_checkpoints, load_checkpoint
from latte.cli import main
from latte.errors import LatteError
from latte.inference import load_run
from latte.model_sources import build_network, run_model
from latte.models import (
    create_model,
    export_diffusers_transformer,
    load_diffusers_transformer,
    load_official_checkpoint,
)
from latte.train import finetune
from latte.train.checks import load_config
from latte.train.run import train
from latte.train.trainer import Trainer

TINY = ["train.device=cpu", "data.num_workers=0"]
TINY_TEXT = ["train.device=cpu", "data.num_workers=0", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
             "data.num_frames=4", "data.resolution=16", "train.batch_size=4", "train.checkpoint_every=2",
             "train.log_every=1", "train.ema_decay=0.9", "train.sample_every=0", "optim.warmup_steps=0",
             "sample.num_videos=2", "sample.steps=2", "model.text_max_length=8",
             "model.pooled_text=false"]  # these runs go to and from diffusers, whose Latte has no pooled caption path


def config(output, *overrides):
    return load_config("tiny-test", None, [f"train.output_dir={output}", *TINY, *overrides])


def text_config(output, *overrides):
    return load_config("moving-mnist-text", None, [f"train.output_dir={output}", *TINY_TEXT, *overrides])


def text_model_config():
    """The model config the trainer gives the tiny text run: 1x4x16x16 clips, MiniLM captions (width 384)."""
    from latte.train.build import make_model_config

    return make_model_config(text_config("unused"), torch.zeros(1, 4, 16, 16), 0, caption_channels=384)


def randomize(model, seed=0, std=0.05):
    """Non-zero values everywhere (fresh models have zero adaLN and output layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def class_inputs(model, seed=0):
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c.in_channels, c.num_frames, *c.latent_hw, generator=gen)
    return x, torch.tensor([5, 600]), torch.tensor([1, 7])


def forward(model, inputs):
    """Class models take (x, t, y); text models (x, t, captions), the captions by keyword."""
    x, t, condition = inputs
    key = "encoder_hidden_states" if model.config.is_text else "y"
    with torch.no_grad():
        return model.eval()(x, t, **{key: condition})


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A tiny class-conditional run (4 steps from random official-layout weights, so that no adaLN gate is
    zero and every block matters): the base every class-model test fine-tunes."""
    output = tmp_path_factory.mktemp("base")
    train(config(output, "train.max_steps=4", f"model.init_from={official_file(output)}"), write_samples_at_end=False)
    return output


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base_run) -> Path:
    output = tmp_path_factory.mktemp("lora")
    train(config(output, f"model.init_from={base_run}", "model.lora_rank=4", "optim.lr=3e-2"),
          write_samples_at_end=False)
    return output


def test_init_from_a_latte_run_gives_its_forward(tmp_path, base_run):
    trainer = Trainer(config(tmp_path, f"model.init_from={base_run}", "model.hidden_size=16"), log=lambda *_: None)
    source = load_run(str(base_run)).model
    inputs = class_inputs(source)
    assert trainer.model_config.hidden_size == source.config.hidden_size == 64  # the source's architecture, not the run's model keys
    assert torch.equal(forward(trainer.model, inputs), forward(source, inputs))


def official_file(tmp_path, **options) -> Path:
    """A random model saved in the official layout ({"ema": state_dict}, keys as in ucf101.pt)."""
    options = {"in_channels": 1, "num_frames": 4, "input_size": 16, "num_classes": 10, **options}
    model = randomize(create_model("Latte-T/4", **options))
    path = tmp_path / "official.pt"
    torch.save({"ema": model.state_dict()}, path)
    return path


def test_init_from_an_official_checkpoint_gives_its_forward(tmp_path):
    path = official_file(tmp_path)
    logged = []
    trainer = Trainer(config(tmp_path / "run", f"model.init_from={path}"), log=logged.append)
    source = load_official_checkpoint(str(path))
    inputs = class_inputs(source)
    assert torch.equal(forward(trainer.model, inputs), forward(source, inputs))
    assert any("init from official checkpoint" in line and "copied all" in line for line in logged)


def test_a_source_that_does_not_fit_the_data_is_a_one_line_error_naming_the_key(tmp_path):
    path = official_file(tmp_path, num_frames=8)
    with pytest.raises(LatteError, match="num_frames=8.*data.num_frames gives 4") as err:
        Trainer(config(tmp_path / "run", f"model.init_from={path}"))
    assert "\n" not in str(err.value)
    with pytest.raises(LatteError, match="is a class/unconditional model, this run trains a text-to-video"):
        finetune.check_fits(load_official_checkpoint(str(path)).config, text_model_config(), str(path))


def test_lora_trains_only_adapters_keeps_the_base_bitwise_and_changes_the_output(base_run, lora_run):
    base_state = load_checkpoint(base_run)["ema"]
    state = load_checkpoint(lora_run)
    assert set(state["model"]) == set(state["ema"]) and all(".lora_" in k for k in state["model"])
    assert state["base"]["path"] == str(list_checkpoints(base_run)[-1].resolve())
    model = run_model(state, use_ema=False, merge=False)
    for name, tensor in model.state_dict().items():
        if ".lora_" not in name:
            assert torch.equal(tensor, base_state[name.replace(".base_layer", "")]), name
    base = load_run(str(base_run)).model
    inputs = class_inputs(base)
    assert not torch.allclose(forward(model, inputs), forward(base, inputs), atol=1e-4)
    # the adapters are all the optimizer saw
    assert len(state["optimizer"]["state"]) == len(state["model"])


def test_lora_checkpoint_is_much_smaller_than_the_base_checkpoint(base_run, lora_run):
    lora_size = list_checkpoints(lora_run)[-1].stat().st_size
    base_size = list_checkpoints(base_run)[-1].stat().st_size
    assert lora_size * 4 < base_size, (lora_size, base_size)


def test_lora_resume_is_exact(tmp_path, base_run, lora_run):
    overrides = [f"model.init_from={base_run}", "model.lora_rank=4", "optim.lr=3e-2"]
    train(config(tmp_path, "train.max_steps=2", *overrides), write_samples_at_end=False)
    train(config(tmp_path, "train.max_steps=4", *overrides), write_samples_at_end=False)
    a, b = load_checkpoint(lora_run), load_checkpoint(tmp_path)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for index, slot in a["optimizer"]["state"].items():
        assert torch.equal(slot["exp_avg_sq"], b["optimizer"]["state"][index]["exp_avg_sq"])


def test_merged_model_equals_the_adapted_model_and_sample_applies_the_adapters(tmp_path, lora_run, capsys):
    state = load_checkpoint(lora_run)
    adapted = run_model(state, use_ema=True, merge=False)
    inputs = class_inputs(adapted)
    expected = forward(adapted, inputs)
    sampled = load_run(str(lora_run)).model  # what `latte sample --checkpoint RUN` runs
    assert not any(".lora_" in k or "base_layer" in k for k in sampled.state_dict())
    torch.testing.assert_close(forward(sampled, inputs), expected, atol=1e-6, rtol=1e-5)
    merged = tmp_path / "merged.pt"
    assert main(["convert", "--from", "latte", "--to", "latte", str(lora_run), str(merged)]) == 2
    assert "pass --merge-lora" in capsys.readouterr().err and not merged.exists()
    assert main(["convert", "--from", "latte", "--to", "latte", "--merge-lora", str(lora_run), str(merged)]) == 0
    full = load_checkpoint(merged)
    assert "base" not in full and full["config"]["model"]["lora_rank"] is None
    torch.testing.assert_close(forward(load_run(str(merged)).model, inputs), expected, atol=1e-6, rtol=1e-5)
    assert main(["sample", "--checkpoint", str(lora_run), "--output", str(tmp_path / "s.png"), "--num-videos", "1",
                 "--steps", "2"]) == 0
    assert (tmp_path / "s.png").is_file()


def test_a_changed_base_is_refused(tmp_path, base_run):
    base = tmp_path / "base"
    train(config(base, "train.max_steps=2"), write_samples_at_end=False)
    run = tmp_path / "lora"
    overrides = [f"model.init_from={base}", "model.lora_rank=2"]
    train(config(run, "train.max_steps=2", *overrides), write_samples_at_end=False)
    path = list_checkpoints(base)[-1]
    state = load_checkpoint(path)
    state["ema"]["blocks.0.attn.qkv.weight"] += 1.0
    del state["path"]
    atomic_save(state, path)
    for attempt in (lambda: load_run(str(run)),
                    lambda: train(config(run, "train.max_steps=4", *overrides), write_samples_at_end=False)):
        with pytest.raises(LatteError, match="changed on disk") as err:
            attempt()
        assert "\n" not in str(err.value)


def test_temporal_only_training_leaves_every_spatial_and_shared_tensor_unchanged(tmp_path, base_run):
    train(config(tmp_path, f"model.init_from={base_run}", "model.trainable=temporal", "train.max_steps=2"),
          write_samples_at_end=False)
    before, after = load_checkpoint(base_run)["ema"], load_checkpoint(tmp_path)["model"]
    assert before.keys() == after.keys()
    kinds = {f"blocks.{i}.": b.kind for i, b in enumerate(load_run(str(base_run)).model.blocks)}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    temporal = {k for k in before if kinds.get(k[:len("blocks.0.")]) == "temporal"}
    assert changed and changed <= temporal  # only temporal-block tensors moved (some may keep a zero grad)
    assert any(".attn." in k for k in changed)


def test_temporal_parameters_of_each_variant():
    names = finetune.temporal_parameters(create_model("Latte-T/2", variant=3))
    assert names and all(".temporal_attn." in n for n in names)
    assert all(n.startswith(("blocks.1.", "blocks.3.")) for n in finetune.temporal_parameters(create_model("Latte-T/2")))
    with pytest.raises(LatteError, match="split heads"):
        finetune.temporal_parameters(create_model("Latte-T/2", variant=4))


def test_fine_tuning_config_errors_are_one_line(tmp_path):
    for overrides, needle in [(["model.trainable=lora"], "lora_rank"), (["model.trainable=spatial"], "trainable"),
                              (["model.lora_alpha=4"], "LoRA runs only"),
                              (["model.lora_rank=2", "model.trainable=temporal"], "implies"),
                              (["model.lora_rank=0"], ">= 1")]:
        with pytest.raises(LatteError, match=needle):
            config(tmp_path, *overrides)
    assert config(tmp_path, "model.lora_rank=2").model.trainable == "lora"
    with pytest.raises(LatteError, match="needs model.init_from"):
        Trainer(config(tmp_path, "model.lora_rank=2"))
    with pytest.raises(LatteError, match="no block has a linear layer 'attn.qkvv'"):
        Trainer(config(tmp_path, f"model.init_from={official_file(tmp_path)}", "model.lora_rank=2",
                       "model.lora_targets=attn.qkvv"))


# ----------------------------------------------------------------------------------------------
# Text models: a diffusers folder as the base, merged diffusers export, the adapter in peft's format


@pytest.fixture(scope="module")
def text_lora(tmp_path_factory):
    """A diffusers LatteTransformer3DModel folder (random weights, shaped for the tiny text run) and a
    LoRA run over it."""
    root = tmp_path_factory.mktemp("text")
    source = randomize(build_network(text_model_config().to_dict()), std=0.1)
    folder = export_diffusers_transformer(source, root / "base-diffusers")
    run = root / "lora"
    train(text_config(run, f"model.init_from={folder}", "model.lora_rank=4", "train.max_steps=2", "optim.lr=3e-2"),
          write_samples_at_end=False)
    return folder, run


def text_inputs(model, seed=0):
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c.in_channels, c.num_frames, *c.latent_hw, generator=gen)
    return x, torch.tensor([5, 600]), torch.randn(2, 8, c.caption_channels, generator=gen)


def test_init_from_a_diffusers_folder_gives_its_forward(tmp_path, text_lora):
    folder, _ = text_lora
    run = text_config(tmp_path, f"model.init_from={folder}")
    _, model, _ = finetune.build_model(run, text_model_config(), log=lambda *_: None)  # as the trainer calls it
    source = load_diffusers_transformer(folder)
    inputs = text_inputs(source)
    assert torch.equal(forward(model, inputs), forward(source, inputs))


def test_text_lora_exports_a_merged_diffusers_folder_and_a_peft_adapter(tmp_path, text_lora):
    from diffusers import LatteTransformer3DModel
    from peft import PeftModel

    folder, run = text_lora
    state = load_checkpoint(run)
    adapted = run_model(state, use_ema=True, merge=False)
    x, t, text = text_inputs(adapted)
    expected = forward(adapted, (x, t, text))
    assert not torch.allclose(expected, forward(load_diffusers_transformer(folder), (x, t, text)), atol=1e-4)
    out = tmp_path / "merged"
    assert main(["convert", "--from", "latte", "--to", "diffusers", "--merge-lora", str(run), str(out)]) == 0
    assert sorted(p.name for p in (tmp_path / "merged-lora").iterdir()) == ["adapter_config.json",
                                                                            "adapter_model.safetensors"]
    with torch.no_grad():
        merged = LatteTransformer3DModel.from_pretrained(out).eval()
        got = merged(x, t, text, return_dict=False)[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        with_adapter = PeftModel.from_pretrained(LatteTransformer3DModel.from_pretrained(folder), tmp_path / "merged-lora")
        got = with_adapter.eval()(x, t, text, return_dict=False)[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
