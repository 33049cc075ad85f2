"""Training compute per image, in two units: ``train.budget.unit=compute`` (forward-equivalents of a
block pass, the paper's block accounting) and ``train.budget.unit=flops`` (measured FLOPs).

The paper matches sampling in transformer-block forward passes (Sec. 4.2) and training in wall
time (Sec. 4.1, Tables 3-4: equal training time). Forward passes alone would charge a no-grad S-JFB
iteration (Sec. 3.4, Algorithm 1) the same as a DiT block that also runs backward, so both units
weigh each pass by what runs, per image:

    forward 1, backward 2 (gradients w.r.t. inputs and weights: two products per forward product),
    checkpoint recompute 1 (the forward again, inside backward), adjoint VJP 2 (one backward; an
    upper bound, it needs no weight gradients).

``compute`` charges these per block pass, with E explicit blocks (DiT: depth; FPDM: pre + post,
always backpropagated: the injection is not detached) and the fixed point counts the training mode
reports (``fpdm.training_modes.FixedPointCounts``: what actually ran):

    DiT            3 E (+ E with gradient checkpointing)
    FPDM           3 E (+ E) + no_grad + 3 with_grad + 2 vjp
      sjfb         n + 3 m                 (n, m drawn per step)
      jfb          N + 3;  multistep_jfb  N + 3 M;  full  3 (n + m)
      implicit     forward solve nfe + 3 + 2 x adjoint VJPs actually run

It charges an iteration as one block and leaves out the embedders, the injection MLP and the final
layer, as the paper's block count does. ``flops`` charges the same weights to the measured FLOPs of
``harness.compute.flops.FlopBreakdown`` (one forward per image): with X the part run once per
forward (embedders, explicit blocks, the solve's loop invariants, final layer; DiT: its whole
forward), B one block and I one fixed point iteration as run (block + injection MLP, about 1.28 B
at the tiny preset and 1.32 B at XL/2),

    DiT            3 X (+ E B with gradient checkpointing)
    FPDM           3 X (+ E B) + I (no_grad + 3 with_grad + 2 vjp)

A run stops at the first step boundary that reaches the budget; the check below replays the seeded
draws (or takes the worst case where the data decides) before training, so a budget the run would
miss by more than ``train.budget.tolerance`` is refused up front.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from fpdm.training_modes import FixedPointCounts, ImplicitTrainSpec, planned_counts

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import nn

    from fpdm.model import SolveTrace
    from harness.compute.flops import FlopBreakdown

FORWARD, BACKWARD, RECOMPUTE, VJP = 1, 2, 1, 2
BUDGET_UNITS = ("steps", "seconds", "block_passes", "compute", "flops")
_UNIT_WORDS = {"compute": "forward-equivalents", "flops": "FLOPs"}  # what a counted budget is in
MAX_REPLAYED_STEPS = 2_000_000  # beyond this the check uses the worst-case step instead of a replay


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator fixed by (seed, step, stream): the same draws before and after a resume
    (stream 1: the step's timesteps, noise and label dropout; 2: the model's own draws; 7: data order)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 97 + stream) % (2**63 - 1))


def implicit_train_spec(train_cfg: DictConfig) -> ImplicitTrainSpec:
    """The ``train.*`` settings of the fixed point layer's training mode."""
    return ImplicitTrainSpec(
        method=train_cfg.method,
        no_grad_min=train_cfg.iters.no_grad.min,
        no_grad_max=train_cfg.iters.no_grad.max,
        with_grad_min=train_cfg.iters.with_grad.min,
        with_grad_max=train_cfg.iters.with_grad.max,
        implicit_solver=train_cfg.implicit_solver,
        implicit_tol=float(train_cfg.implicit_tol),
    )


def step_compute(explicit_blocks: int, checkpointing: bool, counts: FixedPointCounts | None = None) -> int:
    """Forward-equivalents per image of one training step (see the module docstring)."""
    per_explicit = FORWARD + BACKWARD + (RECOMPUTE if checkpointing else 0)
    cost = explicit_blocks * per_explicit
    if counts is not None:
        cost += counts.no_grad * FORWARD + counts.with_grad * (FORWARD + BACKWARD) + counts.vjp * VJP
    return cost


def model_step_compute(model: nn.Module, trace: SolveTrace) -> int:
    """The step ``model`` just ran, from the ``trace`` its forward filled (call after
    ``loss.backward()``: adjoint VJPs run there and are added to ``trace.counts``)."""
    counts = getattr(trace, "counts", None)
    return step_compute(model.num_explicit_blocks, bool(model.grad_checkpointing), counts)


def step_flops(
    flops: FlopBreakdown, explicit_blocks: int, checkpointing: bool, counts: FixedPointCounts | None = None
) -> int:
    """Training FLOPs per image of one step (see the module docstring): the forward's once-per-forward
    part forward and backward, the explicit blocks' recompute, each fixed point evaluation by its kind."""
    require_priced_recompute(flops, checkpointing)
    cost = flops.explicit_per_forward * (FORWARD + BACKWARD)
    if checkpointing:
        cost += explicit_blocks * flops.block * RECOMPUTE
    if counts is not None:
        evals = counts.no_grad * FORWARD + counts.with_grad * (FORWARD + BACKWARD) + counts.vjp * VJP
        cost += flops.per_iteration * evals
    return cost


