"""Shared helpers for the harness.diffusion tests: exact oracles for Gaussian / single-point data."""

from __future__ import annotations

import pytest
import torch

from harness.diffusion import DiffusionSpec, make_sample_scheduler, make_train_scheduler

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: intra-op threads only add contention on a shared 2-core machine (30 ms per
    # 32x64 matmul instead of 30 us under load). Restored afterwards for other test modules.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# zero terminal SNR as protocol=paper runs it (v-prediction, the official linspace respacing)
ZSNR = dict(prediction_type="v_prediction", zero_terminal_snr=True, timestep_spacing="linspace")


# ---------------------------------------------------------------- oracles
def gaussian_oracle(spec: DiffusionSpec, mu: torch.Tensor, s: float, var_value: float = 0.0):
    """Exact E[eps | x_t] (or v) for data x_0 ~ N(mu, s^2 I); s = 0 is the single point mu.

    Same signature for training (x, t, y) and sampling (x, t, y, step_index).
    """
    ab_all = make_train_scheduler(spec).alphas_cumprod.double()

    def fn(x, t, y, step_index=None):
        ab = ab_all.to(x.device)[t].reshape(-1, 1, 1, 1)
        xd, m = x.double(), mu.to(x.device).double()
        d = ab * s * s + 1.0 - ab
        z = xd - ab.sqrt() * m
        eps = (1.0 - ab).sqrt() * z / d
        x0 = m + ab.sqrt() * s * s * z / d
        pred = eps if spec.prediction_type == "epsilon" else ab.sqrt() * eps - (1.0 - ab).sqrt() * x0
        pred = pred.to(x.dtype)
        if spec.learn_sigma:
            pred = torch.cat([pred, torch.full_like(pred, var_value)], dim=1)
        return pred

    return fn


def ode_endpoint(spec, sampler, num_steps, x_T, mu, s):
    """Probability-flow ODE solution at t = 0 for Gaussian data, started at the sampler's first t."""
    t0 = int(make_sample_scheduler(spec, sampler, num_steps).model_timesteps[0])
    ab = make_train_scheduler(spec).alphas_cumprod.double()[t0]
    return mu + s * (x_T.double() - ab.sqrt() * mu) / (ab * s * s + 1 - ab).sqrt()


def mu_img(c=1):
    g = torch.Generator().manual_seed(123)
    return torch.rand((1, c, 8, 8), generator=g) * 1.6 - 0.8
