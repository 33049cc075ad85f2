"""Sampler clipping semantics (``sample.clip_mode``) against hand-written closed forms.

The reference below is ADM's ``ddim_sample`` (Nichol & Dhariwal 2021 / Dhariwal & Nichol 2021
guided-diffusion, the sampler of the DiT and FPDM code) written out from its equations, not
from the harness or diffusers: with eta = 0,

    x0  = clip(x0_model(x_t))
    eps' = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)          ("official": re-derived)
    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps'

"diffusers" keeps the model's epsilon instead of eps'. The noise schedule (linear betas, Lin et
al.'s zero-terminal-SNR rescale) and the timestep spacings are also written out here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusion_oracles import one_thread  # noqa: F401

from harness.diffusion import DiffusionSpec, per_image_generators, sample_loop, spaced_timesteps

T = 1000
SHAPE = (2, 1, 4, 4)


def alphas_cumprod(zero_snr: bool) -> np.ndarray:
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float32).astype(np.float64)
    ab = np.cumprod(1.0 - betas)
    if zero_snr:  # Lin et al. 2024, Algorithm 1: shift sqrt(ab) to 0 at T-1, keep it at t = 0
        s = np.sqrt(ab)
        s0, sT = s[0], s[-1]
        s = (s - sT) * s0 / (s0 - sT)
        ab = s**2
    return ab


def timesteps(spacing: str, steps: int) -> list[int]:
    if spacing == "linspace":
        return [int(v) for v in np.linspace(0, T - 1, steps).round()[::-1]]
    if spacing == "trailing":
        return [int(v) for v in np.round(np.arange(T, 0, -T / steps)) - 1]
    raise ValueError(spacing)


def toy_model(prediction_type: str, zero_snr: bool):
    """A model whose implied x_0 = 1.3 sin(2 x_t) + 0.2 leaves [-1, 1] for part of the pixels, so the
    clip binds but not everywhere; it outputs the epsilon or v that implies that x_0."""
    ab_all = torch.from_numpy(alphas_cumprod(zero_snr))

    def fn(x, t, y, i):
        ab = ab_all[t].reshape(-1, 1, 1, 1).to(x.dtype)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = 1.3 * torch.sin(2.0 * x) + 0.2
        return (x - a * x0) / s if prediction_type == "epsilon" else (a * x - x0) / s

    return fn


def reference_ddim(noise, prediction_type, zero_snr, spacing, steps, mode):
    ab_all = alphas_cumprod(zero_snr)
    ts = timesteps(spacing, steps)
    model = toy_model(prediction_type, zero_snr)
    x = noise.double()
    bound = 0
    for i, t in enumerate(ts):
        ab = float(ab_all[t])
        ab_prev = float(ab_all[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        out = model(x, torch.full((x.shape[0],), t), None, i).double()
        a, s = ab**0.5, (1 - ab) ** 0.5
        if prediction_type == "epsilon":
            x0, eps = (x - s * out) / a, out
        else:  # v = a eps - s x0  =>  x0 = a x - s v,  eps = a v + s x
            x0, eps = a * x - s * out, a * out + s * x
        if mode != "none":
            bound += int((x0.abs() > 1).sum())
            x0 = x0.clamp(-1, 1)
        if mode == "official":
            eps = (x - a * x0) / s
        x = ab_prev**0.5 * x0 + (1 - ab_prev) ** 0.5 * eps
    return x, bound


CASES = [
    ("epsilon", False, "linspace", 10),
    ("v_prediction", True, "trailing", 8),
    ("v_prediction", False, "linspace", 6),
]


@pytest.mark.parametrize("prediction_type,zero_snr,spacing,steps", CASES)
def test_ddim_clip_modes_match_adm_closed_form(prediction_type, zero_snr, spacing, steps):
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * 1.5
    got = {}
    for mode in ("official", "diffusers", "none"):
        spec = DiffusionSpec(
            prediction_type=prediction_type,
            zero_terminal_snr=zero_snr,
            timestep_spacing=spacing,
            learn_sigma=False,
            clip_mode=mode,
        )
        assert spaced_timesteps(spec, steps).tolist() == timesteps(spacing, steps)
        got[mode] = sample_loop(
            toy_model(prediction_type, zero_snr),
            SHAPE,
            None,
            spec,
            sampler="ddim",
            num_steps=steps,
            generator_per_image=noise.clone(),
        )
        ref, bound = reference_ddim(noise, prediction_type, zero_snr, spacing, steps, mode)
        if mode != "none":
            assert bound > 0, "the toy model must make the clip bind"
        torch.testing.assert_close(got[mode].double(), ref, rtol=1e-4, atol=1e-4)
    # the three semantics are different samplers on this model
    assert (got["official"] - got["diffusers"]).abs().max() > 1e-2
    assert (got["official"] - got["none"]).abs().max() > 1e-2


def test_ddpm_official_equals_diffusers_and_clipping_matters():
    """DDPM's posterior mean is built from the clipped x_0 alone (ADM p_sample and diffusers alike),
    so there is no epsilon to re-derive: the two modes are the same sampler; 'none' is not."""
    out = {}
    for mode in ("official", "diffusers", "none"):
        spec = DiffusionSpec(prediction_type="epsilon", learn_sigma=False, clip_mode=mode)
        out[mode] = sample_loop(
            toy_model("epsilon", False),
            SHAPE,
            None,
            spec,
            sampler="ddpm",
            num_steps=6,
            generator_per_image=per_image_generators(0, 0, SHAPE[0]),
        )
    assert torch.equal(out["official"], out["diffusers"])
    assert (out["official"] - out["none"]).abs().max() > 1e-2


def test_unknown_clip_mode_is_refused():
    with pytest.raises(ValueError, match="clip_mode"):
        DiffusionSpec(clip_mode="adm")
