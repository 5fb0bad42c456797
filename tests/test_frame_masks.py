"""Frame-conditioned training (train.mask_*, latte/train/frame_masks.py) and sampling with given frames
(`sample(..., given=, given_mask=)`): the draws, the loss over generated frames only, clean given
frames, bitwise resume, and samples that hold their given frames exactly."""
import pytest
import torch
from test_text_training import text_config

from latte.checkpoint_files import load_checkpoint
from latte.config import TrainSection, config_from_dict, resume_differences
from latte.diffusion import GaussianDiffusion, sample
from latte.diffusion.flow import RectifiedFlow
from latte.models import create_model
from latte.train import frame_masks
from latte.train.checks import load_config
from latte.train.run import train
from latte.train.trainer import Trainer

TINY = ["train.device=cpu", "data.num_workers=0"]
MASKS = ["train.mask_first=0.25", "train.mask_prefix=0.25", "train.mask_random=0.25"]
FLOW = ["diffusion.objective=flow", "model.learn_sigma=false", "sample.sampler=euler"]
OBJECTIVES = [GaussianDiffusion(), GaussianDiffusion(learn_sigma=False, prediction="v", loss_weighting="min-snr"),
              GaussianDiffusion(prediction="x0"), RectifiedFlow()]


def tiny_config(tmp_path, *overrides):
    return load_config("tiny-test", None, [f"train.output_dir={tmp_path}", *TINY, *overrides])


def draw(clips=20000, frames=8, unit=1, images=0, seed=0, **masks):
    train = TrainSection(**masks)
    return frame_masks.draw_given(train, clips, frames, unit, images, torch.Generator().manual_seed(seed), "cpu")


def test_each_kind_gives_its_frames_at_its_frequency():
    given = draw(mask_first=0.3, mask_last=0.2, mask_ends=0.1)  # (G, 8); none: 0.4
    first, last = torch.zeros(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)
    first[0], last[-1] = True, True
    patterns = {"first": first, "last": last, "ends": first | last, "none": torch.zeros(8, dtype=torch.bool)}
    counted = 0
    for name, p in (("first", 0.3), ("last", 0.2), ("ends", 0.1), ("none", 0.4)):
        share = (given == patterns[name]).all(dim=1).float().mean().item()
        assert abs(share - p) < 0.015, (name, share)
        counted += share
    assert counted == pytest.approx(1.0)  # nothing else was drawn
    assert torch.equal(given, draw(mask_first=0.3, mask_last=0.2, mask_ends=0.1))  # the seed decides


def test_prefixes_are_uniform_or_fixed_and_random_frames_leave_one_to_generate():
    given = draw(mask_prefix=1.0)
    k = given.sum(dim=1)  # (G,)
    assert torch.equal(given, torch.arange(8)[None] < k[:, None])  # a prefix
    counts = torch.bincount(k, minlength=8).float() / len(k)
    assert counts[0] == 0 and ((counts[1:] - 1 / 7).abs() < 0.015).all(), counts  # k uniform in 1..7
    assert (draw(mask_prefix=1.0, mask_prefix_frames=3).sum(dim=1) == 3).all()
    given = draw(mask_random=1.0)
    assert (given.sum(dim=1) < 8).all()  # one always generated
    assert abs(given.float().mean().item() - (0.5 - 0.5**8 / 8)) < 0.01  # 1/2 each, less the largest draw's
    assert abs(given[:, 0].float().mean().item() - given[:, 7].float().mean().item()) < 0.02  # no frame favoured


def test_tubelets_are_given_whole_and_joint_images_never():
    given = draw(frames=8, unit=2, images=3, mask_first=0.2, mask_prefix=0.2, mask_last=0.2, mask_random=0.3)
    assert given.shape == (20000, 11) and not given[:, 8:].any()
    assert torch.equal(given[:, 0:8:2], given[:, 1:8:2])  # each tubelet all given or all generated
    assert given[:, :8].any(dim=1).float().mean().item() > 0.8


def test_the_frames_preset_is_the_default_with_masks():
    default, frames = load_config("moving-mnist", None, []), load_config("moving-mnist-frames", None, [])
    assert frames.train.trained_kinds() == {"first", "prefix", "ends"} and not default.train.trained_kinds()
    for kind in TrainSection.MASK_KINDS:
        setattr(frames.train, f"mask_{kind}", 0.0)
    frames.train.output_dir = default.train.output_dir
    assert frames == default


