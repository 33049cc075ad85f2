"""Sampling budgets -> sampling plans (paper Sec. 4.2 with footnotes 3-4; docs/paper-notes.md).

One module for one decision: from the ``sample.*`` settings (or plain numbers) to the per-image plan
(steps, per-step iterations in sampling order, block passes). ``sampling_plan(cfg)`` is the config
entry point; ``plan_dit`` / ``plan_fpdm`` / ``plan_fpdm_flops`` are the pure budget math under it.

The compute unit is the transformer-block forward pass per image. One sampling step costs
``depth`` blocks for DiT and ``n_explicit + k_i`` for FPDM (``n_explicit`` = pre + post
blocks, ``k_i`` = fixed point iterations at step i). All functions here are pure
(``sampling_plan`` reads a config, nothing else).

Policies (decided here, tested in tests/test_budget.py):
  * DiT: ``steps = B / depth``; a budget that is not a multiple of depth is refused, naming
    the nearest feasible budgets.
  * FPDM with ``iters=k``: ``steps = floor(B / (n + k))`` (paper: 280 blocks, k=1 -> 93 steps),
    and the whole fixed point share ``B - steps * n`` is spread by the schedule, so the plan
    spends exactly ``B`` block passes. The mean count ``k_mean`` is therefore ``>= k``
    (k=1 at 280 blocks: 92 steps of 1 and one of 2, where the paper used 279 blocks).
  * FPDM with ``steps=S``: the share ``B - S * n`` must be ``>= S`` (one iteration per step).
  * FLOP matching (``plan_fpdm_flops``, ``sample.match=flops``, the default): the same, with
    measured FLOPs in place of block counts: the plan with the largest total FLOPs not exceeding
    what DiT spends on ``B`` block passes (``B / depth`` forwards, pro rata when ``B`` is not a
    whole number of DiT steps). The block count (``sample.match=blocks``) is the paper's
    accounting (Sec. 4.2): it charges an iteration as one block, but one costs about 1.28 blocks
    at the tiny preset and 1.32 at XL/2 (the injection MLP, docs/paper-notes.md §8.4), so a
    block-matched FPDM spends about a fifth more FLOPs per image than its DiT.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from baselines.diffusers_dit import uses_pretrained_weights
from baselines.presets import ARCHITECTURE_KNOBS, resolve_preset
from fpdm.schedules import PAPER_RATIO, get_schedule

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import nn

    from harness.compute.flops import FlopBreakdown

__all__ = [
    "BudgetError",
    "SamplingPlan",
    "plan_dit",
    "plan_fpdm",
    "plan_fpdm_flops",
    "plan_from_sample_config",
    "dit_flops_budget",
    "dit_flops_target",
    "sampling_block_passes",
    "MODEL_KINDS",
    "sampling_plan",
    "explicit_blocks",
    "default_iters",
    "flop_match_inputs",
]

# Config keys named in error messages (the names users type, design.md vocabulary).
KEY_BUDGET, KEY_STEPS, KEY_ITERS = "sample.budget", "sample.steps", "sample.iters"
KEY_SCHEDULE, KEY_RATIO, KEY_VALUES = "sample.schedule", "sample.ratio", "sample.schedule_values"


class BudgetError(ValueError):
    """A budget that cannot be met exactly; the message names the config key and a fix."""


@dataclass(frozen=True)
class SamplingPlan:
    """Per-image sampling plan; every tuple is in sampling order (index 0 = noisiest step).

    For DiT ``iters`` is all zeros (no fixed point layer) and ``n_explicit`` is the depth.
    ``flops_per_image`` (what the plan spends) and ``flops_target`` (what DiT spends on the same
    budget, the other side of the match) are set only by the FLOP-matched planner.
    """

    model: str
    steps: int
    iters: tuple[int, ...]
    block_passes_per_step: tuple[int, ...]
    block_passes: int
    n_explicit: int
    schedule: str = "constant"
    flops_per_image: float | None = None
    flops_target: float | None = None

    def __post_init__(self) -> None:
        # the bookkeeping invariant of design.md: block passes = n_explicit + iters per step
        per_step = tuple(self.n_explicit + k for k in self.iters)
        if (
            len(self.iters) != self.steps
            or self.block_passes_per_step != per_step
            or self.block_passes != sum(per_step)
        ):
            raise ValueError(f"inconsistent SamplingPlan: {self}")

    @property
    def total_iters(self) -> int:
        return sum(self.iters)

    @property
    def k_mean(self) -> float:
        """Mean fixed point iterations per step (0.0 for DiT)."""
        return self.total_iters / self.steps

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (lists, not tuples) plus ``k_mean`` and ``total_iters``."""
        d = asdict(self)
        d.update(
            iters=list(self.iters),
            block_passes_per_step=list(self.block_passes_per_step),
            k_mean=self.k_mean,
            total_iters=self.total_iters,
        )
        return d


