"""Per-step fixed point iteration schedules (paper Sec. 3.3 and 5.2, Table 5; official
``adaptive_controller.LinearController``), as pure functions.

A schedule maps ``(total_iters, num_steps)`` to one iteration count per sampling step:

    fn(total_iters: int, num_steps: int, *, ratio=(0.5, 1.5), values=None) -> list[int]

Contract, checked on every call by the registry wrapper:
  * ``len(out) == num_steps``, every entry ``>= 1``, ``sum(out) == total_iters`` exactly;
  * **sampling order**: ``out[0]`` is the first, noisiest sampling step (t = T-1) and
    ``out[-1]`` the last, cleanest one.

Shapes. Like the official LinearController, step i gets one iteration plus a share of the
remaining ``total_iters - num_steps`` proportional to a weight ``r_i``:
``b_i = 1 + (total_iters - num_steps) * r_i / sum(r)``. The official code rounds with a
ceil/floor threshold that may under-spend the budget and is not monotone; here the shares are
apportioned by the largest-remainder (Hamilton) method in exact integer arithmetic, so the
sum is exact and a monotone weight gives a monotone schedule.

  constant     r_i = 1. Entries differ by at most 1 (extras go to the earliest steps).
  increasing   r linear from ratio[0] (noisiest step) to ratio[1] (cleanest step): the count
               *increases along sampling order*, i.e. more compute toward the later stages of
               denoising, the reading of paper Sec. 5.2 ("increasing" is best).
  decreasing   the mirror image: most iterations at the noisiest step.
  cosine       r_i = lo + (hi - lo) * (1 - cos(pi * i / (S - 1))) / 2: the increasing
               direction with a cosine ease-in/ease-out shape (flat at both ends, steepest in
               the middle of sampling).
  list         explicit ``values`` (validated: length, entries >= 1, exact sum).
  official_increasing
               the official code's "increasing" (docs/paper-notes.md §4.3): its ratio list
               linspace(lo, hi) is consumed from the *last* index, so the noisiest step gets
               the *most* iterations (our ``decreasing`` direction). It keeps the controller's
               rounding rule (``_official_round``): identical lists whenever the controller
               spends its budget, topped up to the exact sum where it under-spends. E.g. S=35
               with 210 iterations gives 8,8,8,8,7,...,5,4,4,4,4 and S=10 with 260 gives
               38,...,14 (docs/paper-notes.md §8.5); plain largest-remainder would give 9,...,3 and
               39,...,13. That rule is not monotone: 3 over 2 steps gives [1, 2].
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Sequence
from fractions import Fraction

from baselines.registry import Registry

__all__ = ["register_schedule", "get_schedule", "list_schedules", "PAPER_RATIO"]

PAPER_RATIO: tuple[float, float] = (0.5, 1.5)  # LinearController default, a 1:3 span

ScheduleFn = Callable[..., list[int]]
SCHEDULES: Registry[ScheduleFn] = Registry("schedule", key="sample.schedule")


# ------------------------------------------------------------------ registry
def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    """Register ``fn(total_iters, num_steps, *, ratio, values) -> list[int]`` under ``name``.

    The stored callable validates its arguments and checks the output contract, so a buggy
    schedule fails loudly instead of silently mis-spending the budget.
    """

    def deco(fn: ScheduleFn) -> ScheduleFn:
        @functools.wraps(fn)
        def checked(total_iters, num_steps, *, ratio=PAPER_RATIO, values=None) -> list[int]:
            total = _as_int(total_iters, "total_iters")
            steps = _as_int(num_steps, "num_steps")
            if steps < 1:
                raise ValueError(f"num_steps must be >= 1, got {steps}")
            if total < steps:
                raise ValueError(
                    f"schedule {name!r}: total_iters={total} cannot give num_steps={steps} steps "
                    f"at least 1 iteration each; raise total_iters to >= {steps} or lower "
                    f"num_steps to <= {max(total, 0)}"
                )
            out = [int(v) for v in fn(total, steps, ratio=_check_ratio(ratio), values=values)]
            if len(out) != steps or sum(out) != total or min(out) < 1:
                raise AssertionError(f"schedule {name!r} broke its contract: {out}")
            return out

        return SCHEDULES.register(name, checked)

    return deco


get_schedule, list_schedules = SCHEDULES.get, SCHEDULES.list


# ------------------------------------------------------------------ helpers
def _as_int(value, name: str) -> int:
    """Accept ints (and integral floats, e.g. from YAML); reject bools and fractions."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def _check_ratio(ratio) -> tuple[Fraction, Fraction]:
    """(lo, hi) with 0 <= lo <= hi and hi > 0, as exact rationals of the given floats."""
    try:
        lo, hi = (Fraction(x) for x in ratio)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"ratio must be two finite numbers (lo, hi), got {ratio!r}") from None
    if not (0 <= lo <= hi and hi > 0):
        raise ValueError(f"ratio must satisfy 0 <= lo <= hi and hi > 0, got {ratio!r}")
    return lo, hi


