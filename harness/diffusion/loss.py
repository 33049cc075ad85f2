"""Training loss: simple MSE plus, with learned sigma, DiT/IDDPM's hybrid variational term.

- Noise and x_t come from diffusers (`DDPMScheduler.add_noise`); the v target from
  `DDPMScheduler.get_velocity` (Salimans & Ho 2022).
- "hybrid" loss of IDDPM (Nichol & Dhariwal 2021, Sec. 3.1) as used by DiT (`loss_type=MSE`, so
  L = L_simple + L_vb with no lambda and no RESCALED_MSE factor): L_vb is the KL between the true
  posterior q(x_{t-1} | x_t, x_0) and the model's p(x_{t-1} | x_t) whose mean is built from the
  *detached* prediction (only the variance channels learn from L_vb), and at t = 0 the
  discretized-Gaussian decoder NLL; both in bits per dimension (mean over non-batch dims / ln 2).
  The model log-variance interpolates log(beta_t) and the clipped log posterior variance with
  frac = (v + 1) / 2 (IDDPM Eq. 15, "learned_range").
- The MSE term is weighted by the registry in `harness.diffusion.weighting` (``diffusion.mse_weighting``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from harness.diffusion.spec import (
    DiffusionSpec,
    DiffusionTables,
    diffusion_tables,
    make_train_scheduler,
)
from harness.diffusion.weighting import (
    expand_to,
    get_mse_weighting,
    mean_flat,
    predict_x0,
)

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- Gaussian helpers (IDDPM math)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of data in [-1, 1] quantised to 256 bins under N(mean, e^(2 log_scale)), elementwise.

    The edge bins extend to -inf / +inf (Ho et al. 2020, Eq. 13). Applied to latents as DiT does;
    there the value is a bound term for the variance only, not a calibrated likelihood.
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255.0))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_terms_bpd(
    pred: torch.Tensor,
    var_values: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    spec: DiffusionSpec,
    tables: DiffusionTables | None = None,
) -> torch.Tensor:
    """Per-sample VB term in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, NLL at t = 0.

    `pred` are the mean channels (epsilon or v); pass them detached for the hybrid loss.
    `var_values` in [-1, 1] (nominally) interpolate the log-variance between posterior and beta_t.
    """
    tb = (tables or diffusion_tables(spec)).to(x0.device)
    e = lambda arr: expand_to(arr[t], x0)  # noqa: E731  (B,) table lookup -> broadcastable
    ab_t = tb.alphas_cumprod[t]
    true_mean = e(tb.posterior_mean_coef_x0) * x0 + e(tb.posterior_mean_coef_xt) * x_t
    true_logvar = e(tb.posterior_log_variance_clipped)

    x0_pred = predict_x0(pred, x_t, ab_t, spec.prediction_type)
    model_mean = e(tb.posterior_mean_coef_x0) * x0_pred + e(tb.posterior_mean_coef_xt) * x_t
    frac = (var_values + 1.0) / 2.0
    model_logvar = frac * e(tb.betas.log()) + (1.0 - frac) * true_logvar

    kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / math.log(2.0)
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


# ---------------------------------------------------------------- the training loss
@functools.lru_cache(maxsize=32)
def _train_scheduler(spec: DiffusionSpec):
    # One scheduler per spec: add_noise / get_velocity only read it (they cache alphas_cumprod on
    # the data's device), and building one per training step costs milliseconds.
    return make_train_scheduler(spec)


def _draw(fn, generator: torch.Generator | None, device: torch.device, *args, **kw) -> torch.Tensor:
    """Draw on the generator's device (CPU generators stay valid for CUDA data), then move."""
    gen_device = generator.device if generator is not None else device
    return fn(*args, generator=generator, device=gen_device, **kw).to(device)


def training_loss(
    model_fn: ModelFn,
    x0: torch.Tensor,
    y: torch.Tensor | None,
    spec: DiffusionSpec,
    generator: torch.Generator | None = None,
    *,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One Monte-Carlo estimate of the training loss. Returns (scalar loss, parts).

    `model_fn(x_t, t, y) -> (B, 2C, ...)` with learned sigma, else `(B, C, ...)`.
    t ~ U{0..T-1} and noise ~ N(0, I) are drawn from `generator` unless given.
    `parts` holds detached scalars "loss", "mse" and "vb" (vb = 0 without learned sigma).
    """
    sched = _train_scheduler(spec)
    B, C = x0.shape[:2]
    if t is None:
        t = _draw(torch.randint, generator, x0.device, 0, spec.num_train_timesteps, (B,), dtype=torch.long)
    t = t.to(device=x0.device, dtype=torch.long)
    if noise is None:
        noise = _draw(torch.randn, generator, x0.device, x0.shape, dtype=x0.dtype)
    x_t = sched.add_noise(x0, noise, t)
    target = noise if spec.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)

    out = model_fn(x_t, t, y)
    want_c = 2 * C if spec.learn_sigma else C
    if out.shape[0] != B or out.shape[1] != want_c or out.shape[2:] != x0.shape[2:]:
        raise ValueError(
            f"model output shape {tuple(out.shape)} does not match learn_sigma={spec.learn_sigma}: "
            f"expected {(B, want_c, *x0.shape[2:])}; set DiffusionSpec.learn_sigma to the model's"
        )
    out = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
    pred, var_values = out[:, :C], out[:, C:]

    tables = diffusion_tables(spec)
    ab_t = tables.alphas_cumprod.to(x0.device)[t].to(out.dtype)
    x0, x_t, target = x0.to(out.dtype), x_t.to(out.dtype), target.to(out.dtype)
    mse = get_mse_weighting(spec.mse_weighting)(pred, target, x0, x_t, ab_t, spec)
    if spec.learn_sigma:
        # Mean detached: the VB term trains only the variance channels (IDDPM Sec. 3.1).
        vb = vb_terms_bpd(pred.detach(), var_values, x0, x_t, t, spec, tables).to(out.dtype)
    else:
        vb = torch.zeros_like(mse)
    per_sample = mse + vb
    loss = per_sample.mean()
    parts = {"loss": loss.detach(), "mse": mse.mean().detach(), "vb": vb.mean().detach()}
    return loss, parts
