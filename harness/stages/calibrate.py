"""The calibration stage of ``sample.schedule=adaptive`` and ``greedy`` (cached like any stage).

Both schedules are decided on a small calibration batch with its own seed
(``sample.adaptive.calibration_images`` images, image i seeded ``calibration_seed + i``), never on
the images that are evaluated, and the result is stored content-addressed under
``<cache>/calibrate/<key>/`` (the key hashes the trained model's key and every setting the
calibration depends on), so every job of a sweep and every rerun reuses it:

- ``adaptive``: the relative-residual tolerance at which the mean block passes per image meet
  ``sample.budget`` within one pass (bisection, ``harness.compute.adaptive``);
- ``greedy``: the mean residual after k = 0..K iterations at every step (one sampling with K + 1
  evaluations per step, K = ``max_iters_per_step``), and the water-filling plan on those traces
  (``harness.compute.greedy``).

Block passes count both forwards of classifier-free guidance, as the sample stage records every
schedule (``harness.compute.adaptive``). The calibration is charged in full: the result stores what
it cost when it was computed (samplings, block passes, FLOPs, seconds), so a cached calibration
still reports it, and ``calibrated_plan`` amortises it over the job's ``sample.num_images``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import torch

from harness.compute.adaptive import (
    CALIBRATION_VERSION,
    AdaptiveSetting,
    bisect_tolerance,
    calibration_cost,
    guidance_forwards,
    target_iters,
)
from harness.compute.flops import flop_breakdown
from harness.compute.greedy import greedy_allocation
from harness.compute.plan import SamplingPlan
from harness.runtime.matmul_precision import stage_tf32, tf32_matmuls
from harness.stages.cache import ArtifactCache, _plain, config_hash, drop_default_knobs

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import nn

    from harness.data import DataSource
    from harness.diffusion.spec import DiffusionSpec

CALIBRATED = ("adaptive", "greedy")
# sample keys that do not change what the calibration batch computes
_NOT_CALIBRATION = ("num_images", "batch_size", "seed", "seed_ranges", "compile", "flops_tolerance", "search")


def calibration_key(cfg: DictConfig, train_key: str) -> str:
    sample = drop_default_knobs("sample", {k: v for k, v in _plain(cfg.sample).items() if k not in _NOT_CALIBRATION})
    return config_hash(
        "calibrate", train_key, sample, _plain(cfg.solver), _plain(cfg.diffusion), {"version": CALIBRATION_VERSION}
    )


def _calibration_sampling(model, data, spec, cfg, steps: int, iters: int, tol: float, device) -> dict:
    """Sample the calibration batch once: every step runs up to ``iters`` evaluations with ``tol``.
    Returns the evaluations per image (N,; with guidance its conditional and unconditional rows
    summed) and, per step, the mean residual of each evaluation over all rows."""
    from fpdm.model import SolveTrace
    from fpdm.reuse import WarmStart
    from fpdm.solvers import make_solver
    from harness.diffusion import sample_loop
    from harness.stages.sample import image_labels

    sc, ac = cfg.sample, cfg.sample.adaptive
    knobs = {k: v for k, v in dict(cfg.solver).items() if k not in ("name", "tol")}
    solver = make_solver(cfg.solver.name, **knobs)
    n = int(ac.calibration_images)
    labels, gens = image_labels(ac.calibration_seed, 0, n, data.num_classes)
    warm = WarmStart() if sc.reuse else None
    per_image = torch.zeros(n, dtype=torch.long, device=device)
    traces: list[list[float]] = []

    def model_fn(x, t, y, step_index):
        trace = SolveTrace()
        out = model(x, t, y, iters=iters, solver=solver, tol=tol, warm_start=warm, trace=trace)
        st = trace.solve
        per_image.add_(st.nfe_per_sample.view(-1, n).sum(0))
        traces.append(torch.nan_to_num(st.rel_residuals.double(), nan=0.0).mean(1).tolist())
        return out

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=sc.precision == "bf16")
    with torch.inference_mode(), autocast:
        sample_loop(
            model_fn,
            (n, data.channels, data.image_size, data.image_size),
            labels.to(device),
            spec,
            sampler=sc.sampler,
            num_steps=steps,
            generator_per_image=gens,
            eta=sc.eta,
            cfg_scale=sc.cfg_scale,
            null_label=data.num_classes,
            device=device,
        )
    return {"per_image": per_image.cpu(), "traces": traces}


def calibrate(
    model: nn.Module, data: DataSource, spec: DiffusionSpec, cfg: DictConfig, plan: SamplingPlan, device: torch.device
) -> dict:
    """The stage's work: the tolerance (adaptive) or the greedy plan, with what it was decided on.
    It samples as the sample stage will, so under the same ``sample.tf32``."""
    with tf32_matmuls(stage_tf32(cfg.sample, "sample"), device):
        return _calibrate(model, data, spec, cfg, plan, device)


def _calibrate(model, data, spec, cfg, plan: SamplingPlan, device: torch.device) -> dict:
    """The schedule's result and, beside it, what every calibration sampling cost."""
    spent: list[int] = []  # fixed point evaluations of each sampling, over all its rows

    def sampling(iters: int, tol: float) -> dict:
        run = _calibration_sampling(model, data, spec, cfg, plan.steps, iters, tol, device)
        spent.append(int(run["per_image"].sum()))
        return run

    t0 = time.perf_counter()
    out = _CALIBRATIONS[cfg.sample.schedule](sampling, cfg, plan)
    seconds = time.perf_counter() - t0  # each sampling ends reading its counts to the host
    g = guidance_forwards(cfg.sample.cfg_scale)
    forwards = int(cfg.sample.adaptive.calibration_images) * plan.steps * g
    cost = calibration_cost(spent, forwards, plan.n_explicit, flop_breakdown(model, data.image_size))
    return {**out, **cost, "time_s": seconds, "guidance_forwards": g}


