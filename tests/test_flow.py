"""The flow objective (latte.diffusion.flow): its time draws, loss, samplers against an exact solution,
training and bitwise resume with the real trainer, and the one-line errors around it."""
import json
import math

import pytest
import torch

from latte.checkpoint_files import load_checkpoint
from latte.cli import main
from latte.diffusion import GaussianDiffusion, make_objective, sample
from latte.diffusion.flow import RectifiedFlow, resolution_shift, shift_time
from latte.diffusion.objective import is_per_clip
from latte.errors import LatteError
from latte.train import trainer as trainer_module
from latte.train.checks import load_config
from latte.train.run import train

FLOW = ["train.device=cpu", "data.num_workers=0", "diffusion.objective=flow", "model.learn_sigma=false",
        "sample.sampler=euler"]


def flow_config(tmp_path, *overrides):
    return load_config("tiny-test", None, [f"train.output_dir={tmp_path}", *FLOW, *overrides])


def gaussian_velocity(mean: float, std: float):
    """The exact velocity E[noise - x0 | x_t] for data x0 ~ N(mean, std^2) per element, as a model of
    (x, t * 1000): the flow ODE from x_1 = noise ends at mean + std * noise."""
    def model(x, model_t):  # model_t (B, F): one time per frame
        t = (model_t / 1000)[:, None, :, None, None].to(x.dtype)  # (B, 1, F, 1, 1)
        var = (1 - t) ** 2 * std**2 + t**2  # Var x_t
        return (t - (1 - t) * std**2) / var * (x - (1 - t) * mean) - mean
    return model


