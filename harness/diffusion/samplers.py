"""Sampling loops on diffusers schedulers: DDPM (ancestral), DDIM (eta), DPM-Solver++, Euler, UniPC.

docs/paper-notes.md §4.5: DDPM and DDIM (eta = 0) are the paper's samplers; DPM-Solver++ (Lu et al.
2022, 2nd-order multistep), Euler (Karras et al. 2022, Algorithm 1's first-order step on the
probability-flow ODE), Heun (its 2nd-order step, two evaluations per step) and UniPC (Zhao et al.
2023, predictor-corrector multistep) are modern references. A block budget counts model
evaluations: every sampler but Heun evaluates once per step, and for Heun ``num_steps`` counts the
evaluations themselves (HeunSampler). S sampling steps are placed by `spec.timestep_spacing` (`spaced_timesteps`); the model
always receives the *original* timestep indices in [0, T), as IDDPM respacing does. "linspace" is
the official respacing, IDDPM's `space_timesteps(T, str(S))`, placed here as that function places it
(`adm_space_timesteps`): diffusers' `np.linspace(...).round()` computes the same strides another way,
and where a stride lands on .5 the two round apart, so at 278 of the step counts 1..1000 (S = 21, 23,
35, 93, ...) one or more timesteps differ by one, e.g. 499 for IDDPM's 500 (docs/paper-notes.md
§4.5). "leading" and "trailing" are diffusers' own.

Respacing and DDIM: diffusers' DDIMScheduler derives the previous timestep as t - T // S, which is
wrong whenever the gaps are unequal ("linspace", or "trailing" with S not dividing T). We therefore
run DDIM, like IDDPM's `respace.py`, on the respaced S-step chain: a DDIMScheduler whose
alphas_cumprod are those of the S chosen timesteps; its step math is untouched.

Clipping (`spec.clip_mode`): DDIM with "official" passes diffusers' `use_clipped_model_output=True`,
which re-derives eps' = (x_t - sqrt(ab_t) x0_clipped) / sqrt(1 - ab_t) exactly as ADM's `ddim_sample`
(`_predict_eps_from_xstart`) does before x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps';
"diffusers" keeps the model's epsilon (or, for v, sqrt(ab) v + sqrt(1 - ab) x_t). DDPM's posterior
mean uses only the clipped x_0 in both libraries, so there the two modes are the same sampler.

Classifier-free guidance (Ho & Salimans 2022): with cfg_scale != 1, cond and uncond (null label)
batches run as one concatenated batch; guided = uncond + s * (cond - uncond) on *all* prediction
channels [:C], and the variance channels [C:] are the cond ones. DiT's `forward_with_cfg` (and the
FPDM code) guide only the first 3 channels, a quirk we deliberately do not copy.

Randomness: image i uses its own generator (seed base + i) for its initial noise and for every
ancestral noise draw (diffusers' `randn_tensor` takes a list of generators, one per batch row),
so samples do not depend on batch size, sharding or device count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from baselines.registry import Registry
from harness.diffusion.spec import DiffusionSpec, make_train_scheduler
from harness.runtime.progress import progress_bar

SampleModelFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", int], torch.Tensor]


@dataclass
class SampleSchedule:
    """A ready-to-step scheduler plus the timesteps of each sampling step (sampling order).

    `model_timesteps[i]` is the original index in [0, T) given to the model at step i;
    `step_timesteps[i]` is what `scheduler.step` expects (differs only for respaced DDIM).
    """

    scheduler: object
    model_timesteps: torch.Tensor
    step_timesteps: torch.Tensor
    use_clipped_model_output: bool = False  # DDIM: eps re-derived from the clipped x_0 (clip_mode official)


class Sampler:
    """One sampling algorithm. Subclasses build the schedule and take one step."""

    name: str = ""
    uses_variance_channels: bool = False  # pass the learned-variance channels to `step`

    def make_schedule(self, spec: DiffusionSpec, num_steps: int, device: torch.device) -> SampleSchedule:
        raise NotImplementedError

    def is_stochastic(self, eta: float) -> bool:
        return False

    def step(self, sched: SampleSchedule, i: int, out: torch.Tensor, x: torch.Tensor, *, generators, eta: float):
        raise NotImplementedError

    def initial_sample(self, sched: SampleSchedule, noise: torch.Tensor) -> torch.Tensor:
        """The state the loop starts from, given unit Gaussian noise (a sigma-space sampler scales it)."""
        return noise

    def model_input(self, sched: SampleSchedule, i: int, x: torch.Tensor) -> torch.Tensor:
        """What the model sees at step ``i`` (a sigma-space sampler maps its state back to x_t)."""
        return x

    def check_steps(self, num_steps: int) -> None:
        """Raise ``ValueError`` (one line naming ``sample.steps``) if the sampler cannot take
        ``num_steps`` model evaluations; every evaluation-per-step sampler can take any count."""


SAMPLERS: Registry[Sampler] = Registry("sampler", key="sample.sampler")
get_sampler, list_samplers = SAMPLERS.get, SAMPLERS.list


def register_sampler(name: str) -> Callable[[type[Sampler]], type[Sampler]]:
    """Class decorator: registers one instance of the ``Sampler`` subclass under ``name``."""

    def deco(cls: type[Sampler]) -> type[Sampler]:
        inst = cls()
        inst.name = name
        SAMPLERS.register(name, inst)
        return cls

    return deco


def adm_space_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """IDDPM's ``space_timesteps(T, str(S))`` (one section; ``create_diffusion(str(S))`` in the DiT
    and FPDM code), descending: a float index advanced by (T-1)/(S-1) and rounded with Python's
    round at each step, so t = T-1 and t = 0 are both sampled (docs/paper-notes.md §4.5)."""
    stride = 1.0 if num_steps <= 1 else (num_train_timesteps - 1) / (num_steps - 1)
    index, taken = 0.0, set()
    for _ in range(num_steps):
        taken.add(round(index))
        index += stride  # accumulated, not i * stride: the two round 499.5 differently
    return sorted(taken, reverse=True)


# spacings placed here rather than by diffusers' formula (see the module docstring)
_EXACT_SPACINGS: dict[str, Callable[[int, int], list[int]]] = {"linspace": adm_space_timesteps}


def spaced_timesteps(spec: DiffusionSpec, num_steps: int) -> torch.Tensor:
    """The S original timesteps (descending) that `spec.timestep_spacing` picks."""
    _check_steps(spec, num_steps)
    exact = _EXACT_SPACINGS.get(spec.timestep_spacing)
    if exact is not None:
        return torch.tensor(exact(spec.num_train_timesteps, int(num_steps)), dtype=torch.long)
    s = DDPMScheduler(**spec.scheduler_kwargs())
    s.set_timesteps(num_steps)
    return s.timesteps.clone()


def _check_steps(spec: DiffusionSpec, num_steps: int) -> None:
    if not 1 <= int(num_steps) <= spec.num_train_timesteps:
        raise ValueError(f"num_steps={num_steps} must be in [1, {spec.num_train_timesteps}] (num_train_timesteps)")


@register_sampler("ddpm")
class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020); with learned sigma diffusers' "learned_range" variance."""

    uses_variance_channels = True

    def make_schedule(self, spec, num_steps, device):
        s = make_train_scheduler(spec)  # variance_type learned_range / fixed_large (DiT's choice)
        # previous_timestep() follows the given list: correct respacing
        s.set_timesteps(timesteps=spaced_timesteps(spec, num_steps).tolist())
        return SampleSchedule(s, s.timesteps.clone(), s.timesteps)

    def is_stochastic(self, eta):
        return True

    def step(self, sched, i, out, x, *, generators, eta):
        return sched.scheduler.step(out, sched.step_timesteps[i], x, generator=generators).prev_sample