def test_masks_off_draw_nothing_and_old_configs_resume_with_masks_off(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    before = trainer.noise.get_state()
    assert trainer._draw_given(torch.Size([4, 1, 4, 16, 16]), 0) is None
    assert torch.equal(trainer.noise.get_state(), before)  # the stream is the one before the keys existed
    stored = trainer.config.to_dict()
    for key in frame_masks.KEYS + ("mask_prefix_frames",):
        del stored["train"][key]  # a checkpoint written before the keys
    assert resume_differences(stored, trainer.config) == []
    assert config_from_dict(stored).train == trainer.config.train
    masked = tiny_config(tmp_path, "train.mask_first=0.5")
    assert resume_differences(stored, masked) == ["train.mask_first: checkpoint 0.0, now 0.5"]


def test_training_without_masks_is_unchanged_and_with_masks_resumes_bitwise(tmp_path):
    plain = train(tiny_config(tmp_path / "plain", "train.max_steps=4"), write_samples_at_end=False)
    zero = train(tiny_config(tmp_path / "zero", "train.max_steps=4", "train.mask_first=0", "train.mask_random=0.0"),
                 write_samples_at_end=False)
    straight = train(tiny_config(tmp_path / "a", "train.max_steps=4", *MASKS), write_samples_at_end=False)
    train(tiny_config(tmp_path / "b", "train.max_steps=2", *MASKS), write_samples_at_end=False)
    resumed = train(tiny_config(tmp_path / "b", "train.max_steps=4", *MASKS), write_samples_at_end=False)
    assert plain.step == zero.step == straight.step == resumed.step == 4
    states = {name: load_checkpoint(tmp_path / name) for name in ("plain", "zero", "a", "b")}
    assert states["a"]["config"]["train"]["mask_first"] == 0.25  # the checkpoint records its masks
    for key in ("model", "ema"):
        for name, tensor in states["a"][key].items():
            assert torch.equal(tensor, states["b"][key][name]), f"{key}.{name} differs after resume"
            assert torch.equal(states["plain"][key][name], states["zero"][key][name]), f"{key}.{name}"
    assert any(not torch.equal(tensor, states["plain"]["model"][name]) for name, tensor in states["a"]["model"].items())


PREFIX_2 = ["train.mask_prefix=1.0", "train.mask_prefix_frames=2"]


@pytest.mark.parametrize("overrides", [[*MASKS, "data.images_per_clip=1"], [*MASKS, "model.patch_embed=tubelet"],
                                       [*MASKS, *FLOW, "model.conditioning=tokens", "model.variant=3"], PREFIX_2,
                                       ["text", *MASKS, "data.images_per_clip=1"]])
def test_the_trainer_passes_its_masks_to_the_loss(tmp_path, overrides):
    if overrides[0] == "text":  # a text-to-video model (adaLN-single, captions)
        trainer = Trainer(text_config(tmp_path, *overrides[1:]))
    else:
        trainer = Trainer(tiny_config(tmp_path, *overrides))
    seen, losses = [], trainer.diffusion.training_losses

    def recording(model_fn, x0, t, **kwargs):
        seen.append((x0.shape, kwargs["given"]))
        return losses(model_fn, x0, t, **kwargs)

    trainer.diffusion.training_losses = recording
    loader = trainer._loader()
    for _ in range(3):
        trainer.train_step(loader)
    images = trainer.config.data.images_per_clip
    for shape, given in seen:
        assert given.shape == (shape[0], shape[2]) and given.dtype == torch.bool
        assert not given[:, shape[2] - images:].any() or not images  # joint image frames: never given
        assert (~given).any(dim=1).all()  # every clip generates a frame
        if trainer.model_config.patch_embed == "tubelet":
            assert torch.equal(given[:, 0::2], given[:, 1::2])
        if overrides == PREFIX_2:
            assert torch.equal(given, torch.tensor([True, True, False, False]).expand(shape[0], -1))
    assert any(given.any() for _, given in seen)


def frame_local(learn_sigma: bool, bump: torch.Tensor | None = None, record: list | None = None):
    """A model whose output at a frame depends on that frame's input only; `bump` (B, F) bool adds 1e3 to
    the output at those frames; `record` collects (x, t)."""
    def model(x, t, **_):
        if record is not None:
            record.append((x.clone(), t.clone()))
        out = 0.5 * x + 0.1 * torch.tanh(x.roll(1, dims=-1))
        out = torch.cat([out, torch.tanh(x)], dim=1) if learn_sigma else out
        if bump is not None:
            out = out + 1e3 * bump[:, None, :, None, None]
        return out
    return model


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: f"{o.name}-{getattr(o, 'prediction', 'v')}")
def test_given_frames_are_clean_at_the_clean_time_and_outside_the_loss(objective):
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, 4, generator=gen)
    t = torch.tensor([5, 400, 999]) if objective.name == "ddpm" else torch.tensor([0.05, 0.4, 0.99])
    given = torch.tensor([[True, False, False, False], [True, True, False, True], [False, False, False, False]])
    record = []
    losses = objective.training_losses(frame_local(objective.learn_sigma, record=record), x0, t, noise=noise,
                                       given=given)
    (x_t, model_t), = record
    for b in range(3):
        for f in range(4):
            if given[b, f]:  # the input itself, at the clean time
                assert torch.equal(x_t[b, :, f], x0[b, :, f])
                assert model_t[b, f] == objective.model_time(torch.tensor(objective.clean_time()))
            else:  # corrupted at the clip's time
                expected = objective.corrupt(x0[b:b + 1, :, f:f + 1], t[b:b + 1], noise[b:b + 1, :, f:f + 1])
                assert torch.equal(x_t[b, :, f], expected[0, :, 0]) and model_t[b, f] == objective.model_time(t[b])
    bumped = objective.training_losses(frame_local(objective.learn_sigma, bump=given), x0, t, noise=noise,
                                       given=given)
    for key in losses:  # the output at given frames does not matter ...
        assert torch.equal(losses[key], bumped[key]), key
    other = objective.training_losses(frame_local(objective.learn_sigma, bump=~given), x0, t, noise=noise,
                                      given=given)
    assert (other["mse"] > 1e5).all()  # ... the output at generated frames does
    mask = ~given  # the same as leaving them out by the loss mask, at the per-frame times of with_given
    by_mask = objective.training_losses(frame_local(objective.learn_sigma), x0, objective.with_given(t, given),
                                        noise=noise, mask=mask)
    for key in losses:
        torch.testing.assert_close(losses[key], by_mask[key], rtol=1e-5, atol=1e-6, msg=key)