def _greedy(sampling, cfg, plan: SamplingPlan) -> dict:
    """One sampling with K + 1 evaluations per step (never stopped early: tol 0) for the traces."""
    cap = int(cfg.sample.adaptive.max_iters_per_step)
    run = sampling(cap + 1, 0.0)
    iters = greedy_allocation(run["traces"], plan.total_iters)  # budget - steps * n_explicit per forward
    return {"schedule": "greedy", "iters": iters, "traces": run["traces"], "max_iters_per_step": cap}


def _adaptive(sampling, cfg, plan: SamplingPlan) -> dict:
    """Bisection on the tolerance; per image both forwards of guidance are counted, against twice
    the budget's iterations (``target_iters``), as the sample stage records the fixed schedules."""
    ac = cfg.sample.adaptive
    cap, g = int(ac.max_iters_per_step), guidance_forwards(cfg.sample.cfg_scale)
    target = target_iters(plan.block_passes, plan.steps, plan.n_explicit, cap, guidance=g)
    explicit = plan.steps * plan.n_explicit * g

    def mean_iters(tol: float) -> float:
        return float(sampling(cap, tol)["per_image"].double().mean())

    cal = bisect_tolerance(
        mean_iters,
        target,
        tol_min=float(ac.tol_min),
        tol_max=float(ac.tol_max),
        max_evals=int(ac.max_evals),
        budget=plan.block_passes,
        explicit=explicit,
        guidance=g,
    )
    return {
        "schedule": "adaptive",
        "tol": cal.tol,
        "mean_iters": cal.mean_iters,
        "target_iters": cal.target_iters,
        "block_passes": cal.mean_iters + explicit,
        "history": [list(h) for h in cal.history],
        "max_iters_per_step": cap,
    }


_CALIBRATIONS = {"adaptive": _adaptive, "greedy": _greedy}  # schedule -> its calibration (CALIBRATED)


def apply_calibration(plan: SamplingPlan, result: dict) -> tuple[SamplingPlan, AdaptiveSetting | None]:
    """The plan the sample stage runs, and the adaptive setting (None for greedy)."""
    if result["schedule"] == "greedy":
        iters = tuple(int(k) for k in result["iters"])
        return dataclasses.replace(
            plan, iters=iters, schedule="greedy", block_passes_per_step=tuple(plan.n_explicit + k for k in iters)
        ), None
    return plan, AdaptiveSetting(float(result["tol"]), int(result["max_iters_per_step"]))


def calibrated_plan(
    cfg: DictConfig,
    cache: ArtifactCache,
    train_key: str,
    model: nn.Module,
    data: DataSource,
    spec: DiffusionSpec,
    plan: SamplingPlan,
    device: torch.device,
) -> tuple[SamplingPlan, AdaptiveSetting | None, dict | None, str | None]:
    """``(plan, adaptive setting or None, calibration summary or None, status)`` for the sample stage;
    schedules other than adaptive / greedy pass through untouched. The summary carries the
    calibration's cost as computed (also when cached: ``cached``) and amortised over this job's
    images (``charged_per_image``)."""
    if cfg.model.name != "fpdm" or cfg.sample.schedule not in CALIBRATED:
        return plan, None, None, None
    summary, status, _ = cache.run_stage(
        "calibrate", calibration_key(cfg, train_key), lambda d: calibrate(model, data, spec, cfg, plan, device)
    )
    new_plan, adaptive = apply_calibration(plan, summary)
    summary = {**summary, "cached": status == "cached", **charged_per_image(summary, int(cfg.sample.num_images))}
    return new_plan, adaptive, summary, status


_AMORTISED = {
    "block_passes_total": "block_passes_per_evaluated_image",
    "flops_total": "flops_per_evaluated_image",
    "time_s": "time_s_per_evaluated_image",
}


def charged_per_image(summary: dict, num_images: int) -> dict:
    """The calibration's cost amortised over the evaluated images: its total / ``sample.num_images``
    (a calibration cached by another job is charged to each job that uses it, in full)."""
    return {per_image: summary[total] / num_images for total, per_image in _AMORTISED.items() if total in summary}


def cached_calibration(cfg: DictConfig, train_key: str) -> dict | None:
    """The cached calibration of this config, if a run made it (``harness.inspect`` prints it)."""
    cache = ArtifactCache(cfg.paths.cache_dir)
    key = calibration_key(cfg, train_key)
    return cache.read_complete("calibrate", key) if cache.is_complete("calibrate", key) else None
