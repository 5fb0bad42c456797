"""Per-frame conditioning (issue 28): the model takes one time per frame, one time per clip being a
broadcast of it, for every conditioning kind, variant and token extraction."""
import dataclasses
from pathlib import Path

import pytest
import torch
from test_models import randomize_by_name  # the weights the stored outputs were made with

from latte.errors import LatteError
from latte.models import create_model
from latte.models.blocks import LatteBlock
from latte.models.conditioning import AdaLNContext, SingleContext, TokenContext
from latte.models.latte import FinalLayer
from latte.models.layers import Attention

KINDS = ("adaln", "tokens", "adaln-single")
REFERENCE = Path(__file__).parent / "data" / "reference_outputs.pt"


def randomize(model, seed=0, std=0.1):
    """Non-zero values everywhere (fresh models have zero-initialised output layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()




def model_and_condition(kind: str, variant: int = 1, **options):
    """A tiny model of `kind` and its condition by keyword: class labels, or captions for the text model."""
    gen = torch.Generator().manual_seed(1)
    if kind == "adaln-single":
        model = create_model("LatteT2V-T", hidden_size=32, num_heads=2, caption_channels=8, variant=variant, **options)
        return randomize(model), {"encoder_hidden_states": torch.randn(2, 5, 8, generator=gen)}
    model = create_model("Latte-T/2", num_frames=4, input_size=8, num_classes=3, conditioning=kind, variant=variant,
                         **options)
    return randomize(model), {"y": torch.tensor([0, 2])}


def clip(frames=4, seed=0):
    return torch.randn(2, 4, frames, 8, 8, generator=torch.Generator().manual_seed(seed))


def frame_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(F,) largest change of each output frame."""
    return (a - b).abs().amax(dim=(0, 1, 3, 4))