def sampling_block_passes(plan: SamplingPlan) -> int:
    """Block passes per image recounted from the plan: sum(iters) + steps * n_explicit."""
    return sum(plan.iters) + plan.steps * plan.n_explicit


# ------------------------------------------------------------------ helpers
def _int(value, key: str, minimum: int) -> int:
    """A whole number >= minimum (integral floats from YAML accepted, bools refused)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        raise BudgetError(f"{key} must be a whole number, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise BudgetError(f"{key} must be a whole number, got {value!r}") from None
    if value < minimum:
        raise BudgetError(f"{key} must be >= {minimum}, got {value}")
    return value


def _nearest_multiples(budget: int, unit: int) -> str:
    lo, hi = (budget // unit) * unit, (budget // unit + 1) * unit
    return f"{lo} or {hi}" if lo > 0 else f"{hi}"


def _make_plan(
    model: str,
    iters: Sequence[int],
    n_explicit: int,
    schedule: str,
    flops: float | None = None,
    target: float | None = None,
) -> SamplingPlan:
    iters = tuple(int(k) for k in iters)
    per_step = tuple(n_explicit + k for k in iters)
    return SamplingPlan(
        model=model,
        steps=len(iters),
        iters=iters,
        block_passes_per_step=per_step,
        block_passes=sum(per_step),
        n_explicit=n_explicit,
        schedule=schedule,
        flops_per_image=flops,
        flops_target=target,
    )


def _schedule(total_iters: int, steps: int, schedule: str, ratio, values) -> list[int]:
    """Run the schedule, re-raising its argument errors with the config keys to change.
    An unknown schedule name stays a KeyError listing the valid names (project convention)."""
    fn = get_schedule(schedule)
    try:
        return fn(total_iters, steps, ratio=ratio, values=values)
    except (ValueError, TypeError) as e:
        raise BudgetError(
            f"{KEY_SCHEDULE}={schedule}: {e} (the budget leaves {total_iters} fixed point "
            f"iterations over {steps} steps; ratio is {KEY_RATIO}, values {KEY_VALUES})"
        ) from None


def _one_of(steps, iters, schedule: str, values) -> tuple[int | None, int | None]:
    if steps is not None and iters is not None:
        raise BudgetError(
            f"set exactly one of {KEY_STEPS} or {KEY_ITERS}, not both "
            f"(got steps={steps}, iters={iters}); the budget fixes the other"
        )
    if steps is None and iters is None:
        if schedule == "list" and values is not None:
            return len(values), None  # the explicit list fixes the step count
        raise BudgetError(f"set one of {KEY_STEPS} or {KEY_ITERS} to plan an FPDM budget")
    if steps is not None:
        return _int(steps, KEY_STEPS, 1), None
    return None, _int(iters, KEY_ITERS, 1)


# ------------------------------------------------------------------ block-pass planners
def plan_dit(budget_blocks: int, depth: int) -> SamplingPlan:
    """DiT: ``budget_blocks / depth`` steps of ``depth`` block passes each."""
    budget = _int(budget_blocks, KEY_BUDGET, 1)
    depth = _int(depth, "depth", 1)
    if budget % depth:
        raise BudgetError(
            f"{KEY_BUDGET}={budget} is not a whole number of DiT steps at depth {depth} "
            f"({budget}/{depth} = {budget / depth:.2f}); nearest feasible budgets: "
            f"{_nearest_multiples(budget, depth)}"
        )
    return _make_plan("dit", [0] * (budget // depth), depth, "constant")


def plan_fpdm(
    budget_blocks: int,
    n_explicit: int,
    *,
    steps: int | None = None,
    iters: int | None = None,
    schedule: str = "constant",
    ratio: Sequence[float] = PAPER_RATIO,
    values: Sequence[int] | None = None,
) -> SamplingPlan:
    """FPDM plan spending exactly ``budget_blocks`` block passes per image.

    Exactly one of ``steps`` / ``iters`` (with ``schedule="list"`` and ``values`` both may be
    omitted: the step count is ``len(values)``). ``n_explicit`` = pre + post blocks.
    """
    budget = _int(budget_blocks, KEY_BUDGET, 1)
    n = _int(n_explicit, "n_explicit", 0)
    steps, k = _one_of(steps, iters, schedule, values)
    if k is not None:
        steps = budget // (n + k)
        if steps == 0:
            fix = f" or lower {KEY_ITERS} to <= {budget - n}" if budget > n else ""
            raise BudgetError(
                f"{KEY_BUDGET}={budget} is below one step at {KEY_ITERS}={k} ({n} explicit + {k} "
                f"iterations = {n + k} blocks); raise {KEY_BUDGET} to >= {n + k}{fix}"
            )
    share = budget - steps * n
    if share < steps:
        max_steps = budget // (n + 1)
        raise BudgetError(
            f"{KEY_BUDGET}={budget} cannot run {KEY_STEPS}={steps} with {n} explicit blocks and "
            f">= 1 iteration per step (needs {steps * (n + 1)} blocks); raise {KEY_BUDGET} to >= "
            f"{steps * (n + 1)} or lower {KEY_STEPS} to <= {max_steps}"
        )
    return _make_plan("fpdm", _schedule(share, steps, schedule, ratio, values), n, schedule)


# ------------------------------------------------------------------ FLOP matching
def dit_flops_budget(steps: int, flops_per_forward: float) -> float:
    """FLOPs per image of DiT sampling: steps x one full forward (measured)."""
    return _int(steps, KEY_STEPS, 1) * flops_per_forward


def dit_flops_target(budget_blocks: int, depth: int, flops_per_forward: int) -> int | float:
    """What DiT spends on ``budget_blocks`` block passes per image: ``budget / depth`` forwards,
    an exact integer when the budget is a whole number of DiT steps, else pro rata (a float), so
    an FPDM-only budget such as 20 blocks at depth 6 still has a FLOP equivalent."""
    budget, depth = _int(budget_blocks, KEY_BUDGET, 1), _int(depth, "depth", 1)
    whole, rest = divmod(budget * flops_per_forward, depth)
    return whole if rest == 0 else budget * flops_per_forward / depth


def plan_fpdm_flops(
    flops_budget: float,
    flops_explicit_per_step: float,
    flops_per_iter: float,
    *,
    n_explicit: int,
    steps: int | None = None,
    iters: int | None = None,
    schedule: str = "constant",
    ratio: Sequence[float] = PAPER_RATIO,
    values: Sequence[int] | None = None,
) -> SamplingPlan:
    """FPDM plan matched on measured FLOPs instead of block passes.

    ``flops_explicit_per_step``: everything run once per forward (embedders, pre and post
    blocks, injection projection, final layer); ``flops_per_iter``: one fixed point
    iteration (block + injection MLP). With ``iters=k``: ``steps = floor(F / (E + k*I))``.
    Then the total iterations ``T = floor((F - steps*E) / I)`` are spread by the schedule:
    among plans with that step count, the one with the largest total FLOPs ``<= F``.
    ``n_explicit`` is only used to report the plan's block passes.
    """
    if not (flops_budget > 0 and flops_explicit_per_step >= 0 and flops_per_iter > 0):
        raise BudgetError(
            f"FLOP matching needs flops_budget > 0, flops_explicit_per_step >= 0 and "
            f"flops_per_iter > 0; got {flops_budget}, {flops_explicit_per_step}, "
            f"{flops_per_iter}"
        )
    n = _int(n_explicit, "n_explicit", 0)
    F, E, I = flops_budget, flops_explicit_per_step, flops_per_iter

    def cost(s: int, t: int) -> float:  # one expression for every check, so float rounding agrees
        return s * E + t * I

    steps, k = _one_of(steps, iters, schedule, values)
    if k is not None:
        steps = _largest_fitting(lambda s: cost(s, s * k) <= F, _floor_div(F, E + k * I))
        if steps == 0:
            raise BudgetError(
                f"the FLOP budget {F:.4g} is below one step at {KEY_ITERS}={k} "
                f"({E + k * I:.4g} FLOPs); raise {KEY_BUDGET} or lower {KEY_ITERS}"
            )
    total = _largest_fitting(lambda t: cost(steps, t) <= F, _floor_div(F - steps * E, I))
    if total < steps:
        raise BudgetError(
            f"the FLOP budget {F:.4g} cannot run {KEY_STEPS}={steps} with >= 1 iteration per step "
            f"(needs {cost(steps, steps):.4g}); raise {KEY_BUDGET} or lower {KEY_STEPS} to <= "
            f"{_largest_fitting(lambda s: cost(s, s) <= F, _floor_div(F, E + I))}"
        )
    plan_iters = _schedule(total, steps, schedule, ratio, values)
    return _make_plan("fpdm", plan_iters, n, schedule, flops=cost(steps, total), target=F)


def _floor_div(a: float, b: float) -> int:
    """floor(a / b) for ints, or its float estimate (refined by ``_largest_fitting``)."""
    if a < 0:
        return 0
    return a // b if isinstance(a, int) and isinstance(b, int) else math.floor(a / b)


def _largest_fitting(fits: Callable[[int], bool], guess: int) -> int:
    """The largest n >= 0 with fits(n), starting from a floor-division guess: float rounding
    can put the guess one off either way, and the plan must never exceed the FLOP budget as
    it is evaluated (steps * E + iters * I <= F)."""
    n = max(int(guess), 0)
    while n > 0 and not fits(n):
        n -= 1
    while fits(n + 1):
        n += 1
    return n


# ------------------------------------------------------------------ config entry point
MODEL_KINDS = ("dit", "dit_diffusers", "fpdm")


def _plan_dit_config(budget, depth, steps=None) -> SamplingPlan:
    if budget is None:  # steps alone defines a DiT run
        if steps is None:
            raise BudgetError(f"set {KEY_BUDGET} or {KEY_STEPS} for a DiT model")
        budget = _int(steps, KEY_STEPS, 1) * _int(depth, "depth", 1)
    plan = plan_dit(budget, depth)
    if steps is not None and _int(steps, KEY_STEPS, 1) != plan.steps:
        raise BudgetError(
            f"{KEY_STEPS}={steps} contradicts {KEY_BUDGET}={budget} at depth {depth} "
            f"({plan.steps} steps); set only one of them"
        )
    return plan


def _plan_fpdm_config(
    budget, n_explicit, steps=None, iters=None, schedule="constant", ratio=PAPER_RATIO, values=None
) -> SamplingPlan:
    if budget is None:  # steps and iters together define the budget: S * (n + k)
        if steps is None or iters is None:
            raise BudgetError(f"set {KEY_BUDGET}, or both {KEY_STEPS} and {KEY_ITERS}")
        n, k = _int(n_explicit, "n_explicit", 0), _int(iters, KEY_ITERS, 1)
        budget = _int(steps, KEY_STEPS, 1) * (n + k)
        iters = None
    return plan_fpdm(budget, n_explicit, steps=steps, iters=iters, schedule=schedule, ratio=ratio, values=values)


def plan_from_sample_config(
    model_kind: str,
    budget: int | None,
    n_explicit_or_depth: int,
    steps: int | None = None,
    iters: int | None = None,
    schedule: str = "constant",
    ratio: Sequence[float] = PAPER_RATIO,
    values: Sequence[int] | None = None,
) -> SamplingPlan:
    """Plan from the ``sample.*`` settings. ``n_explicit_or_depth`` is the model's
    ``num_explicit_blocks`` (DiT: depth; FPDM: pre + post). ``budget=None`` derives the budget
    from ``steps`` (DiT: steps * depth) or ``steps`` and ``iters`` (FPDM: steps * (n + iters),
    the steps * iters iterations spread by the schedule)."""
    if model_kind not in MODEL_KINDS:
        raise KeyError(f"unknown model kind {model_kind!r} for budget planning; valid names: {', '.join(MODEL_KINDS)}")
    if model_kind != "fpdm":  # DiT and its diffusers adapter: a fixed depth per step
        return _plan_dit_config(budget, n_explicit_or_depth, steps=steps)
    return _plan_fpdm_config(
        budget,
        n_explicit_or_depth,
        steps=steps,
        iters=iters,
        schedule=schedule,
        ratio=ratio,
        values=None if values is None else list(values),
    )


# ------------------------------------------------------------------ from a resolved config
def explicit_blocks(cfg: DictConfig) -> int:
    """Explicit blocks per forward: DiT's depth, or FPDM's pre + post."""
    if cfg.model.name == "fpdm":
        return cfg.model.pre_depth + cfg.model.post_depth
    if uses_pretrained_weights(cfg.model):
        return -1  # known once the weights are loaded
    return _arch(cfg).depth


def _arch(cfg):
    """The resolved architecture: ``model.preset`` with the knobs ``model.depth``, ``model.hidden_size``,
    ``model.num_heads``, ``model.patch_size`` and ``model.mlp_ratio`` applied where not null."""
    return resolve_preset(cfg.model.preset, **{k: cfg.model.get(k) for k in ARCHITECTURE_KNOBS})


def default_iters(cfg: DictConfig) -> int:
    """FPDM's DiT-equivalent iterations per step: depth - pre - post (paper Sec. 4.2)."""
    return _arch(cfg).depth - cfg.model.pre_depth - cfg.model.post_depth


