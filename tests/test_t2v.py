"""Text-to-video Latte: equality with diffusers' LatteTransformer3DModel in both directions, PixArt-alpha
initialisation, caption masks, any frame count, joint image frames, one-line errors."""
import json

import pytest
import torch
from diffusers import LatteTransformer3DModel, PixArtTransformer2DModel

from latte.errors import LatteError
from latte.models import (
    ModelConfig,
    create_model,
    export_diffusers_transformer,
    init_from_pixart,
    load_diffusers_transformer,
)
from latte.models.diffusers_interop import config_to_diffusers, to_diffusers_state_dict
from latte.train.parallelize import checkpoint_blocks

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=32, attention_bias=True, sample_size=8, patch_size=2, activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
            caption_channels=24)
CAPTION, TOKENS = 24, 5


def randomize(model, seed=0, std=0.1):
    """Non-zero values everywhere (fresh models have zero output layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def tiny(**options):
    return randomize(create_model("LatteT2V-T", **{"hidden_size": 32, "num_heads": 2, "caption_channels": CAPTION,
                                                   **options}))


def run(model, x, t, text=None, mask=None, **kwargs):
    """The text model's forward with captions and mask by keyword (y is the third positional input)."""
    return model(x, t, encoder_hidden_states=text, encoder_attention_mask=mask, **kwargs)


