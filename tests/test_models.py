import itertools
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from official_reference import official_forward

from latte.errors import LatteError
from latte.models import build_model, create_model, forward_flops, init_from_dit, load_official_checkpoint, model_config
from latte.models.blocks import LatteBlock
from latte.models.conditioning import AdaLNContext
from latte.models.layers import Attention, rope_table, sincos_1d, sincos_2d
from latte.train.parallelize import checkpoint_blocks

OPTIONS = list(itertools.product((1, 2, 3, 4), ("frame", "tubelet"), ("adaln", "tokens"), ("absolute", "rope")))


def tiny(**options):
    base = dict(num_frames=4, input_size=8, num_classes=3)
    base.update(options)
    return create_model("Latte-T/2", **base)


def randomize(model, seed=0, std=0.1):
    """Give every parameter non-zero values (fresh models have zero-initialised output layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def inputs(batch=2, frames=4, size=8, channels=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, size, size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    y = torch.randint(0, 3, (batch,), generator=gen)
    return x, t, y


@pytest.mark.parametrize("variant,patch_embed,conditioning,temporal_pos", OPTIONS)
def test_every_option_combination_runs_with_the_right_shape(variant, patch_embed, conditioning, temporal_pos):
    model = randomize(tiny(variant=variant, patch_embed=patch_embed, conditioning=conditioning, temporal_pos=temporal_pos))
    x, t, y = inputs()
    out = model(x, t, y)
    assert out.shape == (2, 8, 4, 8, 8)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("learn_sigma,num_classes", [(False, 0), (True, 0), (False, 3)])
def test_output_channels_and_unconditional(learn_sigma, num_classes):
    model = randomize(tiny(learn_sigma=learn_sigma, num_classes=num_classes))
    x, t, y = inputs()
    out = model(x, t, y if num_classes else None)
    assert out.shape[1] == (8 if learn_sigma else 4)


@pytest.mark.parametrize("name,expected", [("Latte-S/2", 32_480_672), ("Latte-B/2", 129_547_040),
                                           ("Latte-L/2", 456_815_648), ("Latte-XL/2", 673_681_568)])
def test_parameter_counts_equal_the_paper(name, expected):
    with torch.device("meta"):
        model = create_model(name)
    assert model.num_parameters() == expected
    assert model.num_parameters(trainable_only=False) == expected  # position tables are buffers


def test_class_conditional_xl_parameter_count_and_official_key_count():
    with torch.device("meta"):
        model = create_model("Latte-XL/2", num_classes=101)
        uncond = create_model("Latte-XL/2")
    assert model.num_parameters() == 673_799_072
    assert len(uncond.state_dict()) == 292 and len(model.state_dict()) == 293
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["pos_embed"] == (1, 256, 1152) and shapes["temp_embed"] == (1, 16, 1152)
    assert shapes["blocks.27.adaLN_modulation.1.weight"] == (6912, 1152)
    assert shapes["final_layer.linear.weight"] == (32, 1152)
    assert shapes["y_embedder.embedding_table.weight"] == (102, 1152)


@pytest.mark.parametrize("variant,patch_embed,conditioning,temporal_pos", OPTIONS[::3])
def test_fresh_model_outputs_exactly_zero(variant, patch_embed, conditioning, temporal_pos):
    model = tiny(variant=variant, patch_embed=patch_embed, conditioning=conditioning, temporal_pos=temporal_pos)
    x, t, y = inputs()
    assert torch.equal(model(x, t, y), torch.zeros(2, 8, 4, 8, 8))


def test_sincos_tables_follow_the_official_formula():
    dim, h, w = 8, 3, 5
    table = sincos_2d(dim, h, w)
    k = 2 * w + 3  # row 2, column 3
    omega = 1 / 10000 ** (np.arange(2) / 2)
    expected = np.concatenate([np.sin(3 * omega), np.cos(3 * omega), np.sin(2 * omega), np.cos(2 * omega)])
    np.testing.assert_allclose(table[k], expected)
    temporal = sincos_1d(dim, np.arange(16))
    omega = 1 / 10000 ** (np.arange(4) / 4)
    np.testing.assert_allclose(temporal[7], np.concatenate([np.sin(7 * omega), np.cos(7 * omega)]))


@pytest.mark.parametrize("num_classes,learn_sigma", [(0, True), (5, True), (5, False)])
def test_official_checkpoint_loads_strictly_and_matches_the_official_forward(tmp_path, num_classes, learn_sigma):
    source = randomize(create_model("Latte-T/2", num_frames=4, input_size=8, num_classes=num_classes,
                                    learn_sigma=learn_sigma), seed=1)
    source.pos_embed.copy_(sincos_2d(64, 4, 4).float()[None])
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}  # DDP-prefixed, as in the wild
    path = tmp_path / "ffs_t_2.pt"
    torch.save({"ema": state, "model": {"junk": torch.zeros(1)}}, path)
    model = load_official_checkpoint(str(path))
    config = model.config
    assert (config.hidden_size, config.depth, config.patch_size, config.num_frames, config.num_classes,
            config.learn_sigma, config.latent_hw) == (64, 4, 2, 4, num_classes, learn_sigma, (8, 8))
    x, t, y = inputs(seed=3)
    y = y if num_classes else None
    ours = model(x, t, y)
    sd = {k[len("module."):]: v for k, v in state.items()}
    reference = official_forward(sd, x.transpose(1, 2), t, y, heads=4, patch=2, out_channels=config.out_channels)
    torch.testing.assert_close(ours, reference.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_loader_refuses_other_models_with_one_line_errors(tmp_path):
    dit = create_model("Latte-T/2", num_frames=4, input_size=8).state_dict()
    dit.pop("temp_embed")
    dit["y_embedder.embedding_table.weight"] = torch.zeros(1001, 64)
    cases = {"dit.pt": dit, "other.pt": {"encoder.weight": torch.zeros(3)}}
    for name, state in cases.items():
        torch.save(state, tmp_path / name)
        with pytest.raises(LatteError) as err:
            load_official_checkpoint(str(tmp_path / name))
        assert "\n" not in str(err.value)
    (tmp_path / "corrupt.pt").write_bytes(b"not a pickle")
    with pytest.raises(LatteError, match="cannot read"):
        load_official_checkpoint(str(tmp_path / "corrupt.pt"))
    with pytest.raises(LatteError, match="not found"):
        load_official_checkpoint(str(tmp_path / "missing.pt"))


def test_init_from_dit_copies_matching_tensors_and_reports_the_rest(tmp_path):
    dit_like = randomize(create_model("Latte-T/2", num_frames=4, input_size=8, num_classes=9), seed=5)
    state = {k: v for k, v in dit_like.state_dict().items() if k != "temp_embed"}  # DiT: 1000+1 classes, no temp
    torch.save(state, tmp_path / "DiT-T-2.pt")
    model = tiny()
    report = init_from_dit(model, str(tmp_path / "DiT-T-2.pt"))
    assert "y_embedder.embedding_table.weight" in report.shape_mismatch
    assert "temp_embed" in report.not_in_source
    assert torch.equal(model.blocks[1].attn.qkv.weight, dit_like.blocks[1].attn.qkv.weight)
    assert len(report.copied) == len(model.state_dict()) - 2
    assert "copied" in report.summary()


def _block_ctx(batch, frames, dim=64, video_frames=None, rope=None):
    gen = torch.Generator().manual_seed(7)
    frames_c = torch.randn(batch, frames, dim, generator=gen)
    return AdaLNContext(video_frames or frames, rope, frames=frames_c)


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_spatial_blocks_never_mix_frames_and_temporal_blocks_never_mix_positions(kind):
    block = randomize(LatteBlock(kind, 64, 4, 4.0, "adaln"))
    x = torch.randn(2, 5, 6, 64)  # (B, F, N, D)
    ctx = _block_ctx(2, 5)
    ctx.frames = ctx.frames[:, :1].expand(-1, 5, -1)  # one condition per clip
    x2 = x.clone()
    x2[:, 2, 3] += 1.0  # perturb frame 2 at position 3
    changed = (block(x2, ctx) - block(x, ctx)).abs().sum(dim=(0, 3)) > 1e-6  # (F, N)
    expected = torch.zeros(5, 6, dtype=torch.bool)
    if kind == "spatial":
        expected[2, :] = True
    else:
        expected[:, 3] = True
    assert torch.equal(changed, expected)


def test_rope_attention_is_relative():
    attn = randomize(Attention(64, 4))
    x = torch.randn(3, 6, 64)
    base = attn(x, rope=rope_table(torch.arange(6), 16))
    shifted = attn(x, rope=rope_table(torch.arange(6) + 11, 16))
    plain = attn(x)
    torch.testing.assert_close(base, shifted, rtol=1e-5, atol=1e-5)
    assert (base - plain).abs().max() > 1e-3


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
@pytest.mark.parametrize("conditioning", ["adaln", "tokens"])
def test_extra_image_frames_never_reach_temporal_modules(variant, conditioning):
    model = randomize(tiny(variant=variant, conditioning=conditioning)).eval()
    x, t, _ = inputs(frames=6)  # 4 video frames + 2 image frames
    y = torch.tensor([[0, 1, 2], [2, 2, 1]])  # video label, then one label per image frame
    out = model(x, t, y, num_images=2)
    x2 = x.clone()
    x2[:, :, 4] += 1.0  # perturb the first image frame
    diff = (model(x2, t, y, num_images=2) - out).abs().sum(dim=(0, 1, 3, 4))  # (F,)
    assert diff[4] > 0 and torch.all(diff[[0, 1, 2, 3, 5]] == 0)
    x3 = x.clone()
    x3[:, :, 0] += 1.0  # perturbing a video frame leaves the images alone
    diff = (model(x3, t, y, num_images=2) - out).abs().sum(dim=(0, 1, 3, 4))
    assert torch.all(diff[4:] == 0) and diff[1] > 0


@pytest.mark.parametrize("variant,patch_embed,conditioning,temporal_pos", OPTIONS[::5])
def test_gradient_reaches_every_trainable_parameter(variant, patch_embed, conditioning, temporal_pos):
    model = randomize(tiny(variant=variant, patch_embed=patch_embed, conditioning=conditioning,
                           temporal_pos=temporal_pos, class_dropout=0.0))
    x, t, y = inputs()
    model(x, t, y).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_activation_checkpointing_gives_the_same_gradients():
    results = []
    for flag in (False, True):
        model = randomize(tiny(class_dropout=0.0))
        if flag:  # applied from outside the model, as training does
            checkpoint_blocks(model)
        x, t, y = inputs()
        model(x, t, y).square().mean().backward()
        results.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1])


def test_inference_path_equals_the_autograd_path():
    """Without autograd the MLP's GELU runs in place; the numbers must not change."""
    model = randomize(tiny()).eval()
    x, t, y = inputs()
    with torch.no_grad():
        fast = model(x, t, y)
    torch.testing.assert_close(fast, model(x, t, y).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("temporal_pos", ["absolute", "rope"])
def test_other_frame_counts_and_resolutions_run(temporal_pos):
    model = randomize(tiny(temporal_pos=temporal_pos))
    for frames, height, width in [(7, 8, 8), (4, 12, 16), (1, 8, 8), (16, 6, 10)]:
        x = torch.randn(1, 4, frames, height, width)
        assert model(x, torch.tensor([10]), torch.tensor([1])).shape == (1, 8, frames, height, width)


def test_label_dropout_uses_the_null_class_in_training_only():
    model = randomize(tiny(class_dropout=0.999999)).train()
    x, t, y = inputs()
    torch.manual_seed(0)
    dropped = model(x, t, y)
    null = model.eval()(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(dropped, null)
    assert (model(x, t, y) - null).abs().max() > 1e-4


def test_bad_options_and_inputs_are_one_line_errors():
    for options in [dict(variant=5), dict(patch_embed="cube"), dict(conditioning="film"), dict(temporal_pos="alibi"),
                    dict(depth=3), dict(colour=1)]:
        with pytest.raises(LatteError) as err:
            model_config("Latte-T/2", **options)
        assert "\n" not in str(err.value)
    with pytest.raises(LatteError, match="unknown model"):
        create_model("Latte-XXL/2")
    model = tiny(patch_embed="tubelet")
    with pytest.raises(LatteError, match="divisible"):
        model(torch.randn(1, 4, 5, 8, 8), torch.tensor([1]))
    with pytest.raises(LatteError, match="input channels"):
        model(torch.randn(1, 3, 4, 8, 8), torch.tensor([1]))


def test_a_model_config_stored_with_grad_checkpointing_still_loads(tmp_path):
    """Checkpoints written before issue 28 stored the training switch grad_checkpointing in their
    model_config; it is ignored on load (the run config's model.grad_checkpointing is the switch)."""
    model = randomize(tiny()).eval()
    old = dict(model.config.to_dict(), grad_checkpointing=True)
    torch.save({"model_config": old, "ema": model.state_dict()}, tmp_path / "old.pt")
    state = torch.load(tmp_path / "old.pt")
    again = build_model(state["model_config"]).eval()
    again.load_state_dict(state["ema"])
    assert again.config == model.config and "grad_checkpointing" not in again.config.to_dict()
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, y), model(x, t, y), rtol=0, atol=0)
    with pytest.raises(LatteError, match="unknown model option"):  # other unknown keys stay errors
        build_model(dict(old, colour=1))