def sampling_plan(
    cfg: DictConfig,
    depth: int | None = None,
    flops: FlopBreakdown | None = None,
    dit_flops_per_forward: float | None = None,
) -> SamplingPlan:
    """The per-image sampling plan. ``depth`` overrides the preset depth (loaded weights);
    ``flops`` (a FlopBreakdown of the FPDM model) and ``dit_flops_per_forward`` enable
    ``sample.match=flops``: FPDM then spends the FLOPs DiT spends on the same block budget."""
    sc = cfg.sample
    kind = cfg.model.name
    n = explicit_blocks(cfg) if depth is None else depth
    values = list(sc.schedule_values) if sc.schedule_values is not None else None
    if sc.schedule == "density":  # the searched family: its values are the knot heights
        values = list(sc.knots) if sc.get("knots") is not None else None
    if kind != "fpdm":
        steps = None if sc.budget is not None else sc.steps
        return plan_from_sample_config(kind, sc.budget, n, steps=steps)
    iters, steps = sc.iters, sc.steps
    if sc.schedule == "list" and values is not None:
        iters, steps = None, None
    elif sc.budget is None:
        iters = iters if iters is not None else default_iters(cfg)
    elif iters is not None:
        steps = None
    if sc.match == "flops" and sc.budget is not None:
        if flops is None or dit_flops_per_forward is None:
            raise ValueError("sample.match=flops needs measured FLOPs (the job measures them before sampling)")
        return _flop_matched_plan(cfg, n, steps, iters, values, flops, dit_flops_per_forward)
    return plan_from_sample_config(
        kind, sc.budget, n, steps=steps, iters=iters, schedule=sc.schedule, ratio=list(sc.ratio), values=values
    )