@pytest.mark.parametrize("sampler", RectifiedFlow.samplers)
def test_flow_samplers_converge_to_the_exact_solution_as_steps_grow(sampler):
    objective = RectifiedFlow(time_shift=3.0)  # the sampling grid takes the training shift
    noise = torch.randn(4, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = 0.3 + 0.5 * noise
    errors = []
    for steps in (4, 8, 16, 32):
        x = sample(gaussian_velocity(0.3, 0.5), noise.shape, objective, sampler, steps=steps, noise=noise,
                   progress=False)
        errors.append((x - exact).pow(2).mean().sqrt().item())
    assert all(later < 0.6 * earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05, errors


def test_guidance_combines_velocities_and_pab_hears_flow_timesteps():
    objective, heard = RectifiedFlow(), []
    noise = torch.randn(2, 1, 2, 4, 4, generator=torch.Generator().manual_seed(1))

    def model(x, t, y):  # class 0 pulls towards +1, the null class (1) towards -1
        return gaussian_velocity(torch.where(y == 0, 1.0, -1.0).view(-1, 1, 1, 1, 1), 0.1)(x, t)
    guided = sample(model, noise.shape, objective, "euler", steps=40, cfg_scale=2.0, y=torch.tensor([0, 0]),
                    null_class=1, noise=noise, progress=False, on_step=heard.append)
    # guidance 2 extrapolates the velocity: the mean moves to 1 + (1 - (-1)) = 3
    assert abs(guided.mean().item() - 3.0) < 0.2
    assert heard[0] == pytest.approx(1000.0) and all(0 < t <= 1000 for t in heard) and heard == sorted(heard)[::-1]


def test_logit_normal_and_shifted_draws_have_the_right_distribution():
    n = 40000
    draw = RectifiedFlow(time_sampling="logit-normal").sample_times(n, torch.Generator().manual_seed(0))
    assert abs(draw.median().item() - 0.5) < 0.01 and 0 < draw.min() and draw.max() < 1
    assert abs((draw < torch.sigmoid(torch.tensor(1.0))).float().mean().item() - 0.8413) < 0.01  # N(0,1) < 1
    moved = RectifiedFlow(logit_mean=-1.0, logit_std=0.5).sample_times(n, torch.Generator().manual_seed(0))
    assert abs(moved.median().item() - torch.sigmoid(torch.tensor(-1.0)).item()) < 0.01
    uniform = RectifiedFlow(time_sampling="uniform").sample_times(n, torch.Generator().manual_seed(0))
    assert abs(uniform.mean().item() - 0.5) < 0.01 and abs((uniform < 0.25).float().mean().item() - 0.25) < 0.01
    for a in (3.0, 0.5):
        assert shift_time(torch.tensor([0.0, 0.5, 1.0]), a).tolist() == pytest.approx([0.0, a / (1 + a), 1.0])
        shifted = RectifiedFlow(time_sampling="uniform", time_shift=a).sample_times(n, torch.Generator().manual_seed(0))
        assert abs(shifted.median().item() - a / (1 + a)) < 0.01  # the shift is monotone: medians map
        assert torch.allclose(shifted, shift_time(uniform, a))


def test_times_are_one_per_clip_from_the_generator_and_broadcast_over_frames():
    objective = RectifiedFlow()
    drawn, reference = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    t = objective.draw_times(6, 5, drawn, "cpu", step=0)
    expected = torch.sigmoid(torch.randn(6, generator=reference))
    assert t.shape == (6, 5) and t.dtype == torch.float32 and is_per_clip(t) and t.stride(1) == 0
    assert torch.equal(t[:, 0], expected)
    assert torch.equal(torch.rand(3, generator=drawn), torch.rand(3, generator=reference))  # same draws used


def test_the_shift_follows_the_tokens_per_clip():
    assert resolution_shift(4096, 1024) == 2.0 and resolution_shift(256, 1024, scale=3.0) == 1.5
    built = make_objective({"objective": "flow", "time_shift": 1.5, "time_shift_base_tokens": 16}, False, 64)
    assert built.shift == 3.0 and built.scheduler_settings("euler")["shift"] == 3.0
    assert built.scheduler_settings("unipc")["flow_shift"] == 3.0
    with pytest.raises(LatteError, match="tokens per clip"):
        make_objective({"objective": "flow", "time_shift_base_tokens": 16}, False)
    # the trainer gives the model's tokens: 4 frames of (16 / 4)^2 patches = 64
    trainer = trainer_module.Trainer(flow_config("unused", "diffusion.time_shift_base_tokens=16"), log=lambda *a: None)
    assert trainer.diffusion.shift == 2.0


def test_the_loss_is_the_velocity_mse_over_the_frames_that_count():
    objective = RectifiedFlow()
    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 3, 4, 2, 2, generator=gen), torch.randn(2, 3, 4, 2, 2, generator=gen)
    t = torch.tensor([0.2, 0.7])
    seen = {}

    def model(x, model_t):
        seen["x"], seen["t"] = x, model_t
        return torch.zeros_like(x)
    losses = objective.training_losses(model, x0, t, noise=noise)
    assert torch.equal(seen["t"], t * 1000)
    torch.testing.assert_close(seen["x"], (1 - t.view(2, 1, 1, 1, 1)) * x0 + t.view(2, 1, 1, 1, 1) * noise)
    torch.testing.assert_close(losses["loss"], (noise - x0).pow(2).mean(dim=(1, 2, 3, 4)))
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    masked = objective.training_losses(model, x0, t[:, None].expand(2, 4), noise=noise, mask=mask)
    per_frame = (noise - x0).pow(2).mean(dim=(1, 3, 4))  # (B, F)
    expected = torch.stack([per_frame[b][mask[b]].mean() for b in range(2)])
    torch.testing.assert_close(masked["loss"], expected)
    with pytest.raises(LatteError, match="outputs 3 channels"):
        objective.training_losses(lambda x, t: torch.cat([x, x], 1), x0, t, noise=noise)


class FewClips(torch.utils.data.Dataset):
    num_classes = 0

    def __init__(self):
        self.clips = torch.rand(4, 1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"video": self.clips[i]}


def test_training_decreases_the_flow_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "build_training_data", lambda config: (FewClips(), None, True))
    config = flow_config(tmp_path, "train.max_steps=150", "train.checkpoint_every=1000", "train.log_every=25",
                         "optim.lr=3e-3", "model.hidden_size=64")
    trainer = trainer_module.Trainer(config)
    clips = FewClips().clips.repeat(4, 1, 1, 1, 1)  # (16, 1, 4, 16, 16)
    t = torch.linspace(0.05, 0.95, 16)  # fixed times and noise: a held-out style reading with little variance
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(5))

    def fixed_loss():
        with torch.no_grad():
            return trainer.diffusion.training_losses(trainer.model.eval(), clips, t, noise=noise)["loss"].mean().item()
    before = fixed_loss()
    trainer.fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] and fixed_loss() < 0.75 * before, (before, fixed_loss(), losses)


