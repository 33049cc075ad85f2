"""Adaptive compute at a fixed budget (``sample.schedule=adaptive``): pure budget math.

The paper leaves tolerance-based allocation as future work (Sec. 6; the official code's
``AdaptiveController`` is commented out). Here every sample runs a sampling step until its relative
residual ``||f(z)-z|| / ||f(z)||`` is below one tolerance, capped at ``max_iters_per_step``
evaluations, and the tolerance is calibrated by bisection so that the *mean* block passes per image
meet ``sample.budget`` within one pass. Mean iterations per image fall as the tolerance grows (a
looser tolerance stops every sample no later), so bisection on ``log(tol)`` brackets the budget.

Pure functions only; the calibration run that evaluates them is ``harness.stages.calibrate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from harness.compute.plan import BudgetError

KEY_CAP = "sample.adaptive.max_iters_per_step"


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


def target_iters(budget: int, steps: int, n_explicit: int, cap: int) -> int:
    """Fixed point iterations per image the budget leaves: ``budget - steps * n_explicit``. It must
    allow one iteration per step and at most ``cap`` (else no tolerance can spend it)."""
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
    return total


def bisect_tolerance(
    mean_iters: Callable[[float], float],
    target: int,
    *,
    tol_min: float,
    tol_max: float,
    max_evals: int = 40,
    budget: int | None = None,
    explicit: int = 0,
) -> Calibration:
    """The tolerance whose mean iterations per image lie in ``[target - 1, target]`` (so the mean
    block passes meet the budget within one pass and never exceed it), by bisection on ``log(tol)``.

    ``mean_iters(tol)`` must not increase with ``tol``. Raises ``BudgetError`` naming the keys when no
    tolerance in ``[tol_min, tol_max]`` gets there: the mean jumps over the window (the residual
    stalls: the model never converges that far) or the ends already miss it."""
    history: list = []

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
            f"passes per image, above sample.budget={budget}; raise sample.budget or "
            f"sample.adaptive.tol_max"
        )
    if m_hi >= target - 1:
        return Calibration(hi, m_hi, target, history)
    m_lo = f(lo)
    if m_lo < target - 1:
        raise BudgetError(
            f"sample.schedule=adaptive: at tol={lo:g} samples already stop after {passes(m_lo):.2f} "
            f"block passes per image, short of sample.budget={budget} (the model converges before "
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
        f"sample.schedule=adaptive: no tolerance spends sample.budget={budget} within one pass: between "
        f"tol={lo:.3g} ({passes(m_lo):.2f} passes) and tol={hi:.3g} ({passes(m_hi):.2f}) the mean jumps (the "
        f"residual stalls: the model never converges that far); lower sample.budget to <= {math.floor(passes(m_hi))} "
        f"or {KEY_CAP}, or raise sample.adaptive.calibration_images"
    )


def passes_summary(iters_per_image: np.ndarray, explicit_passes: int) -> dict:
    """Spent block passes per image (explicit blocks + the fixed point evaluations of that image):
    mean, min, max, and the exact histogram ``{passes: images}`` (``_passes_histogram``, for the
    solver trace: records keep only scalars in their metrics)."""
    passes = np.asarray(iters_per_image, dtype=np.int64) + int(explicit_passes)
    if passes.size == 0:
        return {}
    values, counts = np.unique(passes, return_counts=True)
    return {
        "block_passes_per_image_mean": float(passes.mean()),
        "block_passes_per_image_max": int(passes.max()),
        "block_passes_per_image_min": int(passes.min()),
        "_passes_histogram": {"passes": values.tolist(), "images": counts.tolist()},
    }