def _flop_matched_plan(cfg, n: int, steps, iters, values, flops, dit_flops: int) -> SamplingPlan:
    """The FPDM plan spending the most FLOPs not above what DiT spends on ``sample.budget`` blocks
    (``dit_flops_target``). Its shortfall is under one fixed point iteration; above
    ``sample.flops_tolerance`` (relative) it is refused with how close it gets and the nearest
    larger budget within tolerance (a whole number of DiT steps when ``sample.budget`` is one)."""
    sc = cfg.sample
    depth = _arch(cfg).depth

    def plan_at(budget: int) -> SamplingPlan:
        return plan_fpdm_flops(
            dit_flops_target(budget, depth, dit_flops),
            flops.explicit_per_forward,
            flops.per_iteration,
            n_explicit=n,
            steps=steps,
            iters=iters,
            schedule=sc.schedule,
            ratio=list(sc.ratio),
            values=values,
        )

    def shortfall(plan: SamplingPlan) -> float:
        return 1.0 - plan.flops_per_image / plan.flops_target

    where = f"sample.match=flops at sample.budget={sc.budget}"
    try:
        plan = plan_at(sc.budget)
    except BudgetError as exc:  # the budget's FLOPs do not fit the steps / iterations asked for
        better = _larger_budget(plan_at, shortfall, sc.budget, depth, sc.flops_tolerance)
        hint = f" (sample.budget={better} fits)" if better else ""
        raise BudgetError(f"{where}: {exc}{hint}") from None
    gap = shortfall(plan)
    if gap <= sc.flops_tolerance:
        return plan
    better = _larger_budget(plan_at, shortfall, sc.budget, depth, sc.flops_tolerance)
    hint = f"sample.budget={better} is within it" if better else "a larger sample.budget shrinks it"
    raise BudgetError(
        f"{where}: the closest FPDM plan ({plan.steps} steps, {plan.total_iters} iterations) spends "
        f"{int(plan.flops_per_image):,} FLOPs per image, {gap:.2%} below DiT's {plan.flops_target:,.0f}, more than "
        f"sample.flops_tolerance={sc.flops_tolerance}; the gap is under one iteration ({flops.per_iteration:,} "
        f"FLOPs): move sample.budget ({hint}), sample.iters or sample.steps, raise sample.flops_tolerance, "
        f"or count blocks (sample.match=blocks)"
    )


