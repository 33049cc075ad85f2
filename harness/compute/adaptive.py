"""Adaptive compute at a fixed budget (``sample.schedule=adaptive``): pure budget math.

The paper leaves tolerance-based allocation as future work (Sec. 6; the official code's
``AdaptiveController`` is commented out). Here every sample runs a sampling step until its relative
residual ``||f(z)-z|| / ||f(z)||`` is below one tolerance, capped at ``max_iters_per_step``
evaluations, and the tolerance is calibrated by bisection so that the *mean* block passes per image
meet ``sample.budget`` within one pass. Mean iterations per image fall as the tolerance grows (a
looser tolerance stops every sample no later), so bisection on ``log(tol)`` brackets the budget.

Block passes per image are counted as the sample stage records every schedule: with
classifier-free guidance (``sample.cfg_scale != 1``) each sampling step runs one batch of 2N rows,
the conditional and the unconditional forward of every image, so a fixed schedule spends twice
``sample.budget`` per image (``block_passes_per_image`` = 120 at budget 60). The solver treats
each row as its own sample, so an image's conditional and unconditional halves stop at the
tolerance independently, and the image is charged the evaluations of both; the calibration
targets that sum against twice the budget's iterations, so adaptive spends what the fixed
schedules spend (``guidance_forwards``).

The calibration itself is charged too (``calibration_cost``): every sampling of the calibration
batch it ran, in evaluations, block passes and FLOPs, which the record amortises over the
evaluated images.

Pure functions only; the calibration run that evaluates them is ``harness.stages.calibrate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from harness.compute.flops import FlopBreakdown, sampling_flops
from harness.compute.plan import BudgetError

KEY_CAP = "sample.adaptive.max_iters_per_step"
# Hashed into the calibrate and sample keys of the calibrated schedules: a change of what a
# calibration targets (how guidance counts) or records (its cost) recalibrates and resamples.
CALIBRATION_VERSION = 2


def guidance_forwards(cfg_scale: float) -> int:
    """Model forwards per image and step: 2 with classifier-free guidance (conditional and
    unconditional), else 1 (``harness.diffusion.samplers``)."""
    return 2 if cfg_scale != 1.0 else 1


@dataclass(frozen=True)
class AdaptiveSetting:
    """What the sample stage runs per step: up to ``max_iters_per_step`` evaluations, stop at ``tol``."""

    tol: float
    max_iters_per_step: int


@dataclass
class Calibration:
    """A calibrated tolerance, the mean iterations per image it spends on the calibration batch, and
    every ``(tol, mean iterations)`` the bisection evaluated (for the record)."""

    tol: float
    mean_iters: float
    target_iters: int
    history: list = field(default_factory=list)


def target_iters(budget: int, steps: int, n_explicit: int, cap: int, guidance: int = 1) -> int:
    """Fixed point iterations per image the budget leaves: ``guidance * (budget - steps * n_explicit)``,
    both forwards of classifier-free guidance summed (``guidance=2``) as the sample stage counts
    them. Each forward must get one iteration per step and at most ``cap`` (else no tolerance can
    spend it)."""
    total = budget - steps * n_explicit
    if total < steps:
        raise BudgetError(
            f"sample.budget={budget} is below one pass per step: {steps} steps need >= {steps * (n_explicit + 1)} "
            f"block passes ({n_explicit} explicit + 1 iteration each); raise sample.budget or lower sample.steps "
            f"to <= {budget // (n_explicit + 1)}"
        )
    if total > steps * cap:
        raise BudgetError(
            f"sample.budget={budget} needs {total / steps:.2f} iterations per step on average, more than "
            f"{KEY_CAP}={cap} allows (no tolerance reaches it); raise {KEY_CAP} to >= {math.ceil(total / steps)} "
            f"or lower sample.budget to <= {steps * (n_explicit + cap)}"
        )
    return guidance * total


def _budget_words(budget: int | None, guidance: int) -> str:
    """``sample.budget=60``, with the per-image count the passes are compared with under guidance."""
    if guidance == 1 or budget is None:
        return f"sample.budget={budget}"
    return f"sample.budget={budget} ({guidance * budget} per image: both forwards of classifier-free guidance)"


def bisect_tolerance(
    mean_iters: Callable[[float], float],
    target: int,
    *,
    tol_min: float,
    tol_max: float,
    max_evals: int = 40,
    budget: int | None = None,
    explicit: int = 0,
    guidance: int = 1,
) -> Calibration:
    """The tolerance whose mean iterations per image lie in ``[target - 1, target]`` (so the mean
    block passes meet the budget within one pass and never exceed it), by bisection on ``log(tol)``.

    ``mean_iters(tol)`` must not increase with ``tol``. ``target``, ``explicit`` (explicit block
    passes per image) and the means count both forwards of guidance (``target_iters``); ``budget``
    is ``sample.budget``, for the messages. Raises ``BudgetError`` naming the keys when no
    tolerance in ``[tol_min, tol_max]`` gets there: the mean jumps over the window (the residual
    stalls: the model never converges that far) or the ends already miss it."""
    history: list = []
    words = _budget_words(budget, guidance)

    def f(tol: float) -> float:
        m = float(mean_iters(tol))
        history.append((tol, m))
        return m

    def passes(m: float) -> float:
        return m + explicit

    lo, hi = tol_min, tol_max
    m_hi = f(hi)
    if m_hi > target:
        raise BudgetError(
            f"sample.schedule=adaptive: even at tol={hi:g} samples spend {passes(m_hi):.2f} block "
            f"passes per image, above {words}; raise sample.budget or "
            f"sample.adaptive.tol_max"
        )
    if m_hi >= target - 1:
        return Calibration(hi, m_hi, target, history)
    m_lo = f(lo)
    if m_lo < target - 1:
        raise BudgetError(
            f"sample.schedule=adaptive: at tol={lo:g} samples already stop after {passes(m_lo):.2f} "
            f"block passes per image, short of {words} (the model converges before "
            f"the budget is spent); lower sample.budget or sample.adaptive.tol_min"
        )
    for _ in range(max_evals):
        mid = math.sqrt(lo * hi)
        m = f(mid)
        if m > target:
            lo, m_lo = mid, m
        else:
            hi, m_hi = mid, m
        if target - 1 <= m_hi <= target:
            return Calibration(hi, m_hi, target, history)
    raise BudgetError(
        f"sample.schedule=adaptive: no tolerance spends {words} within one pass: between "
        f"tol={lo:.3g} ({passes(m_lo):.2f} passes) and tol={hi:.3g} ({passes(m_hi):.2f}) the mean jumps (the "
        f"residual stalls: the model never converges that far); lower sample.budget to "
        f"<= {math.floor(passes(m_hi) / guidance)} "
        f"or {KEY_CAP}, or raise sample.adaptive.calibration_images"
    )


def passes_summary(iters_per_image: np.ndarray, explicit_passes: int, budget_passes: int | None = None) -> dict:
    """Spent block passes per image (explicit blocks + the fixed point evaluations of that image):
    mean, min, max, and the exact histogram ``{passes: images}`` (``_passes_histogram``, for the
    solver trace: records keep only scalars in their metrics).

    With ``budget_passes`` (the planned block passes per image, guidance's forwards counted as in
    the passes) also that budget and whether the mean overspends it by more than one pass
    (``block_passes_over_budget``): the calibration meets the budget on its own batch, and this
    checks it on the images that are evaluated."""
    passes = np.asarray(iters_per_image, dtype=np.int64) + int(explicit_passes)
    if passes.size == 0:
        return {}
    values, counts = np.unique(passes, return_counts=True)
    out = {
        "block_passes_per_image_mean": float(passes.mean()),
        "block_passes_per_image_max": int(passes.max()),
        "block_passes_per_image_min": int(passes.min()),
        "_passes_histogram": {"passes": values.tolist(), "images": counts.tolist()},
    }
    if budget_passes is not None:
        out["block_passes_budget"] = int(budget_passes)
        out["block_passes_over_budget"] = bool(passes.mean() > budget_passes + 1)
    return out


def calibration_cost(
    iters_per_sampling: Sequence[int], forwards: int, n_explicit: int, breakdown: FlopBreakdown
) -> dict:
    """What a calibration spent over all its samplings of the calibration batch: ``evaluations``
    (samplings), ``block_passes_total`` and ``flops_total``. Each sampling runs ``forwards`` model
    forwards (images x steps x guidance), each with its ``n_explicit`` explicit blocks, plus the
    fixed point evaluations it spent (``iters_per_sampling``, summed over its rows). FLOPs come from
    ``harness.compute.flops.sampling_flops``, linear in forwards and evaluations, so the batch's
    FLOPs are its forwards' explicit parts plus one ``per_iteration`` per evaluation."""
    samplings, iters = len(iters_per_sampling), int(sum(iters_per_sampling))
    return {
        "evaluations": samplings,
        "block_passes_total": samplings * forwards * n_explicit + iters,
        "flops_total": sampling_flops(breakdown, [iters], samplings * forwards),
    }
