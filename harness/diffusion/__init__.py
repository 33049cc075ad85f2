"""Diffusion through diffusers' schedulers: process spec, training loss, samplers.

- `spec`: `DiffusionSpec` (1000 linear-beta steps, epsilon / v-prediction, zero terminal SNR,
  learned sigma, timestep spacing) and the diffusers-derived per-timestep tables.
- `weighting`: epsilon / v -> x_0 and the MSE weighting registry (none, p2).
- `loss`: `training_loss` (MSE plus DiT/IDDPM's hybrid VB term when sigma is learned).
- `samplers`: `sample_loop` with a registry of `ddpm`, `ddim`, `dpmpp`, `euler`, `heun`, `unipc`; CFG; per-image seeds.

FPDM paper Sec. 4.1 and the official code (docs/paper-notes.md §3.2, §4.5).
"""

from harness.diffusion.loss import (
    discretized_gaussian_log_likelihood,
    normal_kl,
    training_loss,
    vb_terms_bpd,
)
from harness.diffusion.samplers import (
    Sampler,
    SampleSchedule,
    get_sampler,
    list_samplers,
    make_sample_scheduler,
    per_image_generators,
    register_sampler,
    sample_loop,
    spaced_timesteps,
)
from harness.diffusion.spec import (
    DiffusionSpec,
    DiffusionTables,
    diffusion_tables,
    make_train_scheduler,
    predict_x0,
)
from harness.diffusion.weighting import get_mse_weighting, list_mse_weightings, register_mse_weighting

__all__ = [
    "DiffusionSpec",
    "DiffusionTables",
    "SampleSchedule",
    "Sampler",
    "diffusion_tables",
    "discretized_gaussian_log_likelihood",
    "get_mse_weighting",
    "get_sampler",
    "list_mse_weightings",
    "list_samplers",
    "make_sample_scheduler",
    "make_train_scheduler",
    "normal_kl",
    "per_image_generators",
    "predict_x0",
    "register_mse_weighting",
    "register_sampler",
    "sample_loop",
    "spaced_timesteps",
    "training_loss",
    "vb_terms_bpd",
]