def inputs(frames=4, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, frames, size, size, generator=gen)
    t = torch.tensor([10, 700])
    text = torch.randn(2, TOKENS, CAPTION, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return x, t, text, mask


def diffusers_bias(mask, frames):
    """Our (B, L) mask as diffusers' Latte takes it: an additive (B*F, 1, L) bias (its forward does
    not convert 2-D masks, and spatial blocks see B*F sequences)."""
    return ((1 - mask.float()) * -10000.0).repeat_interleave(frames, dim=0)[:, None]


def run_diffusers(ref, x, t, text, mask=None, **kwargs):
    bias = None if mask is None else diffusers_bias(mask, x.shape[2])
    with torch.no_grad():
        return ref(x, t, text, encoder_attention_mask=bias, return_dict=False, **kwargs)[0]


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    torch.manual_seed(0)
    ref = randomize(LatteTransformer3DModel(**TINY, video_length=4), seed=1).eval()
    folder = tmp_path_factory.mktemp("latte_diffusers")
    ref.save_pretrained(folder)
    return folder, ref


@pytest.mark.parametrize("frames,masked", [(4, False), (4, True), (1, False), (1, True)])
def test_loaded_diffusers_model_gives_diffusers_outputs(diffusers_folder, frames, masked):
    folder, ref = diffusers_folder
    model = load_diffusers_transformer(folder)
    x, t, text, mask = inputs(frames)
    mask = mask if masked else None
    with torch.no_grad():
        ours = run(model, x, t, text, mask)
    theirs = run_diffusers(ref, x, t, text, mask)
    assert ours.shape == (2, 8, frames, 8, 8)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert theirs.abs().max() > 0.5  # a real comparison, not of zeros


def test_text_to_image_without_temporal_blocks_matches_diffusers(diffusers_folder):
    folder, ref = diffusers_folder
    model = load_diffusers_transformer(folder)
    x, t, text, mask = inputs(frames=1)
    with torch.no_grad():
        ours = run(model, x, t, text, mask, enable_temporal_attentions=False)
        with_temporal = run(model, x, t, text, mask)
    torch.testing.assert_close(ours, run_diffusers(ref, x, t, text, mask, enable_temporal_attentions=False),
                               atol=1e-5, rtol=1e-5)
    assert (ours - with_temporal).abs().max() > 1e-3  # length-1 temporal blocks are not the identity


@pytest.mark.parametrize("bias", [True, False])
def test_exported_model_loads_in_diffusers_with_equal_outputs(tmp_path, bias):
    model = tiny(attention_bias=bias).eval()
    folder = export_diffusers_transformer(model, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    ref = LatteTransformer3DModel.from_pretrained(folder).eval()
    x, t, text, mask = inputs()
    for m in (None, mask):
        with torch.no_grad():
            ours = run(model, x, t, text, m)
        torch.testing.assert_close(ours, run_diffusers(ref, x, t, text, m), atol=1e-5, rtol=1e-5)
    back = load_diffusers_transformer(folder)  # and the round trip is exact
    assert back.config == model.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_other_frame_counts_use_absolute_positions_for_that_length(tmp_path):
    model = tiny().eval()  # num_frames=4
    x, t, text, mask = inputs(frames=6)
    with torch.no_grad():
        ours = run(model, x, t, text, mask)
    # diffusers' table is fixed to video_length: the same weights exported with 6 frames are the reference
    six = ModelConfig.from_dict({**model.config.to_dict(), "num_frames": 6})
    model.config = six
    ref = LatteTransformer3DModel.from_pretrained(export_diffusers_transformer(model, tmp_path / "six")).eval()
    torch.testing.assert_close(ours, run_diffusers(ref, x, t, text, mask), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert run(model, x[:, :, :3], t, text, mask).shape == (2, 8, 3, 8, 8)


@pytest.mark.parametrize("sample_size,size", [(8, 12), (128, 8)])
def test_other_resolutions_use_pixart_normalised_positions_like_diffusers(tmp_path, sample_size, size):
    model = tiny(input_size=sample_size).eval()  # 128: interpolation scale 2, as PixArt-alpha 1024 px
    ref = LatteTransformer3DModel.from_pretrained(export_diffusers_transformer(model, tmp_path / "m")).eval()
    x, t, text, mask = inputs(size=size)
    with torch.no_grad():
        ours = run(model, x, t, text, mask)
    torch.testing.assert_close(ours, run_diffusers(ref, x, t, text, mask), atol=1e-5, rtol=1e-5)


def test_full_size_latte1_names_and_shapes_equal_diffusers():
    with torch.device("meta"):
        model = create_model("Latte-1")
        config = {k: v for k, v in config_to_diffusers(model.config).items() if not k.startswith("_")}
        ref = LatteTransformer3DModel(**config)
    ours = {k: v.shape for k, v in to_diffusers_state_dict(model.state_dict()).items()}
    assert ours == {k: v.shape for k, v in ref.state_dict().items()}
    assert model.num_parameters() == sum(p.numel() for p in ref.parameters()) == 1_057_246_880


@pytest.mark.parametrize("pooled", [False, True])
def test_padded_caption_tokens_only_matter_through_the_mask(pooled):
    model = tiny(pooled_text=pooled).eval()
    x, t, text, mask = inputs()
    with torch.no_grad():
        base = run(model, x, t, text, mask)
        padded = text.clone()
        padded[0, 3:] = torch.randn(2, CAPTION) * 5  # tokens masked out for clip 0
        torch.testing.assert_close(run(model, x, t, padded, mask), base, atol=1e-6, rtol=0)
        assert (run(model, x, t, padded, None)[0] - base[0]).abs().max() > 1e-3  # without the mask they count
        kept = text.clone()
        kept[0, 1] += 1.0  # a kept token
        assert (run(model, x, t, kept, mask)[0] - base[0]).abs().max() > 1e-3
        torch.testing.assert_close(run(model, x, t, text, torch.ones_like(mask)), run(model, x, t, text), atol=1e-6, rtol=0)


def test_fresh_model_outputs_exactly_zero_and_config_round_trips():
    model = create_model("LatteT2V-T")
    x = torch.randn(1, 4, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(run(model, x, torch.tensor([3]), torch.randn(1, 3, 32)), torch.zeros(1, 8, 2, 8, 8))
    assert ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config
    assert model.config.learn_sigma and model.config.out_channels == 8


@pytest.mark.parametrize("pooled", [False, True])
def test_joint_image_frames_skip_temporal_blocks_and_take_their_own_captions(pooled):
    model = tiny(temporal_pos="rope", pooled_text=pooled).eval()
    x, t, text, mask = inputs(frames=5)  # 3 video frames + 2 images
    captions = torch.randn(2, 3, TOKENS, CAPTION)  # video caption, then one per image
    with torch.no_grad():
        out = run(model, x, t, captions, mask, num_images=2)
        changed = x.clone()
        changed[:, :, :3] += 1.0  # the video part only
        out2 = run(model, changed, t, captions, mask, num_images=2)
        torch.testing.assert_close(out2[:, :, 3:], out[:, :, 3:], atol=1e-6, rtol=0)
        assert (out2[:, :, :3] - out[:, :, :3]).abs().max() > 1e-3
        alone = run(model, x[:, :, 3:4], t, captions[:, 1], mask, enable_temporal_attentions=False)  # image 0 by itself
        torch.testing.assert_close(out[:, :, 3:4], alone, atol=1e-5, rtol=1e-5)
        shared = run(model, x, t, captions[:, 0], mask, num_images=2)  # one caption for all frames
        assert (shared[:, :, 3:] - out[:, :, 3:]).abs().max() > 1e-3
        torch.testing.assert_close(shared[:, :, :3], out[:, :, :3], atol=1e-5, rtol=1e-5)


def test_pooled_text_adds_the_mean_caption_feature_to_the_timestep_embedding():
    """pooled_text: the mean of the kept caption features, projected, joins t_emb before t_block and the
    final layer (SD3's pooled path); the model has the projection only when asked, and diffusers'
    LatteTransformer3DModel (which has no such path) is refused in one line."""
    x, t, text, mask = inputs()
    plain, pooled = tiny(), tiny(pooled_text=True)
    assert not any("pooled" in name for name in plain.state_dict())
    assert {n for n in pooled.state_dict() if "pooled" in n} == {f"pooled_projection.fc{i}.{w}" for i in (1, 2)
                                                                 for w in ("weight", "bias")}
    seen = {}
    pooled.t_block.register_forward_pre_hook(lambda module, args: seen.setdefault("t_emb", args[0]))
    with torch.no_grad():
        run(pooled.eval(), x, t, text, mask)
        t_emb = pooled.t_embedder(t)[:, None]  # (B, 1, D): one time per clip
        kept = mask[..., None].float()
        mean = (text * kept).sum(1) / kept.sum(1)  # (B, C) over the kept tokens only
        torch.testing.assert_close(seen["t_emb"], t_emb + pooled.pooled_projection(mean)[:, None], atol=1e-6, rtol=0)
    with pytest.raises(LatteError, match="pooled_text needs a text-to-video model"):
        create_model("Latte-T/2", pooled_text=True)
    with pytest.raises(LatteError, match="no pooled caption path"):
        config_to_diffusers(pooled.config)


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, text, mask = inputs()
    grads = []
    for flag in (False, True):
        model = tiny().train()
        if flag:  # applied from outside the model, as training does
            checkpoint_blocks(model)
        run(model, x, t, text, mask).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def pixart_folder(tmp_path_factory):
    torch.manual_seed(0)
    ref = randomize(PixArtTransformer2DModel(**TINY), seed=2).eval()
    folder = tmp_path_factory.mktemp("pixart")
    ref.save_pretrained(folder)
    return folder, ref


def test_init_from_pixart_copies_spatial_parts_and_keeps_temporal_blocks(pixart_folder):
    folder, ref = pixart_folder
    model = create_model("LatteT2V-T", hidden_size=32, num_heads=2, caption_channels=CAPTION).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_pixart(model, folder)
    copied = set(report.copied)
    temporal = tuple(f"blocks.{i}." for i, b in enumerate(model.blocks) if b.kind == "temporal")
    assert temporal == ("blocks.1.", "blocks.3.")
    assert {k for k in before if not k.startswith(temporal)} == copied  # all of the rest
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items() if k.startswith(temporal))
    assert any(k.startswith(temporal) for k in report.not_in_source)
    assert report.unused == [] and not report.shape_mismatch
    # spatial blocks alone (1 frame, no temporal blocks) are PixArt-alpha itself
    x, t, text, mask = inputs(frames=1)
    with torch.no_grad():
        ours = run(model, x, t, text, mask, enable_temporal_attentions=False)[:, :, 0]
        theirs = ref(x[:, :, 0], encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask,
                     return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_init_from_pixart_keeps_a_final_layer_of_other_shape_and_reports_extra_blocks(pixart_folder):
    folder, _ = pixart_folder
    model = create_model("LatteT2V-T", hidden_size=32, num_heads=2, caption_channels=CAPTION, learn_sigma=False,
                         depth=2)
    report = init_from_pixart(model, folder)
    assert report.shape_mismatch == ["final_layer.linear.weight", "final_layer.linear.bias"]
    assert report.unused and all(k.startswith("transformer_blocks.1.") for k in report.unused)  # PixArt's 2nd block
    assert "final_layer.scale_shift_table" in report.copied


def one_line_error(fn, *args, match):
    with pytest.raises(LatteError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)


def test_wrong_folders_and_models_give_one_line_errors(tmp_path, diffusers_folder, pixart_folder):
    one_line_error(load_diffusers_transformer, tmp_path / "absent", match="not found")
    one_line_error(load_diffusers_transformer, tmp_path, match="no config.json")
    one_line_error(load_diffusers_transformer, pixart_folder[0], match="init_from_pixart")
    one_line_error(init_from_pixart, tiny(), diffusers_folder[0], match="load_diffusers_transformer")
    one_line_error(init_from_pixart, tiny(hidden_size=64, num_heads=4), pixart_folder[0], match="share no block")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((diffusers_folder[0] / "config.json").read_text())
    one_line_error(load_diffusers_transformer, bad, match="no weights")
    (bad / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    one_line_error(load_diffusers_transformer, bad, match="cannot read weights")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "norm_type": "ada_norm_zero"}))
    one_line_error(load_diffusers_transformer, bad, match="norm_type")
    (bad / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    (bad / "diffusion_pytorch_model.safetensors").write_bytes(
        (diffusers_folder[0] / "diffusion_pytorch_model.safetensors").read_bytes())
    one_line_error(load_diffusers_transformer, bad, match="do not match")
    one_line_error(export_diffusers_transformer, tiny(temporal_pos="rope"), tmp_path / "rope", match="absolute")
    one_line_error(ModelConfig.from_dict, {"hidden": 3}, match="unknown")
    x, t, text, _ = inputs()
    one_line_error(run, tiny(), x, t, text[..., :8], match="encoder_hidden_states")
    one_line_error(run, tiny(), x, t, text, torch.ones(2, 3, TOKENS), match="encoder_attention_mask")


def test_convert_cli_round_trips_a_diffusers_folder(tmp_path):
    from latte.cli import main
    from latte.models import create_model, export_diffusers_transformer, load_diffusers_transformer

    model = create_model("LatteT2V-T")
    export_diffusers_transformer(model, tmp_path / "in")
    assert main(["convert", "--from", "diffusers", "--to", "diffusers", str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    again = load_diffusers_transformer(tmp_path / "out")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert main(["convert", "--from", "diffusers", "--to", "latte", str(tmp_path / "in"), str(tmp_path / "x.pt")]) == 2


def test_a_text_checkpoint_written_before_the_backbones_were_one_still_loads(tmp_path):
    """Text runs saved `spatial_blocks.i` / `temporal_blocks.i` and a T2VConfig (num_layers, sample_size,
    out_channels); they load into the one backbone with equal outputs."""
    from latte.checkpoint_files import load_checkpoint
    from latte.models import build_model

    model = tiny().eval()
    legacy = {}
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            index, rest = key[len("blocks."):].split(".", 1)
            key = f"{('spatial_blocks', 'temporal_blocks')[int(index) % 2]}.{int(index) // 2}.{rest}"
        legacy[key] = value
    c = model.config.to_dict()
    old_config = {k: c[k] for k in ("hidden_size", "num_heads", "patch_size", "in_channels", "caption_channels",
                                     "num_frames", "temporal_pos", "norm_eps", "attention_bias")}
    old_config.update(num_layers=c["depth"] // 2, sample_size=c["input_size"], out_channels=8, grad_checkpointing=False)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": legacy, "ema": legacy, "config": {}, "model_config": old_config, "step": 1},
               tmp_path / "checkpoints" / "step_0000001.pt")
    state = load_checkpoint(tmp_path)
    again = build_model(state["model_config"])
    again.load_state_dict(state["ema"])
    x, t, text, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(run(again.eval(), x, t, text, mask), run(model, x, t, text, mask), rtol=0, atol=0)


@pytest.mark.parametrize("variant,patch_embed", [(2, "frame"), (3, "frame"), (4, "frame"), (1, "tubelet")])
def test_text_models_take_every_variant_and_token_extraction(variant, patch_embed):
    """One backbone: caption cross-attention joins whichever blocks attend over space."""
    model = tiny(variant=variant, patch_embed=patch_embed).eval()
    x, t, text, mask = inputs()
    with torch.no_grad():
        out = run(model, x, t, text, mask)
        other = text.clone()
        other[:, 0] += 1.0
        assert out.shape == (2, 8, 4, 8, 8) and (run(model, x, t, other, mask) - out).abs().max() > 1e-3
    crossing = [b.kind for b in model.blocks if hasattr(b, "cross_attn")]
    assert crossing and "temporal" not in crossing
    with pytest.raises(LatteError, match="variant 1 with frame patches"):
        config_to_diffusers(model.config)