@register_sampler("ddim")
class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) on the respaced chain; eta = 0 deterministic, eta = 1 ~ DDPM."""

    def make_schedule(self, spec, num_steps, device):
        orig = spaced_timesteps(spec, num_steps)  # descending
        ab_full = make_train_scheduler(spec).alphas_cumprod
        ab = ab_full[orig.flip(0)]  # ascending chain 0..S-1
        # Betas of the respaced chain (IDDPM respace.py); diffusers recomputes alphas_cumprod from them.
        betas = 1.0 - ab / torch.cat([ab.new_ones(1), ab[:-1]])
        s = DDIMScheduler(
            num_train_timesteps=len(orig),
            trained_betas=betas.tolist(),
            prediction_type=spec.prediction_type,
            clip_sample=spec.clip_sample,
            clip_sample_range=spec.clip_sample_range,
            set_alpha_to_one=True,  # the last step lands on x_0 (alpha_bar = 1)
            steps_offset=0,
            timestep_spacing="leading",  # stride 1 over the S respaced indices
        )
        s.alphas_cumprod = ab.clone()  # exact values; cumprod of float32 betas drifts slightly
        s.set_timesteps(len(orig))
        return SampleSchedule(s, orig, s.timesteps, use_clipped_model_output=spec.clip_mode == "official")

    def is_stochastic(self, eta):
        return eta > 0

    def step(self, sched, i, out, x, *, generators, eta):
        gens = generators if eta > 0 else None
        return sched.scheduler.step(
            out,
            sched.step_timesteps[i],
            x,
            eta=eta,
            generator=gens,
            use_clipped_model_output=sched.use_clipped_model_output,
        ).prev_sample


def _multistep_schedule(cls, spec: DiffusionSpec, num_steps: int, device, **extra) -> SampleSchedule:
    """A 2nd-order multistep scheduler (DPM-Solver++, UniPC) on its own timestep placement
    (``spec.timestep_spacing``, ending at sigma = 0); thresholding with ``sample_max_value = r``
    clamps x_0 to [-r, r]: plain clipping."""
    _check_steps(spec, num_steps)
    s = cls(
        **spec.scheduler_kwargs(),
        **extra,
        solver_order=2,
        thresholding=spec.clip_sample,
        sample_max_value=spec.clip_sample_range,
    )
    s.set_timesteps(num_steps, device=device)
    return SampleSchedule(s, s.timesteps.clone(), s.timesteps)


@register_sampler("dpmpp")
class DPMSolverPPSampler(Sampler):
    """DPM-Solver++ (2M), deterministic; diffusers' own spacing (it ends at sigma = 0)."""

    def make_schedule(self, spec, num_steps, device):
        return _multistep_schedule(DPMSolverMultistepScheduler, spec, num_steps, device, algorithm_type="dpmsolver++")

    def step(self, sched, i, out, x, *, generators, eta):
        return sched.scheduler.step(out, sched.step_timesteps[i], x).prev_sample


