"""What the training loss compares: the prediction parameterisation and the MSE weightings.

- `predict_x0`: x_0 implied by an epsilon or v prediction (the formulas of diffusers' DDPM/DDIM
  `step`, batched over timesteps; v-prediction from Salimans & Ho 2022).
- MSE weighting registry (``diffusion.mse_weighting``): "none" (DiT: plain MSE in the prediction
  space) and "p2" (the official FPDM code with v-prediction: MSE in x_0-space weighted by
  snr * sqrt(1 - ab), i.e. a v-space MSE weighted by ab * sqrt(1 - ab); official
  `diffusion/gaussian_diffusion.py`, docs/paper-notes.md "Training loss").

It sits below `spec` (which validates ``mse_weighting`` against this registry) and `loss` (which
applies it), so neither imports the other in a circle.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from baselines.registry import Registry

PREDICTION_TYPES = ("epsilon", "v_prediction")


def expand_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) in `like`'s dtype, for broadcasting against a (B, C, ...) tensor."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def predict_x0(pred: torch.Tensor, x_t: torch.Tensor, ab_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x_0 implied by a model prediction (epsilon or v) at noise level alpha_bar_t ((B,) tensor).

    Same formulas as the `step` of diffusers' DDPM/DDIM schedulers, batched over timesteps.
    """
    a = expand_to(ab_t.sqrt(), x_t)
    s = expand_to((1.0 - ab_t).sqrt(), x_t)
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a
    if prediction_type == "v_prediction":
        return a * x_t - s * pred
    raise ValueError(f"prediction_type={prediction_type!r} is not one of {list(PREDICTION_TYPES)}")


# weight_fn(pred, target, x0, x_t, ab_t, spec) -> per-sample loss (B,)
MseWeighting = Callable[..., torch.Tensor]

MSE_WEIGHTINGS: Registry[MseWeighting] = Registry("mse weighting", key="diffusion.mse_weighting")
register_mse_weighting, get_mse_weighting = MSE_WEIGHTINGS.register, MSE_WEIGHTINGS.get
list_mse_weightings = MSE_WEIGHTINGS.list


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: (B, ...) -> (B,)."""
    return x.flatten(1).mean(dim=1)


@register_mse_weighting("none")
def _mse_plain(pred, target, x0, x_t, ab_t, spec):
    return mean_flat((pred - target) ** 2)


@register_mse_weighting("p2")
def _mse_p2(pred, target, x0, x_t, ab_t, spec):
    # Official FPDM code (gaussian_diffusion.py, weight_schedule="p2"): x_0-space error weighted by
    # snr * sqrt(1 - ab). Zero at a zero-SNR timestep, where x_0 carries no signal.
    snr = ab_t / (1.0 - ab_t)
    w = snr * (1.0 - ab_t).sqrt()
    x0_pred = predict_x0(pred, x_t, ab_t, spec.prediction_type)
    return mean_flat(expand_to(w, x0) * (x0 - x0_pred) ** 2)