def _linear(lo: Fraction, hi: Fraction, n: int) -> list[int]:
    """linspace(lo, hi, n) scaled to integers (n == 1 gives [lo], as torch.linspace)."""
    scale = math.lcm(lo.denominator, hi.denominator)
    a, b = int(lo * scale), int(hi * scale)
    return [a] if n == 1 else [a * (n - 1) + (b - a) * i for i in range(n)]


def _int_weights(weights: Sequence[Fraction | int]) -> list[int]:
    """Scale exact rational weights to integers (same ratios), so the apportionment below is
    integer arithmetic: exact and fast even for thousands of steps. All-zero (one step with
    ratio lo = 0) counts as equal weights."""
    if all(isinstance(w, int) for w in weights):
        out = list(weights)
    else:
        scale = math.lcm(*(w.denominator for w in weights))
        out = [w.numerator * (scale // w.denominator) for w in weights]
    return out if any(out) else [1] * len(out)


def _split(total: int, weights: Sequence[Fraction | int]) -> tuple[list[int], list[int], int]:
    """Exact LinearController shares 1 + (total - S) * w_i / sum(w), as integer floors plus
    remainders over the common denominator W: share_i = floor_i + rem_i / W."""
    w = _int_weights(weights)
    big = sum(w)
    extra = total - len(w)
    floors = [1 + extra * wi // big for wi in w]
    rems = [extra * wi % big for wi in w]
    return floors, rems, big


def _largest_remainder(total: int, weights: Sequence[Fraction | int], *, late_first: bool) -> list[int]:
    """Hamilton apportionment of ``total`` with every entry >= 1.

    Ties in the remainder go to the later steps when ``late_first`` (so equal weights never
    break a non-decreasing schedule) and to the earlier steps otherwise.
    """
    out, rems, _ = _split(total, weights)
    left = total - sum(out)  # 0 <= left < S because the exact shares sum to total
    sign = -1 if late_first else 1
    order = sorted(range(len(out)), key=lambda i: (-rems[i], sign * i))
    for i in order[:left]:
        out[i] += 1
    return out


def _official_round(total: int, weights: Sequence[Fraction | int]) -> list[int]:
    """The LinearController rounding rule, in controller index order.

    Official: entries with index < threshold are ceil'd, the rest floor'd; the threshold starts
    at S // 2 and is lowered until the sum is <= budget. That can stop *below* the budget, so
    we also raise the threshold while the sum is short: the sum moves by 0 or 1 per threshold
    step from sum(floor) <= total to sum(ceil) >= total, hence some threshold hits it exactly.
    Whenever the official list already sums to the budget, this is that list. Exact rationals
    replace the official float32, which could ceil an exact integer share up by one.
    """
    floors, rems, _ = _split(total, weights)
    frac = [1 if r else 0 for r in rems]  # ceil - floor
    th = len(floors) // 2
    s = sum(floors) + sum(frac[:th])  # sum of the list at threshold th
    while s > total:
        th -= 1
        s -= frac[th]
    while s < total:
        s += frac[th]
        th += 1
    return [f + (d if i < th else 0) for i, (f, d) in enumerate(zip(floors, frac))]


# ------------------------------------------------------------------ schedules
@register_schedule("constant")
def constant(
    total_iters: int, num_steps: int, *, ratio: tuple[float, float] = PAPER_RATIO, values: Sequence[float] | None = None
) -> list[int]:
    """Same count at every step (k or k+1; the extra iterations go to the earliest steps)."""
    return _largest_remainder(total_iters, [Fraction(1)] * num_steps, late_first=False)


@register_schedule("increasing")
def increasing(
    total_iters: int, num_steps: int, *, ratio: tuple[float, float] = PAPER_RATIO, values: Sequence[float] | None = None
) -> list[int]:
    """Linear weights ratio[0] -> ratio[1] along sampling order: fewest iterations at the
    noisiest step, most at the cleanest (paper Sec. 5.2 reading)."""
    lo, hi = ratio
    return _largest_remainder(total_iters, _linear(lo, hi, num_steps), late_first=True)


@register_schedule("decreasing")
def decreasing(
    total_iters: int, num_steps: int, *, ratio: tuple[float, float] = PAPER_RATIO, values: Sequence[float] | None = None
) -> list[int]:
    """Linear weights ratio[1] -> ratio[0] along sampling order: most iterations first."""
    lo, hi = ratio
    return _largest_remainder(total_iters, _linear(hi, lo, num_steps), late_first=False)


@register_schedule("cosine")
def cosine(
    total_iters: int, num_steps: int, *, ratio: tuple[float, float] = PAPER_RATIO, values: Sequence[float] | None = None
) -> list[int]:
    """Cosine-eased weights from ratio[0] (noisiest step) to ratio[1] (cleanest step)."""
    lo, hi = ratio
    if num_steps == 1:
        return [total_iters]
    ease = [Fraction((1.0 - math.cos(math.pi * i / (num_steps - 1))) / 2.0) for i in range(num_steps)]
    # running max guards the monotone shape against any last-ulp wobble of math.cos
    ease = list(itertools.accumulate(ease, max))
    return _largest_remainder(total_iters, [lo + (hi - lo) * e for e in ease], late_first=True)


@register_schedule("list")
def explicit(
    total_iters: int, num_steps: int, *, ratio: tuple[float, float] = PAPER_RATIO, values: Sequence[float] | None = None
) -> list[int]:
    """Explicit per-step counts in sampling order, validated against the budget."""
    if values is None:
        raise ValueError("schedule 'list' needs values: one iteration count per sampling step")
    vals = [_as_int(v, f"values[{i}]") for i, v in enumerate(values)]
    if len(vals) != num_steps:
        raise ValueError(f"schedule 'list' got {len(vals)} values for num_steps={num_steps}")
    if min(vals) < 1:
        raise ValueError(f"schedule 'list' values must all be >= 1, got {vals}")
    if sum(vals) != total_iters:
        raise ValueError(
            f"schedule 'list' values sum to {sum(vals)} but total_iters={total_iters}; "
            f"change them by {total_iters - sum(vals):+d} in total"
        )
    return vals


@register_schedule("official_increasing")
def official_increasing(
    total_iters: int, num_steps: int, *, ratio: tuple[float, float] = PAPER_RATIO, values: Sequence[float] | None = None
) -> list[int]:
    """The official LinearController(type="increasing") as the sampler consumes it.

    The controller builds linspace(lo, hi) and ``get()`` reads it from the last index down,
    so reversed into sampling order the noisiest step gets the most iterations. Its rounding
    (``_official_round``) is kept for reproduction; note that it is *not* always monotone
    (e.g. 3 iterations over 2 steps gives [1, 2] in sampling order).
    """
    lo, hi = ratio
    return _official_round(total_iters, _linear(lo, hi, num_steps))[::-1]


# ------------------------------------------------------------------ beyond the paper
@register_schedule("adaptive")
def adaptive(
    total_iters: int, num_steps: int, *, ratio: tuple[float, float] = PAPER_RATIO, values: Sequence[float] | None = None
) -> list[int]:
    """Nominal plan of ``sample.schedule=adaptive``: the constant split, which fixes the step count
    and the budget. At run time each sample stops at a calibrated tolerance instead
    (harness/compute/adaptive.py), spending this budget on average."""
    return constant(total_iters, num_steps)


@register_schedule("greedy")
def greedy(
    total_iters: int, num_steps: int, *, ratio: tuple[float, float] = PAPER_RATIO, values: Sequence[float] | None = None
) -> list[int]:
    """Nominal plan of ``sample.schedule=greedy``: the constant split. The job replaces it by the
    water-filling allocation on a calibration run's residual traces (harness/compute/greedy.py),
    with the same steps and the same total."""
    return constant(total_iters, num_steps)


def knot_density(knots: Sequence[float], num_steps: int) -> list[Fraction]:
    """Piecewise-linear density over sampling order: ``len(knots)`` equally spaced knots from the
    noisiest step (0) to the cleanest (1), read at each step's position ``i / (S - 1)``."""
    k = len(knots)
    if k == 1 or num_steps == 1:
        return [Fraction(float(knots[0]))] * num_steps
    out = []
    for i in range(num_steps):
        pos = Fraction(i * (k - 1), num_steps - 1)  # exact position in knot units
        j = min(int(pos), k - 2)
        frac = pos - j
        out.append(Fraction(float(knots[j])) * (1 - frac) + Fraction(float(knots[j + 1])) * frac)
    return out


@register_schedule("density")
def density(
    total_iters: int, num_steps: int, *, ratio: tuple[float, float] = PAPER_RATIO, values: Sequence[float] | None = None
) -> list[int]:
    """The searched family (``sweep=schedule_search``): ``values`` are the knot heights (> 0) of a
    piecewise-linear density (``knot_density``); step i gets ``1 + (total - S) * w_i / sum(w)``,
    apportioned by largest remainder, so every member sums exactly to the budget with >= 1 per step."""
    if not values:
        raise ValueError("schedule 'density' needs sample.knots: the knot heights of the density")
    knots = [float(v) for v in values]
    if len(knots) > num_steps:
        raise ValueError(
            f"sample.knots has {len(knots)} knots for {num_steps} steps; give at most {num_steps} "
            f"knots or raise sample.steps"
        )
    if not all(math.isfinite(v) and v > 0 for v in knots):
        raise ValueError(f"sample.knots must all be finite and > 0, got {knots}")
    return _largest_remainder(total_iters, knot_density(knots, num_steps), late_first=False)
