"""Diffusion process specification and the per-timestep tables taken from diffusers.

The forward process is diffusers' `DDPMScheduler` (Ho et al. 2020): by default 1000 steps with
linear betas 1e-4 .. 0.02, as in DiT and FPDM (docs/paper-notes.md §3.2). Options used by the FPDM paper:
v-prediction (Salimans & Ho 2022) and zero-terminal-SNR rescaling (Lin et al. 2024, diffusers'
`rescale_betas_zero_snr`). Every schedule number here comes from the diffusers scheduler object;
only the Gaussian posterior q(x_{t-1} | x_t, x_0) of IDDPM (Nichol & Dhariwal 2021, Eq. 10-12),
which diffusers exposes only one scalar timestep at a time, is tabulated from its arrays.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from diffusers import DDPMScheduler

from harness.diffusion.weighting import (
    PREDICTION_TYPES,
    expand_to,
    list_mse_weightings,
    predict_x0,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "DiffusionSpec",
    "DiffusionTables",
    "diffusion_tables",
    "make_train_scheduler",
    "diffusion_spec",
    "expand_to",
    "predict_x0",
    "PREDICTION_TYPES",
]

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# How a clipped x_0 enters the sampler's update (harness.diffusion.samplers, docs/architecture.md):
# "official" = ADM's ddim_sample (the DiT / FPDM code): epsilon is re-derived from the clipped x_0;
# "diffusers" = diffusers' default (use_clipped_model_output=False): the model's epsilon is kept;
# "none" = no clipping.
CLIP_MODES = ("official", "diffusers", "none")


@dataclass(frozen=True)
class DiffusionSpec:
    """Everything that defines the diffusion process of one model (training and sampling).

    - `prediction_type`: what channels `[:C]` of the model output predict, "epsilon" or "v_prediction".
    - `zero_terminal_snr`: rescale betas so alpha_bar_{T-1} = 0 (Lin et al.). Needs v-prediction
      (epsilon cannot be inverted to x_0 at SNR 0) and a sampling spacing that starts at t = T-1,
      i.e. "linspace" (the official code's) or "trailing" (Lin et al.'s choice); "leading" starts at
      T - T/S and would never see the zero-SNR step, so it is refused instead of silently changed.
    - `learn_sigma`: the model outputs 2C channels, `[C:]` interpolate the log-variance between the
      posterior variance and beta_t (IDDPM "learned_range"); training adds the VB term. Without it
      DDPM sampling uses the fixed variance beta_t ("fixed_large"), as DiT does.
    - `timestep_spacing`: how S sampling steps are placed in [0, T) (diffusers' names, Lin et al.
      Table 2). "linspace" = evenly spaced including t = T-1 and t = 0, which is the paper's
      respacing (IDDPM `space_timesteps`, `create_diffusion(str(S))`, docs/paper-notes.md §4.5),
      placed exactly as that function rounds (`harness.diffusion.samplers.adm_space_timesteps`).
    - `clip_mode`: clip the predicted x_0 to [-clip_sample_range, clip_sample_range] while
      sampling, and how the clipped x_0 enters the update (`CLIP_MODES`): "official" (ADM's
      `ddim_sample`, as the DiT and FPDM code run it: epsilon re-derived from the clipped x_0),
      "diffusers" (clip x_0, keep the model's epsilon for the DDIM direction) or "none". For DDPM
      the posterior mean is built from x_0 alone, so "official" and "diffusers" coincide. "none"
      by default: right for latents (SD-VAE latents exceed [-1, 1], and DiT/FPDM sample latents
      with clip_denoised=False); clip pixel data in [-1, 1]. Dynamic thresholding is never used.
    - `mse_weighting`: see `harness.diffusion.weighting` ("none" = DiT; "p2" = official FPDM code with v-pred).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False
    learn_sigma: bool = True
    timestep_spacing: str = "linspace"
    clip_mode: str = "none"
    clip_sample_range: float = 1.0
    mse_weighting: str = "none"

    def __post_init__(self) -> None:
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("clip_mode", self.clip_mode, CLIP_MODES)
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps={self.num_train_timesteps} must be >= 2")
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError(
                "zero_terminal_snr=True needs prediction_type='v_prediction' (epsilon cannot be "
                "converted to x_0 where alpha_bar = 0); set both, as the FPDM paper does"
            )
        if self.zero_terminal_snr and self.timestep_spacing == "leading":
            raise ValueError(
                "zero_terminal_snr=True needs timestep_spacing='linspace' (or 'trailing'): 'leading' "
                "never samples from t = T-1 where the SNR is zero (Lin et al. 2024, Sec. 3.3)"
            )
        _check_choice("mse_weighting", self.mse_weighting, tuple(list_mse_weightings()))

    @property
    def clip_sample(self) -> bool:
        """Whether sampling clips the predicted x_0 at all."""
        return self.clip_mode != "none"

    def scheduler_kwargs(self) -> dict:
        """Keyword arguments shared by every diffusers scheduler built from this spec."""
        return dict(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            prediction_type=self.prediction_type,
            rescale_betas_zero_snr=self.zero_terminal_snr,
            timestep_spacing=self.timestep_spacing,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def diffusion_spec(cfg: DictConfig) -> DiffusionSpec:
    """The spec of a resolved job config (``diffusion.*``, ``model.learn_sigma``, the effective
    ``sample.clip_mode``)."""
    d = cfg.diffusion
    return DiffusionSpec(
        num_train_timesteps=d.num_train_timesteps,
        beta_schedule=d.beta_schedule,
        beta_start=d.beta_start,
        beta_end=d.beta_end,
        prediction_type=d.prediction_type,
        zero_terminal_snr=d.zero_terminal_snr,
        learn_sigma=cfg.model.learn_sigma,
        timestep_spacing=d.timestep_spacing,
        clip_mode=effective_clip_mode(cfg),
        mse_weighting=d.mse_weighting,
    )


def effective_clip_mode(cfg: DictConfig) -> str:
    """``sample.clip_mode``, except that latents are never clipped (SD-VAE latents exceed [-1, 1];
    DiT and FPDM sample latents with clip_denoised=False). The protocol label shows the result."""
    return "none" if cfg.data.name == "latents" else cfg.sample.clip_mode


def _check_choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not one of {list(valid)}; pick one of those")


def make_train_scheduler(spec: DiffusionSpec) -> DDPMScheduler:
    """The forward (noising) process: diffusers' DDPMScheduler configured from `spec`."""
    return DDPMScheduler(
        **spec.scheduler_kwargs(),
        variance_type="learned_range" if spec.learn_sigma else "fixed_large",
        clip_sample=spec.clip_sample,
        clip_sample_range=spec.clip_sample_range,
    )


class DiffusionTables(NamedTuple):
    """Per-timestep coefficients, float64, shape (T,). Index with a (B,) long tensor of timesteps."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef_x0: torch.Tensor
    posterior_mean_coef_xt: torch.Tensor

    def to(self, device: torch.device) -> DiffusionTables:
        return DiffusionTables(*(v.to(device) for v in self))


@functools.lru_cache(maxsize=32)
def diffusion_tables(spec: DiffusionSpec) -> DiffusionTables:
    """Posterior q(x_{t-1} | x_t, x_0) coefficients from the scheduler's betas / alphas_cumprod.

    Cached per spec (the spec is frozen and hashable); tensors live on the CPU, move them with `.to`.
    """
    sched = make_train_scheduler(spec)
    betas = sched.betas.double()
    alphas = sched.alphas.double()
    ab = sched.alphas_cumprod.double()
    ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
    # Posterior variance is 0 at t = 0; IDDPM clips its log by reusing the t = 1 value.
    post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    return DiffusionTables(
        betas=betas,
        alphas_cumprod=ab,
        alphas_cumprod_prev=ab_prev,
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef_x0=betas * ab_prev.sqrt() / (1.0 - ab),
        posterior_mean_coef_xt=(1.0 - ab_prev) * alphas.sqrt() / (1.0 - ab),
    )
