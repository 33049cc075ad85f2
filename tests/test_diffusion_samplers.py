"""Tests for harness.diffusion samplers: exact oracles, respacing, CFG, per-image seeds, CUDA."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusion_oracles import SHAPE, ZSNR, gaussian_oracle, mu_img, ode_endpoint, one_thread  # noqa: F401

from harness.diffusion import (
    DiffusionSpec,
    make_sample_scheduler,
    make_train_scheduler,
    per_image_generators,
    sample_loop,
    spaced_timesteps,
    training_loss,
)
from harness.diffusion.samplers import _guide

# ---------------------------------------------------------------- samplers
CASES = [
    ("ddim", dict(prediction_type="epsilon")),
    ("ddim", dict(prediction_type="v_prediction")),
    ("ddim", dict(ZSNR)),
    ("ddpm", dict(prediction_type="epsilon")),
    ("ddpm", dict(ZSNR)),
    ("dpmpp", dict(prediction_type="epsilon")),
    ("dpmpp", dict(ZSNR)),
    ("euler", dict(prediction_type="epsilon")),
    ("euler", dict(ZSNR)),
    ("unipc", dict(prediction_type="epsilon")),
    ("unipc", dict(ZSNR)),
]


@pytest.mark.parametrize("sampler,kw", CASES)
def test_point_oracle_recovers_the_data_point(sampler, kw):
    spec = DiffusionSpec(**kw)
    mu = mu_img()
    x = sample_loop(
        gaussian_oracle(spec, mu, 0.0),
        (3, *SHAPE),
        None,
        spec,
        sampler=sampler,
        num_steps=10,
        generator_per_image=per_image_generators(0, 0, 3),
    )
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, mu.expand(3, *SHAPE), atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    "sampler,steps,tol",
    [("ddim", 100, 0.02), ("dpmpp", 20, 0.02), ("euler", 100, 0.02), ("unipc", 20, 0.02), ("heun", 41, 0.02)],
)
@pytest.mark.parametrize("kw", [dict(prediction_type="epsilon"), dict(ZSNR)])
def test_deterministic_samplers_follow_the_probability_flow_ode(sampler, steps, tol, kw):
    spec = DiffusionSpec(**kw, learn_sigma=False)
    mu, s = mu_img(), 0.5
    noise = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(5))
    x = sample_loop(
        gaussian_oracle(spec, mu, s),
        noise.shape,
        None,
        spec,
        sampler=sampler,
        num_steps=steps,
        generator_per_image=noise,
    )
    ref = ode_endpoint(spec, sampler, steps, noise, mu, s)
    assert (x.double() - ref).abs().mean() < tol
    # and the map is not trivial: it depends on the noise
    assert (x[0] - x[1]).abs().mean() > 0.1


@pytest.mark.parametrize("kw", [dict(prediction_type="epsilon"), dict(ZSNR)])
def test_heun_counts_model_evaluations_and_recovers_the_data_point(kw):
    """Heun's ``num_steps`` is the number of model evaluations (2 per step but the last): 11
    evaluations are 6 timesteps, each but the last evaluated twice; an even count is refused."""
    spec = DiffusionSpec(**kw)
    calls = []
    oracle = gaussian_oracle(spec, mu_img(), 0.0)

    def counting(x, t, y, i):
        calls.append((i, int(t[0])))
        return oracle(x, t, y, i)

    x = sample_loop(
        counting,
        (3, *SHAPE),
        None,
        spec,
        sampler="heun",
        num_steps=11,
        generator_per_image=per_image_generators(0, 0, 3),
    )
    torch.testing.assert_close(x, mu_img().expand(3, *SHAPE), atol=2e-3, rtol=0)
    ts = [t for _, t in calls]
    assert [i for i, _ in calls] == list(range(11)) and len(set(ts)) == 6 and ts[0] != ts[1] == ts[2]
    with pytest.raises(ValueError, match="sample.sampler=heun .* must be odd: use 9 or 11"):
        make_sample_scheduler(spec, "heun", 10)


def expected_ddpm_std(spec, steps, s, var_value):
    """Exact output std of the linear-Gaussian DDPM chain for N(mu, s^2) data and the oracle mean.

    Independent of diffusers: x' - sqrt(ab') mu = (c0 k + ct)(x - sqrt(ab) mu) + sigma z with the
    respaced posterior coefficients c0, ct, k = d E[x0|x] / dx and the learned-range variance.
    """
    ab_all = make_train_scheduler(spec).alphas_cumprod.double()
    ts = make_sample_scheduler(spec, "ddpm", steps).model_timesteps.tolist()
    var = 1.0  # x_T ~ N(0, I) stands in for x at the first sampled timestep
    for i, t in enumerate(ts):
        ab = ab_all[t]
        ab_prev = ab_all[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        beta = 1 - ab / ab_prev
        c0, ct = ab_prev.sqrt() * beta / (1 - ab), (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
        k = ab.sqrt() * s * s / (ab * s * s + 1 - ab)
        frac = (var_value + 1) / 2
        post = (1 - ab_prev) / (1 - ab) * beta
        sigma2 = torch.exp(frac * beta.log() + (1 - frac) * post.clamp(min=1e-20).log()) if i + 1 < len(ts) else 0.0
        var = (c0 * k + ct) ** 2 * var + sigma2
    return float(var) ** 0.5


def test_ddpm_learned_range_matches_the_exact_chain_variance():
    spec = DiffusionSpec(prediction_type="v_prediction", learn_sigma=True)
    mu, s, n, steps = mu_img(), 0.5, 96, 50
    stds = {}
    for var_value in (-1.0, 1.0):  # the two ends of the learned range: posterior variance, beta_t
        x = sample_loop(
            gaussian_oracle(spec, mu, s, var_value),
            (n, *SHAPE),
            None,
            spec,
            sampler="ddpm",
            num_steps=steps,
            generator_per_image=per_image_generators(7, 0, n),
        )
        assert abs(float((x - mu).mean())) < 0.03
        stds[var_value] = float((x - mu).std())
        assert abs(stds[var_value] - expected_ddpm_std(spec, steps, s, var_value)) < 0.02
    assert stds[-1.0] < s < stds[1.0]  # small variance under-, large over-disperses


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.7), ("dpmpp", 0.0)])
def test_samples_do_not_depend_on_batch_size(sampler, eta):
    spec = DiffusionSpec(prediction_type="v_prediction")
    model = gaussian_oracle(spec, mu_img(), 0.5, var_value=0.3)

    def run(start, count):
        return sample_loop(
            model,
            (count, *SHAPE),
            None,
            spec,
            sampler=sampler,
            num_steps=8,
            eta=eta,
            generator_per_image=per_image_generators(1000, start, count),
        )

    full = run(0, 7)
    torch.testing.assert_close(run(0, 4), full[:4], rtol=0, atol=1e-6)
    torch.testing.assert_close(run(5, 1), full[5:6], rtol=0, atol=1e-6)
    torch.testing.assert_close(run(4, 3), full[4:], rtol=0, atol=1e-6)
    assert (full[0] - full[1]).abs().mean() > 0.05  # images get different seeds


def test_respaced_ddim_equals_plain_diffusers_ddim_when_gaps_are_equal():
    spec = DiffusionSpec(prediction_type="v_prediction", learn_sigma=False, timestep_spacing="leading")
    model = gaussian_oracle(spec, mu_img(), 0.5)
    noise = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(9))
    ours = sample_loop(model, noise.shape, None, spec, sampler="ddim", num_steps=20, generator_per_image=noise)
    plain = DDIMScheduler(**spec.scheduler_kwargs(), clip_sample=False, set_alpha_to_one=True)
    plain.set_timesteps(20)
    x = noise.clone()
    for i, t in enumerate(plain.timesteps):
        x = plain.step(model(x, t.repeat(3), None, i), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
@pytest.mark.parametrize("spacing,steps", [("linspace", 10), ("trailing", 35), ("leading", 7)])
def test_respacing_model_calls_and_original_timesteps(sampler, spacing, steps):
    spec = DiffusionSpec(prediction_type="v_prediction", timestep_spacing=spacing)
    calls, seen = [], []
    base = gaussian_oracle(spec, mu_img(), 0.0)

    def model(x, t, y, i):
        calls.append((i, int(t[0])))
        assert (t == t[0]).all() and t.dtype == torch.long
        return base(x, t, y)

    sample_loop(
        model,
        (2, *SHAPE),
        None,
        spec,
        sampler=sampler,
        num_steps=steps,
        generator_per_image=per_image_generators(0, 0, 2),
        on_step=lambda i, t, x: seen.append((i, t)),
    )
    planned = make_sample_scheduler(spec, sampler, steps).model_timesteps.tolist()
    assert [c[0] for c in calls] == list(range(steps))
    assert [c[1] for c in calls] == planned and seen == calls
    assert planned == sorted(planned, reverse=True) and len(set(planned)) == steps
    if sampler != "dpmpp":  # DPM-Solver uses its own placement (ends at sigma = 0)
        assert planned == spaced_timesteps(spec, steps).tolist()
    if spacing in ("linspace", "trailing"):
        assert planned[0] == 999
    if spacing == "linspace":
        assert planned[-1] == 0 or sampler == "dpmpp"


def test_cfg_guides_all_prediction_channels_and_keeps_cond_variance():
    C = 2
    cond = torch.randn(3, 2 * C, 4, 4)
    uncond = torch.randn(3, 2 * C, 4, 4)
    out = _guide(torch.cat([cond, uncond]), C, 4.0)
    torch.testing.assert_close(out[:, :C], uncond[:, :C] + 4.0 * (cond[:, :C] - uncond[:, :C]))
    torch.testing.assert_close(out[:, C:], cond[:, C:])
    torch.testing.assert_close(_guide(torch.cat([cond, uncond]), C, 1.0), cond)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_cfg_sampling_equals_a_model_that_returns_the_guided_output(sampler):
    spec = DiffusionSpec(prediction_type="epsilon")
    null, scale, B = 10, 3.0, 3
    y = torch.tensor([1, 4, 7])

    def branch(x, t, y_):  # class-dependent shift of an oracle; the null label gives the plain one
        base = gaussian_oracle(spec, mu_img(), 0.5, var_value=0.2)(x, t, None)
        shift = torch.where(y_ == null, 0.0, 0.01 * y_.float()).reshape(-1, 1, 1, 1)
        return torch.cat([base[:, :1] + shift, base[:, 1:] + shift], 1)

    seen_y = []

    def model(x, t, y_, i):
        seen_y.append(y_.clone())
        return branch(x, t, y_)

    def guided_model(x, t, y_, i):
        c, u = branch(x, t, y_), branch(x, t, torch.full_like(y_, null))
        return torch.cat([u[:, :1] + scale * (c[:, :1] - u[:, :1]), c[:, 1:]], 1)

    kw = dict(sampler=sampler, num_steps=6, eta=0.5)
    x_cfg = sample_loop(
        model,
        (B, *SHAPE),
        y,
        spec,
        cfg_scale=scale,
        null_label=null,
        generator_per_image=per_image_generators(0, 0, B),
        **kw,
    )
    x_ref = sample_loop(guided_model, (B, *SHAPE), y, spec, generator_per_image=per_image_generators(0, 0, B), **kw)
    torch.testing.assert_close(x_cfg, x_ref, rtol=0, atol=1e-5)
    assert seen_y[0].tolist() == [1, 4, 7, null, null, null]
    x_plain = sample_loop(
        branch_model := (lambda x, t, y_, i: branch(x, t, y_)),
        (B, *SHAPE),
        y,
        spec,
        cfg_scale=1.0,
        generator_per_image=per_image_generators(0, 0, B),
        **kw,
    )
    assert not torch.allclose(x_plain, x_cfg)  # guidance changes samples
    with pytest.raises(ValueError, match="null_label"):
        sample_loop(
            branch_model, (B, *SHAPE), y, spec, cfg_scale=2.0, generator_per_image=per_image_generators(0, 0, B), **kw
        )


def test_stochastic_sampler_with_noise_tensor_is_refused():
    spec = DiffusionSpec()
    with pytest.raises(ValueError, match="generators"):
        sample_loop(
            gaussian_oracle(spec, mu_img(), 0.0),
            (2, *SHAPE),
            None,
            spec,
            sampler="ddpm",
            num_steps=3,
            generator_per_image=torch.randn(2, *SHAPE),
        )
    with pytest.raises(ValueError, match="num_steps"):
        make_sample_scheduler(spec, "ddim", 0)


@pytest.mark.gpu  # skipped with the reason without CUDA (tests/conftest.py)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_cuda_matches_cpu_with_cpu_generators(sampler):
    spec = DiffusionSpec(prediction_type="v_prediction")
    model = gaussian_oracle(spec, mu_img(), 0.5, var_value=0.0)
    y = torch.zeros(4, dtype=torch.long)
    kw = dict(sampler=sampler, num_steps=8, eta=0.0)
    x_cpu = sample_loop(model, (4, *SHAPE), y, spec, generator_per_image=per_image_generators(3, 0, 4), **kw)
    x_gpu = sample_loop(model, (4, *SHAPE), y.cuda(), spec, generator_per_image=per_image_generators(3, 0, 4), **kw)
    assert x_gpu.device.type == "cuda"
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, rtol=0, atol=1e-4)
    x0 = torch.randn(8, *SHAPE, device="cuda")
    out = torch.randn(8, 2, 8, 8, device="cuda", requires_grad=True)
    loss, _ = training_loss(lambda x, t, y_: out, x0, None, spec, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and out.grad.device.type == "cuda"


def test_sampling_refuses_a_model_without_variance_channels_when_sigma_is_learned():
    spec = DiffusionSpec(learn_sigma=True)
    with pytest.raises(ValueError, match="learn_sigma"):
        sample_loop(
            lambda x, t, y, i: x,
            (2, *SHAPE),
            None,
            spec,
            sampler="ddim",
            num_steps=2,
            generator_per_image=per_image_generators(0, 0, 2),
        )


@pytest.mark.parametrize("spacing,steps", [("linspace", 10), ("trailing", 35), ("leading", 7)])
def test_ddim_matches_the_exact_linear_recursion_for_gaussian_data(spacing, steps):
    """eta = 0 DDIM on N(mu, s^2) data is linear: x' - sqrt(ab') mu = f (x - sqrt(ab) mu), with
    f = (sqrt(ab ab') s^2 + sqrt((1 - ab)(1 - ab'))) / (ab s^2 + 1 - ab), ab' of the *next planned*
    timestep (1 after the last). A stride-based previous timestep (t - T // S) fails this."""
    spec = DiffusionSpec(prediction_type="epsilon", learn_sigma=False, timestep_spacing=spacing)
    mu, s = mu_img(), 0.5
    noise = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(4))
    x = sample_loop(
        gaussian_oracle(spec, mu, s),
        noise.shape,
        None,
        spec,
        sampler="ddim",
        num_steps=steps,
        generator_per_image=noise,
    )
    ab_all = make_train_scheduler(spec).alphas_cumprod.double()
    ts = spaced_timesteps(spec, steps).tolist()
    abs_ = [ab_all[t] for t in ts] + [torch.tensor(1.0, dtype=torch.float64)]
    f = 1.0
    for ab, ab_next in zip(abs_[:-1], abs_[1:]):
        f = f * ((ab * ab_next).sqrt() * s * s + ((1 - ab) * (1 - ab_next)).sqrt()) / (ab * s * s + 1 - ab)
    expected = mu + f * (noise.double() - abs_[0].sqrt() * mu)
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-4)