def _larger_budget(plan_at, shortfall, budget: int, depth: int, tolerance: float) -> int | None:
    """The smallest budget above ``budget`` (up to 8x) whose FLOP-matched plan exists and is within
    ``tolerance``; a whole number of DiT steps when ``budget`` is one, so the hint stays comparable."""
    stride = depth if budget % depth == 0 else 1
    for candidate in range(budget + stride, 8 * budget + 1, stride):
        try:
            if shortfall(plan_at(candidate)) <= tolerance:
                return candidate
        except BudgetError:
            continue
    return None


def flop_match_inputs(
    cfg: DictConfig, model: nn.Module, *, image_size: int, channels: int, num_classes: int
) -> tuple[FlopBreakdown | None, int | None]:
    """``(FPDM FlopBreakdown, DiT FLOPs per forward)`` for ``sample.match=flops``, both counted by
    ``harness.compute.flops`` on the meta device; ``(None, None)`` when the job is not FLOP-matched."""
    from harness.compute.flops import dit_flops_per_forward, flop_breakdown

    if not (cfg.sample.match == "flops" and cfg.model.name == "fpdm"):
        return None, None
    dit = dit_flops_per_forward(
        _arch(cfg), image_size=image_size, channels=channels, num_classes=num_classes, learn_sigma=cfg.model.learn_sigma
    )
    return flop_breakdown(model, image_size), dit
