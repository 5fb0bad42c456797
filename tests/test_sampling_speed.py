"""Solver grids, the PAB attention cache and bf16 sampling (latte.diffusion.samplers, latte.sampling_cache)."""
import math

import pytest
import torch

from latte.diffusion import GaussianDiffusion, make_scheduler, sample
from latte.diffusion.samplers import MULTISTEP, set_timesteps, solver_timesteps
from latte.errors import LatteError
from latte.models import create_model
from latte.sampling import SampleRequest, generate
from latte.sampling_cache import PABCache, PABSettings, attention_modules

# diffusers' DPM-Solver and DEIS schedulers warn about NumPy 2 array protocols on every step
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


def randomize(model, std=0.05, seed=0):
    """Random weights everywhere (a fresh model's zero-initialised outputs would make every comparison trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def class_model(variant=1):
    return randomize(create_model("Latte-T/2", hidden_size=32, depth=4, num_heads=2, num_classes=3, num_frames=4,
                                  input_size=8, in_channels=2, learn_sigma=False, variant=variant))


class HashTextEncoder:
    """Deterministic per-prompt features standing in for a text encoder (width 16, 5 tokens)."""

    width = 16

    def __call__(self, prompts):
        rows = [torch.randn(5, self.width, generator=torch.Generator().manual_seed(sum(map(ord, p)))) for p in prompts]
        return torch.stack(rows), torch.ones(len(prompts), 5, dtype=torch.long)


def text_model():
    return randomize(create_model("LatteT2V-T", hidden_size=32, num_heads=2, caption_channels=16, depth=4,
                                  num_frames=4, input_size=8, in_channels=2, learn_sigma=False))


# -- solvers ---------------------------------------------------------------------------------------

def gaussian_x0_model(diffusion, mu, s):
    """The exact x0 prediction E[x0 | x_t] for data x0 ~ N(mu, s^2) (elementwise)."""
    abar = diffusion.alphas_cumprod.float()

    def model(x, t, **_):  # t (B, F): one time per frame
        a = abar[t][:, None, :, None, None]  # (B, 1, F, 1, 1)
        return mu + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (x - a.sqrt() * mu)

    return model


@pytest.mark.parametrize("sampler", ["dpm-solver", "unipc", "deis"])
def test_logsnr_grid_solves_the_gaussian_probability_flow_more_accurately_than_diffusers_default(sampler):
    """For Gaussian data the ODE maps x_T to mu + s (x_T - sqrt(abar_T) mu) / sqrt(abar_T s^2 + 1 - abar_T)
    exactly; diffusers' own grid ends at t ~ 50 and jumps to the posterior mean, shrinking towards mu."""
    diffusion = GaussianDiffusion(prediction="x0", learn_sigma=False)
    mu, s = 0.3, 0.5
    noise = torch.randn(4, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    a_T = diffusion.alphas_cumprod[-1].float()
    exact = mu + s * (noise - a_T.sqrt() * mu) / (a_T * s**2 + 1 - a_T).sqrt()
    model = gaussian_x0_model(diffusion, mu, s)
    errors = {grid: (sample(model, noise.shape, diffusion, sampler, steps=20, noise=noise, progress=False, grid=grid)
                     - exact).abs().max().item() for grid in ("logsnr", "diffusers")}
    assert errors["logsnr"] < 0.04 and errors["logsnr"] < 0.7 * errors["diffusers"]


def test_logsnr_grid_is_even_in_log_snr_and_every_multistep_solver_takes_it():
    diffusion = GaussianDiffusion()
    expected = solver_timesteps(diffusion.alphas_cumprod, 20)
    assert expected[0] == 999 and expected[-1] >= 1 and (expected[1:] < expected[:-1]).all() and len(expected) == 20
    abar = diffusion.alphas_cumprod[torch.from_numpy(expected)]
    gaps = torch.diff(0.5 * torch.log(abar / (1 - abar)))
    assert (gaps - gaps.mean()).abs().max() < 0.25 * gaps.mean()  # even up to integer rounding near t = 0
    for sampler in MULTISTEP:
        scheduler = make_scheduler(diffusion, sampler)
        set_timesteps(scheduler, sampler, 20)
        assert scheduler.timesteps.tolist() == expected.tolist() and len(scheduler.sigmas) == 21
        sigma_0 = ((1 - diffusion.alphas_cumprod[0]) / diffusion.alphas_cumprod[0]).sqrt().item()
        final = sigma_0 if sampler == "deis" else 0.0  # DEIS ends at t = 0, the others at the clean sample
        assert scheduler.sigmas[-1].item() == pytest.approx(final, rel=1e-3)
    # UniPC/DEIS rebuild the sigma table by hand: it must equal what DPM-Solver's own custom-timestep path builds
    dpm, unipc = make_scheduler(diffusion, "dpm-solver"), make_scheduler(diffusion, "unipc")
    set_timesteps(dpm, "dpm-solver", 20)
    set_timesteps(unipc, "unipc", 20)
    assert torch.allclose(dpm.sigmas.float(), unipc.sigmas, rtol=1e-5)


def test_logsnr_grid_takes_any_step_count_up_to_t_minus_1():
    """From 38 steps of 1000 on, neighbouring targets near t = 0 round to the same integer (that was an error)."""
    diffusion = GaussianDiffusion(prediction="x0", learn_sigma=False)
    for steps in (37, 38, 50, 250, 999):
        grid = solver_timesteps(diffusion.alphas_cumprod, steps)
        assert len(grid) == steps and grid[0] == 999 and grid[-1] >= 1 and (grid[1:] < grid[:-1]).all(), steps
    assert solver_timesteps(diffusion.alphas_cumprod, 999).tolist() == list(range(999, 0, -1))
    with pytest.raises(LatteError, match="1000 solver steps do not fit into timesteps 1..999"):
        solver_timesteps(diffusion.alphas_cumprod, 1000)
    model = gaussian_x0_model(diffusion, 0.3, 0.5)
    noise = torch.randn(2, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = 0.3 + 0.5 * (noise - diffusion.alphas_cumprod[-1].float().sqrt() * 0.3) / (
        diffusion.alphas_cumprod[-1].float() * 0.25 + 1 - diffusion.alphas_cumprod[-1].float()).sqrt()
    fifty = sample(model, noise.shape, diffusion, "dpm-solver", steps=50, noise=noise, progress=False)
    assert (fifty - exact).abs().max() < 0.04


@pytest.mark.parametrize("sampler", ["unipc", "deis", "dpm-solver"])
def test_new_samplers_shapes_and_determinism_per_seed(sampler):
    model, diffusion = class_model(), GaussianDiffusion(prediction="x0", learn_sigma=False)
    runs = [generate(model, diffusion, SampleRequest(num_videos=3, sampler=sampler, steps=5, cfg_scale=2.0, seed=seed,
                                                     batch_size=2), progress=False)[0] for seed in (1, 1, 2)]
    assert runs[0].shape == (3, 2, 4, 8, 8) and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_unknown_scheduler_settings_and_grids_are_errors():
    with pytest.raises(LatteError, match="no setting"):
        make_scheduler(GaussianDiffusion(), "unipc", karras=True)
    with pytest.raises(LatteError, match="grid"):
        sample(lambda x, t: x, (1, 1, 1, 2, 2), GaussianDiffusion(), "deis", steps=2, grid="uniform", progress=False)


# -- PAB ------------------------------------------------------------------------------------------

def draw(model, diffusion, **fields):
    request = SampleRequest(**{"num_videos": 2, "sampler": "ddim", "steps": 12, "cfg_scale": 2.0, "seed": 3, **fields})
    encoder = HashTextEncoder() if request.prompts else None
    return generate(model, diffusion, request, progress=False, text_encoder=encoder)[0]


@pytest.mark.parametrize("kind", ["class", "text"])
def test_pab_off_is_unchanged_interval_one_is_bit_identical_and_the_model_is_restored(kind):
    model = class_model() if kind == "class" else text_model()
    diffusion = GaussianDiffusion(prediction="x0", learn_sigma=False)
    fields = {"prompts": ["a", "b"]} if kind == "text" else {}
    plain = draw(model, diffusion, **fields)
    # "off" is the model called directly, as before the cache existed
    shape = plain.shape
    assert torch.equal(plain, draw(model, diffusion, cache=None, **fields))
    every_call = "spatial=1,temporal=1,cross=1"
    assert torch.equal(plain, draw(model, diffusion, cache="pab", cache_options=every_call, **fields))
    cached = draw(model, diffusion, cache="pab", **fields)
    assert cached.shape == shape and not torch.equal(cached, plain)
    assert torch.equal(plain, draw(model, diffusion, **fields))  # forwards restored after the cache
    assert all("forward" not in m.__dict__ for _, m in attention_modules(model))


def test_pab_reuses_each_kind_on_its_own_interval_inside_its_range_only():
    model = text_model()
    kinds = [k for k, _ in attention_modules(model)]
    assert kinds.count("spatial") == 2 and kinds.count("temporal") == 2 and kinds.count("cross") == 2
    settings = PABSettings.parse("spatial=2@0-999,temporal=3@0-999,cross=4@500-999")
    encoder = HashTextEncoder()
    hidden, mask = encoder(["x"])
    with PABCache(model, settings) as cache:
        for t in (900, 800, 700, 600, 500, 400, 300, 200):  # 8 calls
            cache(torch.randn(1, 2, 4, 8, 8), torch.tensor([t]), encoder_hidden_states=hidden,
                  encoder_attention_mask=mask)
    per_module = {k: cache.computed[k] // 2 for k in ("spatial", "temporal", "cross")}
    # spatial: calls 1,3,5,7; temporal: 1,4,7; cross: 1,5 inside 500..999, then every call below 500 (3 calls)
    assert per_module == {"spatial": 4, "temporal": 3, "cross": 2 + 3}
    assert cache.calls == {"spatial": 16, "temporal": 16, "cross": 16}


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver", "ddpm"])
def test_sample_tells_each_steps_host_timestep_before_its_model_call(sampler):
    diffusion = GaussianDiffusion(prediction="x0", learn_sigma=False)
    events = []
    def model(x, t, **_):
        events.append(("model", t.tolist()))
        return torch.zeros_like(x)

    sample(model, (2, 1, 3, 4, 4), diffusion, sampler, steps=5, progress=False,
           on_step=lambda timestep: events.append(("step", timestep)))
    schedule = [float(t) for t in diffusion_scheduler_timesteps(diffusion, sampler, 5)]
    assert events == [event for t in schedule for event in (("step", t), ("model", [[int(t)] * 3] * 2))]
    assert all(isinstance(value, float) for kind, value in events if kind == "step")


def diffusion_scheduler_timesteps(diffusion, sampler, steps):
    from latte.diffusion.samplers import scheduler_for

    return scheduler_for(diffusion, sampler, steps).timesteps


def test_pab_takes_the_timestep_it_is_told_not_the_model_input():
    model = text_model()
    hidden, mask = HashTextEncoder()(["x"])
    settings = PABSettings.parse("spatial=2@500-999,temporal=1@0-999,cross=1@0-999")
    with PABCache(model, settings) as cache:
        for told in (900, 800, 700, 600):  # inside the spatial range, whatever the tensor says (t = 0 is outside)
            cache.at_time(told)
            cache(torch.randn(1, 2, 4, 8, 8), torch.tensor([0]), encoder_hidden_states=hidden,
                  encoder_attention_mask=mask)
    assert cache.computed["spatial"] // 2 == 2 and cache.timestep == 600.0
    with PABCache(model, settings) as untold, pytest.raises(LatteError, match="on_step=cache.at_time"):
        untold(torch.zeros(1, 2, 4, 8, 8), torch.zeros(1, device="meta"))  # a device tensor is never read


def test_pab_covers_factorised_blocks_and_bad_options_are_one_line_errors():
    kinds = [k for k, _ in attention_modules(class_model(variant=3))]
    assert kinds == ["spatial", "temporal"] * 2
    for spec, match in (("spatial=0", ">= 1"), ("mlp=2", "KIND"), ("temporal=2@800-100", "lo <= hi"),
                        ("cross=x", "integers")):
        with pytest.raises(LatteError, match=match):
            PABSettings.parse(spec)
    with pytest.raises(LatteError, match="cache must be"):
        draw(class_model(), GaussianDiffusion(prediction="x0", learn_sigma=False), cache="fora")


# -- precision ------------------------------------------------------------------------------------

def test_bf16_sampling_is_close_to_fp32():
    model, diffusion = class_model(), GaussianDiffusion(prediction="x0", learn_sigma=False)
    fp32 = draw(model, diffusion, sampler="dpm-solver", steps=8)
    bf16 = draw(model, diffusion, sampler="dpm-solver", steps=8, precision="bf16")
    assert not torch.equal(fp32, bf16)  # bf16 really ran
    psnr = 10 * math.log10(4 / (fp32 - bf16).pow(2).mean().item())  # range [-1, 1]
    assert psnr > 35, psnr
    with pytest.raises(LatteError, match="precision"):
        draw(model, diffusion, precision="fp16")


def test_bf16_eval_detectors_run_under_autocast_and_keep_their_own_cache_entries():
    from latte.metrics.clips import ClipProtocol
    from latte.metrics.evaluate import Detector, cache_key, in_precision

    linear = torch.nn.Linear(64, 8)
    x = torch.randn(4, 64)
    fp32, bf16 = in_precision(linear, "fp32", torch.device("cpu")), in_precision(linear, "bf16", torch.device("cpu"))
    assert fp32 is linear
    out = bf16(x)
    assert out.dtype == torch.float32 and not torch.equal(out, linear(x))
    assert torch.allclose(out, linear(x), atol=0.05)

    class Clips:
        def fingerprint(self):
            return {"kind": "test"}

    detector = Detector("fvd", "test", "w", "0" * 64, 8, linear)
    fp32_key = cache_key(Clips(), ClipProtocol(), detector)
    detector.extra["precision"] = "bf16"
    assert cache_key(Clips(), ClipProtocol(), detector) != fp32_key
    with pytest.raises(LatteError, match="precision"):
        in_precision(linear, "fp16", torch.device("cpu"))


def test_sample_cli_takes_the_new_samplers_cache_and_precision(tmp_path, capsys):
    import numpy as np
    from test_train import tiny_config

    from latte.cli import main
    from latte.train.run import train

    train(tiny_config(tmp_path / "run", "train.max_steps=1"), write_samples_at_end=False)
    common = ["sample", "--checkpoint", str(tmp_path / "run"), "--num-videos", "2", "--steps", "4", "--device", "cpu"]
    assert main(common + ["--output", str(tmp_path / "a.npz"), "--sampler", "unipc"]) == 0
    assert main(common + ["--output", str(tmp_path / "b.npz"), "--sampler", "unipc", "--cache", "pab",
                          "--cache-options", "spatial=1,temporal=1", "--precision", "fp32"]) == 0
    a, b = np.load(tmp_path / "a.npz")["videos"], np.load(tmp_path / "b.npz")["videos"]
    assert a.shape == (2, 1, 4, 16, 16) and np.array_equal(a, b)
    sde = ["--scheduler-options", "algorithm_type=sde-dpmsolver++"]
    runs = {"ode": ["--sampler", "dpm-solver"], "sde1": ["--sampler", "dpm-solver", *sde],
            "sde2": ["--sampler", "dpm-solver", *sde], "named": ["--sampler", "dpm-solver-sde"]}
    for name, extra in runs.items():
        torch.manual_seed(len(name))  # the global RNG moved: the seed alone decides the videos
        assert main(common + ["--output", str(tmp_path / f"{name}.npz"), *extra]) == 0
    ode, sde1, sde2, named = (np.load(tmp_path / f"{name}.npz")["videos"] for name in runs)
    assert np.array_equal(sde1, sde2) and np.array_equal(sde1, named) and not np.array_equal(ode, sde1)
    capsys.readouterr()
    assert main(common + ["--output", str(tmp_path / "c.npz"), "--cache", "pab", "--cache-options", "spatial=0"]) == 2
    assert "interval must be >= 1" in capsys.readouterr().err and not (tmp_path / "c.npz").exists()
