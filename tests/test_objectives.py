"""The objective that owns time (latte.diffusion.objective): the registry, the (clips, frames) time draw,
the per-frame loss mask, and the config key that names it."""
import dataclasses

import pytest
import torch

from latte.config import DiffusionSection
from latte.diffusion import OBJECTIVES, SAMPLERS, GaussianDiffusion, Objective, make_objective
from latte.diffusion.objective import is_per_clip
from latte.errors import LatteError
from latte.train.checks import load_config


def test_the_registry_holds_ddpm_and_every_objective_fits_the_config_and_the_samplers():
    assert OBJECTIVES["ddpm"] is GaussianDiffusion and DiffusionSection().objective == "ddpm"
    keys = {f.name for f in dataclasses.fields(DiffusionSection)}
    for name, cls in OBJECTIVES.items():
        assert issubclass(cls, Objective) and cls.name == name
        assert set(cls.samplers) <= set(SAMPLERS) and cls.samplers
        assert set(cls.choices) <= keys and set(cls.ranges) <= keys


def test_make_objective_reads_a_section_or_an_old_checkpoints_dict():
    section = DiffusionSection(prediction="x0", loss_weighting="min-snr", timestep_power=0.5, timestep_power_until=7)
    built = make_objective(section, learn_sigma=False)
    assert isinstance(built, GaussianDiffusion) and not built.learn_sigma
    assert (built.prediction, built.loss_weighting, built.timestep_power, built.timestep_power_until) == (
        "x0", "min-snr", 0.5, 7)
    # a checkpoint's config written before diffusion.objective and timestep_power existed: ddpm, defaults
    old = {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "prediction": "v", "loss_weighting": "none",
           "min_snr_gamma": 5.0}
    from_old = make_objective(old, learn_sigma=True)
    assert from_old.name == "ddpm" and from_old.prediction == "v" and from_old.timestep_power == 1.0
    assert torch.equal(from_old.alphas_cumprod, GaussianDiffusion().alphas_cumprod)


def test_an_unknown_objective_is_a_one_line_error_naming_the_choices():
    for build in (lambda: load_config("tiny-test", None, ["diffusion.objective=edm"]),
                  lambda: make_objective({"objective": "edm"}, learn_sigma=False)):
        with pytest.raises(LatteError) as err:
            build()
        assert str(err.value) == "diffusion.objective must be one of ddpm, flow, got 'edm'"
    assert load_config("tiny-test", None, ["diffusion.objective=ddpm"]).diffusion.objective == "ddpm"


@pytest.mark.parametrize("power,until,step", [(1.0, 0, 0), (0.4, 0, 50), (0.25, 30, 29), (0.25, 30, 30)])
def test_times_are_drawn_one_per_clip_as_before_and_broadcast_over_the_frames(power, until, step):
    objective = GaussianDiffusion(timestep_power=power, timestep_power_until=until)
    drawn_gen, reference_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    t = objective.draw_times(16, 5, drawn_gen, "cpu", step)
    effective = power if not until or step < until else 1.0
    per_clip = objective.sample_timesteps(16, reference_gen, power=effective)  # the draw the trainer made before
    assert t.shape == (16, 5) and t.dtype == torch.long and is_per_clip(t) and t.stride(1) == 0
    assert torch.equal(t, per_clip[:, None].expand(16, 5)) and torch.equal(t[:, 0], per_clip)
    # the same number of draws from the stream: what follows (the noise) is unchanged
    assert torch.equal(torch.rand(4, generator=drawn_gen), torch.rand(4, generator=reference_gen))


def test_the_trainer_draws_a_time_for_every_frame_of_the_batch(tmp_path):
    from latte.train.trainer import Trainer

    config = load_config("tiny-test", None, [f"train.output_dir={tmp_path}", "train.device=cpu",
                                             "data.num_workers=0", "data.images_per_clip=2"])
    trainer = Trainer(config, log=lambda *a: None)
    t, noise, _ = trainer._draw(torch.Size([4, 1, 6, 16, 16]), None)  # 4 video + 2 image frames
    assert t.shape == (4, 6) and noise.shape == (4, 1, 6, 16, 16) and is_per_clip(t)


def frame_local(learn_sigma: bool):
    """A model whose output at a frame depends on that frame's input only (so frames left out of the loss
    cannot reach the others); two channels sets per frame with learned sigma."""
    def model(x, t, **_):
        prediction = 0.5 * x + 0.1 * torch.tanh(x.roll(1, dims=-1))
        return torch.cat([prediction, torch.tanh(x)], dim=1) if learn_sigma else prediction
    return model


DIFFUSIONS = [dict(learn_sigma=True), dict(learn_sigma=False, prediction="v", loss_weighting="min-snr"),
              dict(learn_sigma=True, prediction="x0", loss_weighting="min-snr")]


@pytest.mark.parametrize("settings", DIFFUSIONS)
def test_an_all_ones_mask_equals_no_mask_and_a_broadcast_time_is_the_per_clip_loss_bit_for_bit(settings):
    objective = GaussianDiffusion(**settings)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, 4, generator=gen)
    t = torch.tensor([0, 400, 999])  # t = 0 takes the decoder NLL in the VLB term
    model = frame_local(objective.learn_sigma)
    per_clip = objective.training_losses(model, x0, t, noise=noise)
    broadcast = objective.training_losses(model, x0, t[:, None].expand(3, 4), noise=noise)
    for key in per_clip:
        assert torch.equal(per_clip[key], broadcast[key]), key
    ones = torch.ones(3, 4, dtype=torch.bool)
    for masked in (objective.training_losses(model, x0, t[:, None].expand(3, 4), noise=noise, mask=ones),
                   objective.training_losses(model, x0, t[:, None].repeat(1, 4), noise=noise)):  # per frame, all count
        assert set(masked) == set(per_clip)
        for key in per_clip:
            torch.testing.assert_close(masked[key], per_clip[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("settings", DIFFUSIONS)
def test_frames_outside_the_mask_do_not_matter_and_each_frame_takes_its_own_time(settings):
    objective = GaussianDiffusion(**settings)
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 2, 3, 4, 4, generator=gen), torch.randn(2, 2, 3, 4, 4, generator=gen)
    t = torch.tensor([[0, 300, 900], [650, 650, 20]])  # (B, F), per frame
    mask = torch.tensor([[True, False, True], [False, True, True]])
    model = frame_local(objective.learn_sigma)
    losses = objective.training_losses(model, x0, t, noise=noise, mask=mask)
    changed_x0, changed_noise = x0.clone(), noise.clone()
    changed_x0[0, :, 1], changed_noise[1, :, 0] = float("nan"), 1e6  # frames that do not count
    changed = objective.training_losses(model, changed_x0, t, noise=changed_noise, mask=mask)
    for key in losses:
        assert torch.isfinite(changed[key]).all() and torch.equal(losses[key], changed[key]), key
    # each term is the mean over the frames that count of the one-frame clip's loss at that frame's time
    for b in range(2):
        kept = mask[b].nonzero().flatten().tolist()
        frames = [objective.training_losses(model, x0[b:b + 1, :, f:f + 1], t[b, f:f + 1],
                                            noise=noise[b:b + 1, :, f:f + 1]) for f in kept]
        for key in losses:
            expected = torch.stack([one[key][0] for one in frames]).mean()
            torch.testing.assert_close(losses[key][b], expected, rtol=1e-5, atol=1e-6, msg=key)