@register_sampler("euler")
class EulerSampler(Sampler):
    """Euler on the probability-flow ODE in sigma space (diffusers' EulerDiscreteScheduler, Karras
    et al. 2022), at the same integer timesteps as DDPM and DDIM (``spec.timestep_spacing``): its
    own ``linspace`` interpolates sigmas at fractional timesteps the model never sees. The state is
    x_t / sqrt(alpha_bar_t); ``model_input`` hands the model x_t. x_0 is not clipped (diffusers'
    Euler has no clipping)."""

    def make_schedule(self, spec, num_steps, device):
        ts = spaced_timesteps(spec, num_steps)
        s = EulerDiscreteScheduler(**spec.scheduler_kwargs())
        s.set_timesteps(timesteps=[int(t) for t in ts], device=device)
        return SampleSchedule(s, ts, s.timesteps)

    def initial_sample(self, sched, noise):
        return noise * sched.scheduler.init_noise_sigma

    def model_input(self, sched, i, x):
        return sched.scheduler.scale_model_input(x, sched.step_timesteps[i])

    def step(self, sched, i, out, x, *, generators, eta):
        return sched.scheduler.step(out, sched.step_timesteps[i], x).prev_sample


@register_sampler("heun")
class HeunSampler(EulerSampler):
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1) on the probability-flow ODE
    (diffusers' HeunDiscreteScheduler), at the harness's integer timesteps. It evaluates the model
    twice per step except the last, so its ``num_steps`` counts model *evaluations*, the unit every
    block budget is made of (an FPDM schedule gives each evaluation its own iterations): E
    evaluations are (E + 1) / 2 timesteps, so E must be odd (a DiT at depth d spends E * d block
    passes)."""

    def check_steps(self, num_steps):
        if int(num_steps) % 2 == 0:
            raise ValueError(
                f"sample.sampler=heun evaluates the model twice per step but the last, so its {int(num_steps)} "
                f"model evaluations (sample.steps, or sample.budget / blocks per evaluation) must be odd: "
                f"use {int(num_steps) - 1} or {int(num_steps) + 1}"
            )

    def make_schedule(self, spec, num_steps, device):
        self.check_steps(num_steps)
        ts = spaced_timesteps(spec, (int(num_steps) + 1) // 2)
        kwargs = spec.scheduler_kwargs()
        if kwargs.pop("rescale_betas_zero_snr"):  # Heun has no such option: the same betas, given directly,
            ab = make_train_scheduler(spec).alphas_cumprod.double().clone()
            ab[-1] = 2.0**-24  # with a finite last sigma, as diffusers' Euler does for zero terminal SNR
            kwargs["trained_betas"] = (1.0 - ab / torch.cat([ab.new_ones(1), ab[:-1]])).tolist()
        s = HeunDiscreteScheduler(**kwargs)
        s.set_timesteps(timesteps=[int(t) for t in ts], device=device)
        return SampleSchedule(s, s.timesteps.round().long(), s.timesteps)


@register_sampler("unipc")
class UniPCSampler(Sampler):
    """UniPC (Zhao et al. 2023), 2nd-order predictor-corrector on data predictions (bh2, the
    diffusers default); like DPM-Solver++ it places its own timesteps (``spec.timestep_spacing``)
    and ends at sigma = 0, and clips x_0 through thresholding at ``clip_sample_range``."""

    def make_schedule(self, spec, num_steps, device):
        return _multistep_schedule(UniPCMultistepScheduler, spec, num_steps, device)

    def step(self, sched, i, out, x, *, generators, eta):
        return sched.scheduler.step(out, sched.step_timesteps[i], x).prev_sample


def make_sample_scheduler(
    spec: DiffusionSpec, sampler: str, num_steps: int, device: torch.device | str | None = None
) -> SampleSchedule:
    """The configured diffusers scheduler for `sampler` with `num_steps` steps (see SampleSchedule)."""
    return get_sampler(sampler).make_schedule(spec, num_steps, torch.device(device or "cpu"))


def per_image_generators(
    base_seed: int, start: int, count: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """Generators for images start .. start+count-1; image i is seeded with base_seed + i."""
    return [torch.Generator(device=device).manual_seed(int(base_seed) + start + k) for k in range(count)]


def _guide(out: torch.Tensor, C: int, scale: float) -> torch.Tensor:
    cond, uncond = out.chunk(2, dim=0)
    guided = uncond[:, :C] + scale * (cond[:, :C] - uncond[:, :C])
    return torch.cat([guided, cond[:, C:]], dim=1)


@torch.no_grad()
def sample_loop(
    model_fn: SampleModelFn,
    shape: Sequence[int],
    y: torch.Tensor | None,
    spec: DiffusionSpec,
    *,
    sampler: str,
    num_steps: int,
    generator_per_image: Sequence[torch.Generator] | torch.Tensor,
    eta: float = 0.0,
    cfg_scale: float = 1.0,
    null_label: int | None = None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Run the reverse process and return x_0 of shape `shape` (B, C, ...).

    - `model_fn(x, t_batch, y, step_index)`: t_batch are original timesteps (B,) long; step_index
      (0 = noisiest) lets FPDM pick its per-step iterations and warm start.
    - `generator_per_image`: a list of B generators (initial and ancestral noise per image), or an
      initial noise tensor (then only deterministic samplers: ddim with eta = 0, dpmpp).
    - `eta`: DDIM only (0 = deterministic); ddpm is always ancestral, dpmpp always deterministic.
    - `device`: where to sample; default the device of `y`, else of the noise tensor, else CPU.
      CPU generators work for CUDA sampling (noise is drawn on the CPU and moved), which also
      makes samples independent of the device.
    - `on_step(step_index, t, x)` is called after each step with the updated sample.
    """
    impl = get_sampler(sampler)
    C = int(shape[1])
    noise, generators = _initial_noise(generator_per_image, shape, impl, sampler, eta)
    if device is None:
        device = y.device if isinstance(y, torch.Tensor) else noise.device if noise is not None else "cpu"
    device = torch.device(device)
    guided = cfg_scale != 1.0
    y_in = _labels_in(y, guided, null_label, device)
    sched = impl.make_schedule(spec, num_steps, device)
    x = noise.to(device) if noise is not None else randn_tensor(tuple(shape), generator=generators, device=device)
    x = impl.initial_sample(sched, x)
    steps = range(len(sched.model_timesteps))
    if progress:
        steps = progress_bar(iterable=steps, desc=f"{sampler} x{num_steps}")
    for i in steps:
        t = int(sched.model_timesteps[i])
        x_model = impl.model_input(sched, i, x)
        x_in = torch.cat([x_model, x_model]) if guided else x_model
        t_batch = torch.full((x_in.shape[0],), t, device=device, dtype=torch.long)
        out = _checked(model_fn(x_in, t_batch, y_in, i).to(x.dtype), x_in, spec)
        if guided:
            out = _guide(out, C, cfg_scale)
        if not (impl.uses_variance_channels and spec.learn_sigma):
            out = out[:, :C]
        x = impl.step(sched, i, out, x, generators=generators, eta=eta)
        if on_step is not None:
            on_step(i, t, x)
    return x


def _initial_noise(generator_per_image, shape: Sequence[int], impl: Sampler, sampler: str, eta: float):
    """(initial noise tensor or None, per-image generators or None) after checking they fit ``shape``."""
    if isinstance(generator_per_image, torch.Tensor):
        noise = generator_per_image
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"initial noise shape {tuple(noise.shape)} != shape {tuple(shape)}")
        if impl.is_stochastic(eta):
            raise ValueError(
                f"sampler={sampler!r} (eta={eta}) draws noise every step: pass a list of per-image generators"
            )
        return noise, None
    generators = list(generator_per_image)
    if len(generators) != int(shape[0]):
        raise ValueError(
            f"generator_per_image has {len(generators)} generators for a batch of {int(shape[0])}; give one per image"
        )
    return None, generators


def _labels_in(y: torch.Tensor | None, guided: bool, null_label: int | None, device: torch.device):
    """The labels the model sees: with guidance the batch's labels, then as many null labels."""
    if guided and (null_label is None or y is None):
        raise ValueError("cfg_scale != 1 needs class labels y and null_label (the model's unconditional class index)")
    if y is None:
        return None
    y = y.to(device)
    return torch.cat([y, torch.full_like(y, int(null_label))]) if guided else y


def _checked(out: torch.Tensor, x_in: torch.Tensor, spec: DiffusionSpec) -> torch.Tensor:
    want_c = 2 * x_in.shape[1] if spec.learn_sigma else x_in.shape[1]
    if out.shape[1] != want_c or out.shape[0] != x_in.shape[0]:
        raise ValueError(
            f"model output shape {tuple(out.shape)} does not match learn_sigma={spec.learn_sigma}: expected "
            f"{(x_in.shape[0], want_c, *x_in.shape[2:])}; set DiffusionSpec.learn_sigma to the model's"
        )
    return out