def test_clean_times_are_each_objectives_zero():
    assert GaussianDiffusion().clean_time() == 0 and RectifiedFlow().clean_time() == 0.0
    t = GaussianDiffusion().with_given(torch.tensor([7, 9]), torch.tensor([[True, False], [False, False]]))
    assert torch.equal(t, torch.tensor([[0, 7], [9, 9]])) and t.dtype == torch.long


def tiny_latte(learn_sigma: bool):
    model = create_model("Latte-T/2", num_frames=4, input_size=8, num_classes=3, learn_sigma=learn_sigma)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.mark.parametrize("objective,sampler", [(GaussianDiffusion(), "ddim"), (GaussianDiffusion(), "ddpm"),
                                               (GaussianDiffusion(), "dpm-solver"), (RectifiedFlow(), "euler"),
                                               (RectifiedFlow(), "heun")])
def test_conditioned_sampling_returns_the_given_frames_exactly(objective, sampler):
    model = tiny_latte(objective.learn_sigma)
    shape = (2, 4, 4, 8, 8)
    given = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    given_mask = torch.tensor([[True, False, False, False], [True, True, False, True]])
    y = torch.tensor([0, 2])
    times = []

    def run(**kwargs):
        return sample(model, shape, objective, sampler, steps=3, y=y, generator=torch.Generator().manual_seed(2),
                      progress=False, cfg_scale=2.0, null_class=3, **kwargs)

    free = run()
    out = run(given=given, given_mask=given_mask, on_step=times.append)
    assert torch.equal(out[:, :, given_mask[0]][0], given[0][:, given_mask[0]])
    assert torch.equal(out[1][:, given_mask[1]], given[1][:, given_mask[1]])
    assert torch.isfinite(out).all() and len(times) >= 3
    assert not torch.allclose(out[:, :, 2], free[:, :, 2])  # the generated frames see the given ones


def test_conditioned_sampling_gives_the_model_the_clean_time_at_given_frames():
    objective, record = RectifiedFlow(), []
    given, mask = torch.zeros(1, 2, 3, 4, 4), torch.tensor([[False, True, False]])
    sample(frame_local(False, record=record), (1, 2, 3, 4, 4), objective, "euler", steps=4, progress=False,
           given=given, given_mask=mask)
    assert len(record) == 4
    for x, t in record:
        assert torch.equal(x[:, :, 1], given[:, :, 1]) and t[0, 1] == 0 and (t[0, [0, 2]] > 0).all()


def test_sampling_refuses_given_clips_that_do_not_fit():
    from latte.errors import LatteError

    with pytest.raises(LatteError, match="do not fit"):
        sample(frame_local(False), (1, 2, 3, 4, 4), RectifiedFlow(), "euler", steps=2, progress=False,
               given=torch.zeros(1, 2, 2, 4, 4), given_mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(LatteError, match="both"):
        sample(frame_local(False), (1, 2, 3, 4, 4), RectifiedFlow(), "euler", steps=2, progress=False,
               given=torch.zeros(1, 2, 3, 4, 4))