def test_a_flow_run_resumes_bitwise_and_refuses_ddpm_samplers_in_one_line(tmp_path, capsys):
    straight = train(flow_config(tmp_path / "a", "train.max_steps=4"), write_samples_at_end=False)
    train(flow_config(tmp_path / "b", "train.max_steps=2"), write_samples_at_end=False)
    resumed = train(flow_config(tmp_path / "b", "train.max_steps=4"), write_samples_at_end=False)
    assert resumed.step == straight.step == 4
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["config"]["diffusion"]["objective"] == "flow"
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    out = tmp_path / "v.mp4"
    assert main(["sample", "--checkpoint", str(tmp_path / "a"), "--output", str(out), "--sampler", "ddim"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("objective flow does not take sampler 'ddim'; choose one of euler, heun, unipc, dpm-solver")
    assert main(["sample", "--checkpoint", str(tmp_path / "a"), "--output", str(out), "--num-videos", "2",
                 "--sampler", "heun", "--steps", "3", "--cfg-scale", "2", "--cache", "pab", "--precision", "bf16"]) == 0
    assert out.stat().st_size > 0


def test_a_sampler_of_the_other_objective_is_a_one_line_error():
    with pytest.raises(LatteError) as err:
        sample(lambda x, t: x, (1, 1, 1, 2, 2), RectifiedFlow(), "ddim")
    assert str(err.value) == "objective flow does not take sampler 'ddim'; choose one of euler, heun, unipc, dpm-solver"
    with pytest.raises(LatteError) as err:
        sample(lambda x, t: x, (1, 1, 1, 2, 2), GaussianDiffusion(), "euler")
    assert str(err.value) == ("objective ddpm does not take sampler 'euler'; choose one of ddpm, ddim, dpm-solver, "
                              "dpm-solver-sde, unipc, deis")


@pytest.mark.parametrize("overrides,message", [
    (["diffusion.time_sampling=cosine"], "diffusion.time_sampling must be one of uniform, logit-normal, got 'cosine'"),
    (["diffusion.prediction=x0", "diffusion.timestep_power=0.5"],
     "diffusion.prediction=x0, diffusion.timestep_power=0.5 do not apply to diffusion.objective=flow: leave them at "
     "the default"),
    (["diffusion.loss_weighting=min-snr"], "diffusion.loss_weighting must be one of none, got 'min-snr'"),
    (["diffusion.time_shift=0"], "diffusion.time_shift must be in (0, inf), got 0.0"),
    (["model.learn_sigma=true"], "model.learn_sigma applies to diffusion.objective=ddpm only: a flow model learns no "
                                 "variance; set model.learn_sigma=false"),
    (["sample.sampler=ddim"], "sample.sampler must be one of euler, heun, unipc, dpm-solver (the samplers of "
                              "diffusion.objective=flow), got 'ddim'"),
    (["diffusion.objective=ddpm", "sample.sampler=ddim", "diffusion.time_sampling=uniform"],
     "diffusion.time_sampling=uniform does not apply to diffusion.objective=ddpm: leave it at the default"),
])
def test_flow_config_errors_are_one_line(overrides, message):
    with pytest.raises(LatteError) as err:
        flow_config("unused", *overrides)
    assert str(err.value) == message


def test_convert_to_diffusers_writes_the_flow_scheduler_config(tmp_path):
    import diffusers
    from test_finetune import text_config

    run = tmp_path / "run"
    train(text_config(run, "train.max_steps=2", "diffusion.objective=flow", "diffusion.prediction=epsilon",
                      "diffusion.timestep_power=1", "diffusion.timestep_power_until=0", "sample.sampler=unipc",
                      "diffusion.time_shift=2"), write_samples_at_end=False)
    out = tmp_path / "export"
    assert main(["convert", "--from", "latte", "--to", "diffusers", str(run), str(out)]) == 0
    scheduler = diffusers.UniPCMultistepScheduler.from_pretrained(out)
    assert scheduler.config.use_flow_sigmas and scheduler.config.prediction_type == "flow_prediction"
    assert scheduler.config.flow_shift == 2.0
    config = diffusers.LatteTransformer3DModel.from_pretrained(out).config
    assert config.out_channels == config.in_channels  # the velocity, no variance channels


def test_a_flow_run_records_its_held_out_loss_on_the_unshifted_grid(tmp_path):
    grid = RectifiedFlow(time_shift=3.0).held_out_times(4)
    assert torch.allclose(grid, torch.tensor([0.125, 0.375, 0.625, 0.875]))
    train(flow_config(tmp_path, "train.max_steps=2", "train.eval_every=1", "train.eval_clips=2"),
          write_samples_at_end=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in records if "heldout_loss" in r]
    assert [r["step"] for r in held] == [1, 2]
    assert len(held[-1]["heldout_loss_by_t"]) == 10 and all(math.isfinite(v) for v in held[-1]["heldout_loss_by_t"].values())


def test_each_objective_reads_x0_back_from_its_own_target_at_a_noise_level():
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 1, 3, 4, 4, generator=gen), torch.randn(2, 1, 3, 4, 4, generator=gen)
    flow, ddpm = RectifiedFlow(), GaussianDiffusion(prediction="epsilon", learn_sigma=False)
    assert flow.time_at(0.9) == 0.9 and ddpm.time_at(0.9) == 900 and ddpm.time_at(1.0) == 999
    for objective, target in ((flow, noise - x0), (ddpm, noise)):
        t = torch.full((2,), objective.time_at(0.9))
        x_t = objective.corrupt(x0, t, noise)
        torch.testing.assert_close(objective.predict_x0(x_t, t, target), x0, rtol=1e-4, atol=1e-4)
