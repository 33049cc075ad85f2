"""Tests for harness.diffusion: spec checks and the training loss (eps / v, hybrid VB, p2 weighting)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_oracles import SHAPE, ZSNR, one_thread  # noqa: F401  (one_thread: autouse fixture)

from harness.diffusion import (
    DiffusionSpec,
    diffusion_tables,
    get_sampler,
    list_samplers,
    make_train_scheduler,
    training_loss,
    vb_terms_bpd,
)


# ---------------------------------------------------------------- spec
def test_spec_validation_messages():
    with pytest.raises(ValueError, match="v_prediction"):
        DiffusionSpec(zero_terminal_snr=True, timestep_spacing="trailing")
    with pytest.raises(ValueError, match="trailing"):
        DiffusionSpec(zero_terminal_snr=True, prediction_type="v_prediction", timestep_spacing="leading")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionSpec(prediction_type="x0")
    with pytest.raises(ValueError, match="mse_weighting"):
        DiffusionSpec(mse_weighting="nope")
    with pytest.raises(KeyError, match="ddim"):
        get_sampler("lms")
    assert set(list_samplers()) >= {"ddpm", "ddim", "dpmpp", "euler", "heun", "unipc"}


def test_default_schedule_and_tables_come_from_diffusers():
    spec = DiffusionSpec()
    sched = make_train_scheduler(spec)
    assert sched.config.num_train_timesteps == 1000
    assert math.isclose(float(sched.betas[0]), 1e-4, rel_tol=1e-5)
    assert math.isclose(float(sched.betas[-1]), 0.02, rel_tol=1e-5)
    tb = diffusion_tables(spec)
    torch.testing.assert_close(tb.alphas_cumprod, sched.alphas_cumprod.double())
    for t in (1, 7, 250, 999):  # posterior variance == diffusers' own "fixed_small" variance
        ref = float(sched._get_variance(t, variance_type="fixed_small"))
        assert math.isclose(float(tb.posterior_variance[t]), ref, rel_tol=1e-4)


def test_zero_terminal_snr_schedule():
    sched = make_train_scheduler(DiffusionSpec(**ZSNR))
    assert abs(float(sched.alphas_cumprod[-1])) < 1e-10
    assert float(sched.alphas_cumprod[-2]) > 0


# ---------------------------------------------------------------- loss
@pytest.mark.parametrize("pred_type", ["epsilon", "v_prediction"])
def test_mse_target_is_noise_or_scheduler_velocity(pred_type):
    spec = DiffusionSpec(prediction_type=pred_type, learn_sigma=False)
    sched = make_train_scheduler(spec)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn((6, *SHAPE), generator=g), torch.randn((6, *SHAPE), generator=g)
    t = torch.tensor([0, 1, 10, 500, 900, 999])
    v = sched.get_velocity(x0, noise, t)
    exact = noise if pred_type == "epsilon" else v
    other = v if pred_type == "epsilon" else noise
    loss, parts = training_loss(lambda x, tt, y: exact, x0, None, spec, t=t, noise=noise)
    assert float(loss) < 1e-10 and float(parts["vb"]) == 0.0
    loss_other, _ = training_loss(lambda x, tt, y: other, x0, None, spec, t=t, noise=noise)
    assert float(loss_other) > 0.1


def test_vb_is_zero_at_true_posterior_and_positive_elsewhere():
    spec = DiffusionSpec()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn((4, *SHAPE), generator=g), torch.randn((4, *SHAPE), generator=g)
    t = torch.tensor([1, 50, 500, 999])
    x_t = make_train_scheduler(spec).add_noise(x0, noise, t)
    # exact eps and var value -1 (= posterior variance): KL(q || p) = 0
    vb = vb_terms_bpd(noise, -torch.ones_like(x0), x0, x_t, t, spec)
    assert vb.abs().max() < 1e-5
    vb_wrong = vb_terms_bpd(noise + 0.1, torch.ones_like(x0), x0, x_t, t, spec)
    assert (vb_wrong > 1e-5).all()  # beta_t ~ posterior var at large t: small but > 0
    nll = vb_terms_bpd(noise, -torch.ones_like(x0), x0.clamp(-1, 1), x_t, torch.zeros(4, dtype=torch.long), spec)
    assert torch.isfinite(nll).all() and (nll > 0).all()


def test_vb_gradient_reaches_only_variance_channels():
    spec = DiffusionSpec()
    g = torch.Generator().manual_seed(2)
    B, C = 5, 1
    x0, noise = torch.randn((B, *SHAPE), generator=g), torch.randn((B, *SHAPE), generator=g)
    t = torch.tensor([0, 3, 100, 600, 999])
    out = torch.randn((B, 2 * C, 8, 8), generator=g).requires_grad_(True)
    loss, parts = training_loss(lambda x, tt, y: out, x0, None, spec, t=t, noise=noise)
    assert float(parts["vb"]) > 0
    loss.backward()
    # mean channels see only the MSE gradient 2 (pred - eps) / numel: the VB term adds nothing
    expected = 2 * (out[:, :C] - noise).detach() / out[:, :C].numel()
    torch.testing.assert_close(out.grad[:, :C], expected, rtol=1e-5, atol=1e-8)
    assert out.grad[:, C:].abs().sum() > 0
    # without the detach the VB term would move the mean (so the check above is meaningful)
    pred = out[:, :C].detach().clone().requires_grad_(True)
    x_t = make_train_scheduler(spec).add_noise(x0, noise, t)
    vb_terms_bpd(pred, out[:, C:].detach(), x0, x_t, t, spec).sum().backward()
    assert pred.grad.abs().sum() > 0


def test_p2_weighting_matches_x0_space_formula():
    spec = DiffusionSpec(**ZSNR, learn_sigma=False, mse_weighting="p2")
    sched = make_train_scheduler(spec)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn((4, *SHAPE), generator=g), torch.randn((4, *SHAPE), generator=g)
    t = torch.tensor([5, 300, 998, 999])
    v_err = torch.randn((4, *SHAPE), generator=g)
    v = sched.get_velocity(x0, noise, t)
    loss, _ = training_loss(lambda x, tt, y: v + v_err, x0, None, spec, t=t, noise=noise)
    ab = sched.alphas_cumprod[t].double()
    w = ab * (1 - ab).sqrt()  # snr * sqrt(1 - ab) on x0 error == ab * sqrt(1 - ab) on v error
    expected = (w * v_err.double().pow(2).flatten(1).mean(1)).mean()
    assert math.isclose(float(loss), float(expected), rel_tol=1e-4)


@pytest.mark.parametrize("spec_kw", [{}, dict(**ZSNR)])
def test_loss_finite_and_decreases_on_toy_data(spec_kw):
    torch.manual_seed(0)
    spec = DiffusionSpec(**spec_kw)
    data = torch.stack([torch.full(SHAPE, -0.5), torch.linspace(-1, 1, 64).reshape(SHAPE)])

    class Net(torch.nn.Module):  # MLP on (x, t / T): enough to fit two points
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(65, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128))

        def forward(self, x, t, y):
            h = torch.cat([x.flatten(1), (t.float() / 1000)[:, None]], 1)
            return self.net(h).reshape(x.shape[0], 2, 8, 8)

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    ev = torch.Generator().manual_seed(99)
    x_ev = data[torch.randint(0, 2, (256,), generator=ev)]
    t_ev = torch.randint(0, 1000, (256,), generator=ev)
    n_ev = torch.randn(x_ev.shape, generator=ev)

    def eval_loss():
        with torch.no_grad():
            return float(training_loss(net, x_ev, None, spec, t=t_ev, noise=n_ev)[0])

    before = eval_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        x0 = data[torch.randint(0, 2, (32,), generator=g)]
        loss, parts = training_loss(net, x0, None, spec, g)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    # eps: 1.03 -> 0.20; zero-SNR v: 0.55 -> 0.33 (at t ~ T-1, v ~ -x_0 cannot be predicted: a floor)
    assert eval_loss() < 0.7 * before


def test_wrong_output_channels_is_a_clear_error():
    with pytest.raises(ValueError, match="learn_sigma"):
        training_loss(lambda x, t, y: x, torch.zeros((2, *SHAPE)), None, DiffusionSpec(learn_sigma=True))
