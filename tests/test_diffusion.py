import math

import pytest
import torch

from latte.diffusion import GaussianDiffusion, guided_output, make_scheduler, sample
from latte.diffusion.gaussian import discretized_gaussian_log_likelihood
from latte.errors import LatteError


def test_q_sample_has_the_forward_process_statistics():
    diffusion = GaussianDiffusion()
    x0 = torch.full((20000, 1), 0.5, dtype=torch.float64)
    t = torch.full((20000,), 600)
    x_t = diffusion.q_sample(x0, t, torch.randn_like(x0))
    abar = float(diffusion.alphas_cumprod[600])
    assert x_t.mean().item() == pytest.approx(0.5 * math.sqrt(abar), abs=0.02)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.05)


def test_v_target_and_x0_recovery():
    diffusion = GaussianDiffusion(prediction="v", learn_sigma=False)
    x0, noise, t = torch.randn(3, 2, 2), torch.randn(3, 2, 2), torch.tensor([1, 400, 999])
    abar = diffusion.alphas_cumprod[t].float().view(-1, 1, 1)
    v = diffusion.target(x0, t, noise)
    torch.testing.assert_close(v, abar.sqrt() * noise - (1 - abar).sqrt() * x0)
    torch.testing.assert_close(diffusion.predict_x0(diffusion.q_sample(x0, t, noise), t, v), x0, rtol=1e-4, atol=1e-4)


def test_vlb_term_equals_a_hand_computed_value():
    diffusion = GaussianDiffusion()
    x0 = torch.tensor([[0.3, -0.2]])
    noise = torch.tensor([[0.5, 1.0]])
    eps_pred = torch.tensor([[0.4, 0.9]])
    var_values = torch.tensor([[0.2, -0.6]])
    t = torch.tensor([10])
    x_t = diffusion.q_sample(x0, t, noise)
    # by hand, straight from the DDPM / IDDPM formulas
    b = diffusion.betas.double()
    abar, abar_prev = diffusion.alphas_cumprod[10].item(), diffusion.alphas_cumprod[9].item()
    beta = b[10].item()
    coef1 = beta * math.sqrt(abar_prev) / (1 - abar)
    coef2 = (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)
    post_logvar = math.log(beta * (1 - abar_prev) / (1 - abar))
    total = 0.0
    for i in range(2):
        xt = x_t[0, i].item()
        true_mean = coef1 * x0[0, i].item() + coef2 * xt
        x0_hat = (xt - math.sqrt(1 - abar) * eps_pred[0, i].item()) / math.sqrt(abar)
        model_mean = coef1 * x0_hat + coef2 * xt
        frac = (var_values[0, i].item() + 1) / 2
        model_logvar = frac * math.log(beta) + (1 - frac) * post_logvar
        kl = 0.5 * (-1 + model_logvar - post_logvar + math.exp(post_logvar - model_logvar)
                    + (true_mean - model_mean) ** 2 * math.exp(-model_logvar))
        total += kl / math.log(2)
    ours = diffusion.vb_term(eps_pred, var_values, x0, x_t, t)
    assert ours.item() == pytest.approx(total / 2, rel=1e-4)


def test_decoder_nll_at_t0_matches_a_hand_computed_gaussian_bin():
    x = torch.tensor([0.0])
    mean, log_scale = torch.tensor([0.01]), torch.tensor([math.log(0.05)])
    ll = discretized_gaussian_log_likelihood(x, mean, log_scale)
    def cdf(z):
        return 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

    expected = math.log(cdf((0 - 0.01 + 1 / 255) / 0.05) - cdf((0 - 0.01 - 1 / 255) / 0.05))
    assert ll.item() == pytest.approx(expected, rel=1e-5)
    diffusion = GaussianDiffusion()
    t0 = diffusion.vb_term(torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([0]))
    assert t0.item() > 0  # an NLL in bits, not a KL


def test_hybrid_loss_parts_and_learned_sigma_off():
    x0, t = torch.randn(2, 1, 2, 4, 4), torch.tensor([5, 700])
    def model(x, t):
        return torch.cat([torch.zeros_like(x), torch.zeros_like(x)], dim=1)

    losses = GaussianDiffusion().training_losses(model, x0, t, noise=torch.ones_like(x0))
    torch.testing.assert_close(losses["mse"], torch.ones(2))
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    plain = GaussianDiffusion(learn_sigma=False).training_losses(lambda x, t: torch.zeros_like(x), x0, t)
    assert set(plain) == {"mse", "loss"}