def test_flops_scale_with_the_variant_design():
    flops = {v: forward_flops(tiny(variant=v)) for v in (1, 2, 3, 4)}
    assert flops[1] == pytest.approx(flops[2], rel=0.01)
    assert flops[3] < flops[1]
    half = forward_flops(tiny(), frames=2)
    assert half < flops[1] * 0.6


REFERENCE = Path(__file__).parent / "data" / "reference_outputs.pt"


def randomize_by_name(model, seed=0, std=0.1):
    """Weights drawn per parameter name, so the values do not depend on the order modules are built in."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


@pytest.mark.parametrize("variant,patch_embed,conditioning,temporal_pos", OPTIONS)
def test_every_option_combination_gives_its_stored_reference_output(variant, patch_embed, conditioning, temporal_pos):
    """Outputs stored by tests/data/make_reference_outputs.py from the model as it was verified against
    the official code (commit b1de790), for every variant, token extraction, conditioning and
    temporal position, with and without joint image frames."""
    stored = torch.load(REFERENCE)
    inputs_, key = stored["inputs"], f"{variant}-{patch_embed}-{conditioning}-{temporal_pos}"
    model = randomize_by_name(tiny(variant=variant, patch_embed=patch_embed, conditioning=conditioning,
                                   temporal_pos=temporal_pos)).eval()
    with torch.no_grad():
        out = model(inputs_["x"], inputs_["t"], inputs_["y"])
        torch.testing.assert_close(out, stored["outputs"][key], rtol=1e-5, atol=1e-5)
        if patch_embed == "frame":
            joint = model(inputs_["x_joint"], inputs_["t"], inputs_["y_joint"], num_images=2)
            torch.testing.assert_close(joint, stored["outputs"][key + "-joint"], rtol=1e-5, atol=1e-5)