@pytest.mark.parametrize("patch_embed", ["frame", "tubelet"])
@pytest.mark.parametrize("conditioning", ["adaln", "tokens"])
@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_one_time_per_clip_as_b_or_broadcast_to_b_f_gives_the_stored_outputs(variant, conditioning, patch_embed):
    """The stored outputs of test_models (per-clip t, from the code before per-frame time) hold for t
    given as (B,), broadcast to (B, F) (embedded once per clip), and as the same values written out on
    every frame (the per-frame path)."""
    stored = torch.load(REFERENCE)
    i = stored["inputs"]
    key = f"{variant}-{patch_embed}-{conditioning}-rope"
    model = create_model("Latte-T/2", num_frames=4, input_size=8, num_classes=3, variant=variant,
                         patch_embed=patch_embed, conditioning=conditioning, temporal_pos="rope")
    model = randomize_by_name(model).eval()
    with torch.no_grad():
        per_frame = i["t"][:, None].repeat(1, i["x"].shape[2])  # the same values, not a broadcast: per-frame path
        for t in (i["t"], i["t"][:, None].expand(-1, i["x"].shape[2]), i["t"][0], per_frame):
            torch.testing.assert_close(model(i["x"], t, i["y"]), stored["outputs"][key], rtol=1e-5, atol=1e-5)
        if patch_embed == "frame":  # joint image frames: a time for each of the 4 video and 2 image frames
            t = i["t"][:, None].expand(-1, 6)
            joint = model(i["x_joint"], t, i["y_joint"], num_images=2)
            torch.testing.assert_close(joint, stored["outputs"][key + "-joint"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_times_per_frame_act_per_frame(kind, variant):
    """Times that differ across frames give an output no per-clip time gives, and changing the time of
    frame k changes frame k's output and, through temporal mixing, the other frames'."""
    model, cond = model_and_condition(kind, variant)
    x = clip()
    t = torch.tensor([[100, 400, 700, 900], [50, 50, 800, 300]])
    with torch.no_grad():
        out = model(x, t, **cond)
        for column in range(4):  # each clip's own times, one per clip
            per_clip = model(x, t[:, column], **cond)
            assert (out - per_clip).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4
        for k in range(4):
            later = t.clone()
            later[:, k] += 137
            change = frame_change(model(x, later, **cond), out)
            assert change[k] > 1e-4, (k, change)
            assert (change[torch.arange(4) != k] > 0).any()  # time mixes across frames


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_without_temporal_mixing_a_frames_time_changes_only_that_frame(kind, variant):
    model, cond = model_and_condition(kind, variant)
    x, t = clip(), torch.tensor([[100, 400, 700, 900], [50, 50, 800, 300]])
    with torch.no_grad():
        out = model(x, t, enable_temporal_attentions=False, **cond)
        for k in range(4):
            later = t.clone()
            later[:, k] = 999 - later[:, k]
            change = frame_change(model(x, later, enable_temporal_attentions=False, **cond), out)
            assert change[k] > 1e-4 and torch.all(change[torch.arange(4) != k] == 0), (k, change)


@pytest.mark.parametrize("kind", ["adaln", "tokens"])
def test_an_image_frames_time_reaches_only_that_image(kind):
    """Joint image frames take their own times and never reach temporal modules."""
    model, _ = model_and_condition(kind, 1)
    x, y = clip(frames=6), torch.tensor([[0, 1, 2], [2, 2, 1]])
    t = torch.tensor([[10, 10, 10, 10, 300, 600], [20, 20, 20, 20, 900, 5]])
    with torch.no_grad():
        out = model(x, t, y, num_images=2)
        image = t.clone()
        image[:, 4] += 50
        change = frame_change(model(x, image, y, num_images=2), out)
        assert change[4] > 0 and torch.all(change[[0, 1, 2, 3, 5]] == 0)
        video = t.clone()
        video[:, 0] += 50
        change = frame_change(model(x, video, y, num_images=2), out)
        assert torch.all(change[4:] == 0) and change[:4].min() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_tubelet_token_takes_the_time_of_its_first_frame(kind):
    model, cond = model_and_condition(kind, 1, patch_embed="tubelet", tubelet_frames=2)
    x = clip()
    with torch.no_grad():
        out = model(x, torch.tensor([[100, 200, 700, 800], [5, 6, 300, 400]]), **cond)
        firsts = model(x, torch.tensor([[100, 100, 700, 700], [5, 5, 300, 300]]), **cond)
        seconds = model(x, torch.tensor([[200, 200, 800, 800], [6, 6, 400, 400]]), **cond)
    torch.testing.assert_close(out, firsts, rtol=0, atol=0)
    assert (out - seconds).abs().max() > 1e-4


def test_token_conditioning_shows_each_temporal_query_its_own_frames_tokens():
    """In a temporal sequence, frame f's query attends to frame f's condition tokens and every frame:
    the same as attention over [frame f's tokens, frames] (and, with one time per clip, as the clip's
    tokens in front of each sequence)."""
    gen = torch.Generator().manual_seed(0)
    attn = randomize(Attention(32, 2))
    batch, frames, n, k = 2, 5, 3, 2
    tokens = torch.randn(batch, frames, k, 32, generator=gen)
    seq = torch.randn(batch * n, frames, 32, generator=gen)  # (B*N, Fv, D): N positions of each clip
    ctx = TokenContext(frames, None, tokens=tokens)
    with torch.no_grad():
        out = attn(seq, extra=ctx.temporal_tokens, mask=ctx.temporal_mask)  # (B*N, Fv, D)
        for f in range(frames):
            own = tokens[:, f].repeat_interleave(n, dim=0)  # (B*N, K, D)
            expected = attn(torch.cat([own, seq], dim=1))[:, k + f]
            torch.testing.assert_close(out[:, f], expected, rtol=1e-5, atol=1e-6)
        shared = TokenContext(frames, None, tokens=tokens[:, :1].expand(-1, frames, -1, -1))
        out = attn(seq, extra=shared.temporal_tokens, mask=shared.temporal_mask)
        expected = attn(torch.cat([tokens[:, 0].repeat_interleave(n, dim=0), seq], dim=1))[:, k:]
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_times_of_another_shape_are_a_one_line_error():
    model, cond = model_and_condition("adaln")
    for t in (torch.zeros(2, 5), torch.zeros(3), torch.zeros(2, 4, 1)):
        with pytest.raises(LatteError, match="timesteps must be") as err:
            model(clip(), t, **cond)
        assert "\n" not in str(err.value)


def block_context(conditioning: str, batch=2, frames=4, dim=32, seed=0):
    """A per-frame context of each kind with random values, and a function giving it again with frame
    k's condition changed."""
    gen = torch.Generator().manual_seed(seed)
    if conditioning == "adaln":
        ctx = AdaLNContext(frames, None, frames=torch.randn(batch, frames, dim, generator=gen))
        field = "frames"
    elif conditioning == "tokens":
        ctx = TokenContext(frames, None, tokens=torch.randn(batch, frames, 2, dim, generator=gen))
        field = "tokens"
    else:
        ctx = SingleContext(frames, None, shared=torch.randn(batch, frames, 6 * dim, generator=gen),
                            t_emb=torch.randn(batch, frames, dim, generator=gen),
                            text=torch.randn(batch, 1, 5, dim, generator=gen), text_bias=None)
        field = "shared"

    def with_frame_changed(k: int):
        value = getattr(ctx, field).clone()
        value[:, k] += 1.0
        return dataclasses.replace(ctx, **{field: value})

    return ctx, with_frame_changed


@pytest.mark.parametrize("block_kind", ["spatial", "temporal", "factorised", "split"])
@pytest.mark.parametrize("conditioning", KINDS)
def test_every_block_kind_reads_each_frames_own_condition(conditioning, block_kind):
    """Changing frame k's condition changes frame k's output in every kind of block; a spatial block
    leaves the other frames exactly as they were."""
    block = randomize(LatteBlock(block_kind, 32, 2, 4.0, conditioning,
                                 cross_attention=conditioning == "adaln-single" and block_kind != "temporal"))
    ctx, with_frame_changed = block_context(conditioning)
    x = torch.randn(2, 4, 6, 32, generator=torch.Generator().manual_seed(3))  # (B, F, N, D)
    with torch.no_grad():
        out = block(x, ctx)
        for k in range(4):
            change = (block(x, with_frame_changed(k)) - out).abs().amax(dim=(0, 2, 3))  # (F,)
            assert change[k] > 1e-4, (k, change)
            if block_kind == "spatial":
                assert torch.all(change[torch.arange(4) != k] == 0), (k, change)


@pytest.mark.parametrize("conditioning", ["adaln", "adaln-single"])
def test_the_final_layer_is_modulated_per_frame(conditioning):
    layer = randomize(FinalLayer(32, 8, conditioning))
    ctx, _ = block_context(conditioning)
    field = "frames" if conditioning == "adaln" else "t_emb"  # what the final layer reads
    value = getattr(ctx, field).clone()
    value[:, 2] += 1.0
    x = torch.randn(2, 4, 6, 32)
    with torch.no_grad():
        change = (layer(x, dataclasses.replace(ctx, **{field: value})) - layer(x, ctx)).abs().amax(dim=(0, 2, 3))
    assert change[2] > 1e-4 and torch.all(change[[0, 1, 3]] == 0)