def prices_recompute(flops: FlopBreakdown, checkpointing: bool) -> bool:
    """Whether ``step_flops`` can price the step: a checkpoint recompute needs the per-block count."""
    return not checkpointing or flops.block > 0


def require_priced_recompute(flops: FlopBreakdown, checkpointing: bool) -> None:
    if not prices_recompute(flops, checkpointing):
        raise ValueError(
            "train.budget.unit=flops cannot price gradient checkpointing's recompute for a model without "
            "a per-block FLOP count (model=dit_diffusers); set model.grad_checkpointing=false or use unit=compute"
        )


def model_step_flops(model: nn.Module, trace: SolveTrace, flops: FlopBreakdown) -> float:
    """``step_flops`` of the step ``model`` just ran (``flops``: its ``FlopBreakdown``, measured once);
    NaN (unknown) where the recompute cannot be priced: only a ``unit=flops`` budget needs it, and the
    config check refuses that combination."""
    ckpt = bool(model.grad_checkpointing)
    if not prices_recompute(flops, ckpt):
        return math.nan
    return step_flops(flops, model.num_explicit_blocks, ckpt, getattr(trace, "counts", None))


def _worst_counts(spec: ImplicitTrainSpec) -> FixedPointCounts:
    """The costliest step of any mode: the implicit mode's full solves, N + M forward evaluations,
    one with gradient and N + M VJPs (3(N+M) + 3, at least full's 3(N+M) and S-JFB's n + 3m)."""
    budget = spec.no_grad_max + spec.with_grad_max
    return FixedPointCounts(no_grad=budget, with_grad=1, vjp=budget)


def _step_costs(cfg, flops: FlopBreakdown | None = None) -> tuple[Callable[[int], int | None], int, str]:
    """(cost of step s or None when only running tells, worst-case step cost, description), in
    forward-equivalents, or in FLOPs when ``flops`` (the model's ``FlopBreakdown``) is given."""
    from harness.compute.plan import explicit_blocks

    m, t = cfg.model, cfg.train
    ckpt = bool(m.grad_checkpointing)

    def price(explicit: int, counts: FixedPointCounts | None = None) -> int:
        return step_compute(explicit, ckpt, counts) if flops is None else step_flops(flops, explicit, ckpt, counts)

    if m.name != "fpdm":
        depth = explicit_blocks(cfg)  # the resolved depth: model.depth overrides the preset's
        cost = price(depth)
        what = f"{cost} per step: {cost // depth} x {depth} blocks" if flops is None else f"{cost} FLOPs per step"
        return (lambda s: cost), cost, f"model={m.name} ({what})"
    spec = implicit_train_spec(t)
    explicit = m.pre_depth + m.post_depth

    def cost_at(s: int) -> int | None:
        counts = planned_counts(t.method, spec, step_generator(t.seed, s, 2))
        return None if counts is None else price(explicit, counts)

    return cost_at, price(explicit, _worst_counts(spec)), f"train.method={t.method} (train.seed={t.seed})"


def _replay(cost_at: Callable[[int], int | None], value: float) -> Iterator[tuple[int, int, int]]:
    """(steps, spent before the last step, spent) where the run stops; nothing if unknowable."""
    spent, before, s = 0, 0, 0
    while spent < value:
        if s >= MAX_REPLAYED_STEPS:
            return
        cost = cost_at(s)
        if cost is None:
            return
        before, spent, s = spent, spent + cost, s + 1
    yield s, before, spent


def check_compute_budget(cfg: DictConfig, flops: FlopBreakdown | None = None) -> str | None:
    """None if a ``train.budget.unit=compute`` (or ``flops``, given the model's ``FlopBreakdown``) run
    lands within ``train.budget.tolerance`` of ``train.budget.value``; else one line saying how close
    it gets and what to change."""
    value, tol = float(cfg.train.budget.value), float(cfg.train.budget.tolerance)
    unit = cfg.train.budget.unit
    words = _UNIT_WORDS[unit]
    cost_at, worst, who = _step_costs(cfg, flops if unit == "flops" else None)
    stop = next(_replay(cost_at, value), None)
    if stop is None:  # data-dependent (or very long): the last step overshoots by at most `worst`
        if worst <= tol * value:
            return None
        return (
            f"train.budget.value={value:g} (unit={unit}) may be overshot by up to {worst} {words} "
            f"({worst / value:.1%}) with {who}, whose cost depends on the data; raise train.budget.value to "
            f">= {worst / tol:.0f}, set train.implicit_tol=0 (fixed solves) or raise train.budget.tolerance"
        )
    steps, before, spent = stop
    gap = (spent - value) / value
    if gap <= tol:
        return None
    options = f"{before} or {spent}" if before else f"{spent}"
    return (
        f"train.budget.value={value:g} (unit={unit}) cannot be met within train.budget.tolerance={tol:g}: "
        f"{who} spends {before} {words} per image after {steps - 1} steps and {spent} after "
        f"{steps} (+{gap:.1%}); set train.budget.value={options}, or raise train.budget.tolerance"
    )