def test_loss_goes_down_fitting_a_tiny_model():
    torch.manual_seed(0)
    x0 = torch.rand(4, 1, 2, 4, 4) * 2 - 1
    net = torch.nn.Sequential(torch.nn.Linear(33, 64), torch.nn.SiLU(), torch.nn.Linear(64, 32))
    def model(x, t):
        return net(torch.cat([x.flatten(1), t[:, None].float() / 1000], 1)).view_as(x)

    diffusion = GaussianDiffusion(learn_sigma=False)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = last = None
    for step in range(300):
        loss = diffusion.training_losses(model, x0, torch.randint(0, 1000, (4,)))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if step < 20 and first is None else first
        last = loss.item()
    assert last < 0.6 * first


def test_guided_output_combines_prediction_channels_only():
    cond, uncond = torch.full((1, 4, 1), 2.0), torch.full((1, 4, 1), 1.0)
    out = guided_output(cond, uncond, 3.0, channels=2)
    assert out[:, :2].eq(4.0).all() and out[:, 2:].eq(2.0).all()


class Recorder(torch.nn.Module):
    def __init__(self, out_channels):
        super().__init__()
        self.calls, self.out_channels = [], out_channels

    def forward(self, x, t, y=None):
        self.calls.append((x.shape[0], None if y is None else y.tolist()))
        base = 0.1 * x + (0.0 if y is None else y.float().view(-1, 1, 1, 1, 1) * 0.01)
        return torch.cat([base] * (self.out_channels // x.shape[1]), dim=1)


@pytest.mark.parametrize("sampler,options", [("ddpm", None), ("ddim", None), ("dpm-solver", None),
                                             ("dpm-solver-sde", None)])
def test_samplers_shapes_determinism_and_single_batched_guidance(sampler, options):
    diffusion = GaussianDiffusion(learn_sigma=True)
    model = Recorder(out_channels=4)
    shape = (3, 2, 2, 4, 4)
    y = torch.tensor([0, 1, 2])
    runs = []
    for global_seed, seed in enumerate((1, 1, 2)):  # the global RNG differs in every run: it must not matter
        torch.manual_seed(global_seed)
        runs.append(sample(model, shape, diffusion, sampler, steps=6, cfg_scale=2.5, y=y, null_class=5,
                           generator=torch.Generator().manual_seed(seed), progress=False, scheduler_options=options))
    assert runs[0].shape == shape and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert all(batch == 6 and labels == [0, 1, 2, 5, 5, 5] for batch, labels in model.calls)
    assert len(model.calls) == 18  # 6 steps x 3 runs, one forward each


def test_guidance_interval_guides_only_the_steps_inside_it():
    diffusion = GaussianDiffusion(learn_sigma=False)
    shape, y = (2, 2, 2, 4, 4), torch.tensor([1, 3])

    def draw(scale, interval=None):
        return sample(Recorder(out_channels=2), shape, diffusion, "ddim", steps=6, cfg_scale=scale, y=y, null_class=5,
                      generator=torch.Generator().manual_seed(0), progress=False, guidance_interval=interval)

    guided, plain = draw(4.0), draw(1.0)
    assert torch.allclose(draw(4.0, (-1.0, 1.0)), guided)  # every step inside: plain guidance
    assert torch.allclose(draw(4.0, (2.0, 3.0)), plain, atol=1e-6)  # no step inside: scale 1 (the conditional)
    high = draw(4.0, (0.5, 1.0))  # guided at the noisy half only
    assert not torch.allclose(high, guided) and not torch.allclose(high, plain)


def test_dpm_solver_sde_is_dpm_solver_with_the_sde_algorithm():
    diffusion = GaussianDiffusion(learn_sigma=True)
    scheduler = make_scheduler(diffusion, "dpm-solver-sde")
    assert scheduler.config.algorithm_type == "sde-dpmsolver++" and scheduler.config.solver_order == 2
    draws = [sample(Recorder(out_channels=4), (2, 2, 2, 4, 4), diffusion, sampler, steps=5, y=torch.tensor([0, 1]),
                    generator=torch.Generator().manual_seed(3), progress=False, scheduler_options=options)
             for sampler, options in (("dpm-solver-sde", None), ("dpm-solver", {"algorithm_type": "sde-dpmsolver++"}))]
    assert torch.equal(*draws)


def test_respaced_ddpm_uses_the_learned_range_variance_of_the_respaced_schedule():
    diffusion = GaussianDiffusion(learn_sigma=True)
    scheduler = make_scheduler(diffusion, "ddpm")
    scheduler.set_timesteps(250)
    t, prev = int(scheduler.timesteps[10]), int(scheduler.timesteps[11])
    abar, abar_prev = diffusion.alphas_cumprod[t], diffusion.alphas_cumprod[prev]
    beta = 1 - abar / abar_prev  # the respaced beta (IDDPM Sec. 4)
    v = torch.tensor(0.3)
    frac = (v + 1) / 2
    expected = torch.exp(frac * torch.log(beta) + (1 - frac) * torch.log(beta * (1 - abar_prev) / (1 - abar)))
    log_variance = scheduler._get_variance(t, predicted_variance=v.double(), variance_type="learned_range")
    assert math.exp(log_variance.item()) == pytest.approx(expected.item(), rel=1e-4)


def test_bad_sampler_arguments_are_clear_errors():
    with pytest.raises(LatteError, match="unknown sampler"):
        sample(lambda x, t: x, (1, 1, 1, 2, 2), GaussianDiffusion(), "euler-ancestral")
    with pytest.raises(LatteError, match="guidance needs"):
        sample(lambda x, t: x, (1, 1, 1, 2, 2), GaussianDiffusion(), "ddim", cfg_scale=3.0)
    with pytest.raises(LatteError, match="prediction"):
        GaussianDiffusion(prediction="score")


def test_x0_prediction_targets_the_clean_clip():
    diffusion = GaussianDiffusion(prediction="x0", learn_sigma=False)
    x0, noise, t = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([3, 900])
    assert torch.equal(diffusion.target(x0, t, noise), x0)
    assert torch.equal(diffusion.predict_x0(diffusion.q_sample(x0, t, noise), t, x0), x0)
    assert make_scheduler(diffusion, "ddim").config.prediction_type == "sample"


def test_min_snr_weighting_is_min_snr_gamma_times_the_x0_error_for_every_prediction():
    """One guess of the clean clip, expressed as eps, x0 or v: the weighted losses agree and equal
    min(SNR, 5) times the x0 error (Hang et al. 2023); without weighting `loss` is the plain MSE."""
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 2, 3, 4, 4, generator=gen), torch.randn(4, 2, 3, 4, 4, generator=gen)
    guess = x0 + 0.3 * torch.randn(x0.shape, generator=gen)
    t = torch.tensor([2, 150, 400, 950])
    losses = {}
    for prediction in ("epsilon", "x0", "v"):
        diffusion = GaussianDiffusion(learn_sigma=False, prediction=prediction, loss_weighting="min-snr")
        a = diffusion.alphas_cumprod[t].float().sqrt().view(-1, 1, 1, 1, 1)
        s = (1 - diffusion.alphas_cumprod[t].float()).sqrt().view(-1, 1, 1, 1, 1)

        def model_fn(x_t, t_, a=a, s=s, prediction=prediction):  # the guess in this prediction's parametrisation
            eps = (x_t - a * guess) / s
            return {"epsilon": eps, "x0": guess, "v": a * eps - s * guess}[prediction]

        losses[prediction] = diffusion.training_losses(model_fn, x0, t, noise=noise)
    snr = diffusion.alphas_cumprod[t] / (1 - diffusion.alphas_cumprod[t])
    expected = snr.clamp(max=5).float() * ((guess - x0) ** 2).mean(dim=(1, 2, 3, 4))
    for prediction, result in losses.items():
        torch.testing.assert_close(result["loss"], expected, rtol=1e-3, atol=1e-6, msg=prediction)
    plain = GaussianDiffusion(learn_sigma=False, prediction="x0")
    out = plain.training_losses(lambda x_t, t_: guess, x0, t, noise=noise)
    assert torch.equal(out["loss"], out["mse"]) and torch.equal(out["mse"], losses["x0"]["mse"])
    with pytest.raises(LatteError, match="loss_weighting must be one of none, min-snr"):
        GaussianDiffusion(loss_weighting="p2")


def test_scheduler_options_read_as_typed_values():
    from latte.diffusion.samplers import parse_scheduler_options

    assert parse_scheduler_options("algorithm_type=sde-dpmsolver++, solver_order=3,lower_order_final=False,x=0.5") == {
        "algorithm_type": "sde-dpmsolver++", "solver_order": 3, "lower_order_final": False, "x": 0.5}
    assert parse_scheduler_options(None) == {} and parse_scheduler_options("") == {}
    with pytest.raises(LatteError, match="'=3' is not KEY=VALUE"):
        parse_scheduler_options("=3")
