"""Budget math (harness/compute/plan.py): paper examples (docs/paper-notes.md §4.1, §8.2, footnote 4), exact
budget properties, FLOP matching, and error messages naming the config keys."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.compute.plan import (
    BudgetError,
    SamplingPlan,
    dit_flops_budget,
    dit_flops_target,
    plan_dit,
    plan_fpdm,
    plan_fpdm_flops,
    plan_from_sample_config,
    sampling_block_passes,
)

SCHEDULES = ["constant", "increasing", "decreasing", "cosine", "official_increasing"]


def _consistent(plan: SamplingPlan) -> None:
    assert plan.block_passes == sum(plan.block_passes_per_step) == sampling_block_passes(plan)
    assert plan.block_passes == sum(plan.iters) + plan.steps * plan.n_explicit
    assert len(plan.iters) == len(plan.block_passes_per_step) == plan.steps


# ------------------------------------------------------------------ paper examples
@pytest.mark.parametrize("budget,k,steps", [(280, 1, 93), (280, 26, 10), (280, 68, 4), (560, 8, 56)])
def test_paper_iteration_examples(budget, k, steps):
    plan = plan_fpdm(budget, 2, iters=k)
    assert plan.steps == steps
    assert plan.block_passes == budget
    assert min(plan.iters) == k
    _consistent(plan)


def test_k1_at_280_uses_the_last_block():
    # the paper's 93 x 3 = 279; we spend the 280th block as one extra iteration
    plan = plan_fpdm(280, 2, iters=1)
    assert sorted(plan.iters) == [1] * 92 + [2]
    assert plan.k_mean == pytest.approx(94 / 93)


@pytest.mark.parametrize("budget,steps", [(140, 5), (280, 10), (560, 20)])
def test_dit_budgets(budget, steps):
    plan = plan_dit(budget, 28)
    assert plan.steps == steps and plan.block_passes == budget
    assert plan.block_passes_per_step == (28,) * steps and plan.k_mean == 0
    _consistent(plan)


@pytest.mark.parametrize("s", [1, 5, 10, 20])
def test_footnote4_equivalence(s):
    # 1 pre/post + 26 iterations over S steps == 2 pre/post + 10 iterations over 2S == DiT over S
    a = plan_fpdm(28 * s, 2, iters=26)
    b = plan_fpdm(28 * s, 4, iters=10)
    c = plan_dit(28 * s, 28)
    assert (a.steps, b.steps, c.steps) == (s, 2 * s, s)
    assert set(a.iters) == {26} and set(b.iters) == {10}
    assert a.block_passes == b.block_passes == c.block_passes == 28 * s


def test_steps_mode_schedule_over_fixed_point_share():
    plan = plan_fpdm(280, 2, steps=35, schedule="official_increasing")
    assert plan.total_iters == 210  # 280 - 35 * 2
    assert plan.iters[:4] == (8, 8, 8, 8) and plan.iters[-4:] == (4, 4, 4, 4)
    assert plan.block_passes_per_step[0] == 10
    inc = plan_fpdm(280, 2, steps=35, schedule="increasing")
    assert inc.iters[0] < inc.iters[-1] and inc.schedule == "increasing"


def test_list_schedule_infers_steps():
    plan = plan_fpdm(20, 2, schedule="list", values=[3, 5, 6])
    assert plan.steps == 3 and plan.iters == (3, 5, 6) and plan.block_passes == 20
    with pytest.raises(BudgetError, match=r"sample.schedule=list.*sum to 14 but total_iters=13"):
        plan_fpdm(19, 2, schedule="list", values=[3, 5, 6])


# ------------------------------------------------------------------ properties
@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 6), k=st.integers(1, 40), extra=st.integers(0, 2000), schedule=st.sampled_from(SCHEDULES))
def test_iters_mode_spends_budget_exactly(n, k, extra, schedule):
    budget = n + k + extra
    plan = plan_fpdm(budget, n, iters=k, schedule=schedule)
    assert plan.steps == budget // (n + k)
    assert plan.block_passes == budget
    assert min(plan.iters) >= 1 and plan.k_mean >= k
    _consistent(plan)
    if schedule == "constant":
        assert max(plan.iters) - min(plan.iters) <= 1 and min(plan.iters) >= k


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 6), steps=st.integers(1, 100), extra=st.integers(0, 2000), schedule=st.sampled_from(SCHEDULES))
def test_steps_mode_spends_budget_exactly(n, steps, extra, schedule):
    budget = steps * (n + 1) + extra
    plan = plan_fpdm(budget, n, steps=steps, schedule=schedule)
    assert plan.steps == steps and plan.block_passes == budget
    assert min(plan.iters) >= 1
    _consistent(plan)
    short = steps * (n + 1) - 1  # one block fewer than the minimum is refused, with the fix
    if short >= 1:
        with pytest.raises(
            BudgetError,
            match=rf"raise sample.budget to >= {short + 1} or lower "
            rf"sample.steps to <= {short // (n + 1)}$",
        ):
            plan_fpdm(short, n, steps=steps, schedule=schedule)


@settings(max_examples=100, deadline=None)
@given(depth=st.integers(1, 40), budget=st.integers(1, 2000))
def test_dit_whole_steps_or_refused(depth, budget):
    if budget % depth == 0:
        assert plan_dit(budget, depth).steps == budget // depth
    else:
        lo, hi = budget // depth * depth, (budget // depth + 1) * depth
        msg = rf"sample.budget={budget} .*nearest feasible budgets: .*{hi}"
        with pytest.raises(BudgetError, match=msg):
            plan_dit(budget, depth)
        if lo:
            with pytest.raises(BudgetError, match=rf"{lo} or {hi}"):
                plan_dit(budget, depth)


@settings(max_examples=100, deadline=None)
@given(
    E=st.integers(1, 10**6),
    I=st.integers(1, 10**6),
    steps=st.floats(0.5, 300),
    k=st.integers(1, 30),
    schedule=st.sampled_from(SCHEDULES),
    as_float=st.booleans(),
)
def test_flop_mode_never_exceeds_budget(E, I, steps, k, schedule, as_float):
    F = int(steps * (E + k * I))  # about `steps` sampling steps' worth of FLOPs
    if as_float:
        E, I, F = E * 1.1, I * 0.7, F * 1.3
    try:
        plan = plan_fpdm_flops(F, E, I, n_explicit=2, iters=k, schedule=schedule)
    except BudgetError:
        assert F < E + k * I  # refused only when not even one step fits
        return

    def cost(s, t):  # FLOPs of s steps with t iterations in total
        return s * E + t * I

    assert plan.flops_per_image == cost(plan.steps, plan.total_iters) <= F
    # largest: one more iteration would exceed it; one more step at k would not fit
    assert cost(plan.steps, plan.total_iters + 1) > F
    assert cost(plan.steps + 1, (plan.steps + 1) * k) > F
    assert plan.total_iters >= plan.steps * k
    if schedule == "constant":
        assert min(plan.iters) >= k
    _consistent(plan)


# ------------------------------------------------------------------ FLOP matching examples
def test_flop_matching_against_dit():
    # XL-like costs relative to a block = 1.0 (docs/paper-notes.md §8.4): DiT forward 28 blocks,
    # FPDM explicit 2.08 per step, 1.48 per iteration (block + injection MLP)
    budget = dit_flops_budget(10, 28.0)
    assert budget == 280.0
    by_blocks = plan_fpdm(280, 2, iters=6)
    by_flops = plan_fpdm_flops(budget, 2.08, 1.48, n_explicit=2, iters=6)
    assert by_blocks.steps == 35
    assert by_flops.steps == 280.0 // (2.08 + 6 * 1.48) == 25
    assert by_flops.flops_per_image <= budget and by_flops.block_passes < 280
    steps_mode = plan_fpdm_flops(budget, 2.08, 1.48, n_explicit=2, steps=25, schedule="increasing")
    assert steps_mode.total_iters == int((280 - 25 * 2.08) / 1.48)
    with pytest.raises(BudgetError, match="lower sample.steps to <= 78"):
        plan_fpdm_flops(budget, 2.08, 1.48, n_explicit=2, steps=100)
    with pytest.raises(BudgetError, match="flops_per_iter > 0"):
        plan_fpdm_flops(budget, 2.08, 0, n_explicit=2, steps=10)


def test_dit_flops_target_is_whole_steps_or_pro_rata():
    """What DiT spends on a budget: 60 blocks at depth 6 = 10 forwards (an exact int); 20 blocks = 3 1/3
    forwards of 10,207,232 = 34,024,106.67 (an FPDM-only budget still has a FLOP equivalent)."""
    assert dit_flops_target(60, 6, 10_207_232) == 102_072_320 and isinstance(dit_flops_target(60, 6, 7), int)
    assert dit_flops_target(20, 6, 10_207_232) == pytest.approx(34_024_106.667, abs=1e-3)
    assert dit_flops_target(280, 28, 237_000_000_000) == 10 * 237_000_000_000
    with pytest.raises(BudgetError, match="sample.budget must be >= 1"):
        dit_flops_target(0, 6, 10)


def test_a_flop_plan_carries_its_target():
    plan = plan_fpdm_flops(280.0, 2.08, 1.48, n_explicit=2, iters=6)
    assert plan.flops_target == 280.0 and plan.to_dict()["flops_target"] == 280.0
    assert plan_fpdm(280, 2, iters=6).flops_target is None  # the paper's block count: no FLOP target


# ------------------------------------------------------------------ errors
def test_steps_and_iters_exactly_one():
    with pytest.raises(BudgetError, match="exactly one of sample.steps or sample.iters"):
        plan_fpdm(280, 2, steps=10, iters=26)
    with pytest.raises(BudgetError, match="set one of sample.steps or sample.iters"):
        plan_fpdm(280, 2)
    assert issubclass(BudgetError, ValueError)


def test_infeasible_messages():
    with pytest.raises(BudgetError, match=r"sample.steps=200.*needs 600 blocks.*>= 600.*<= 93"):
        plan_fpdm(280, 2, steps=200)
    msg = r"sample.budget=10 is below one step at sample.iters=26.*>= 28.*<= 8"
    with pytest.raises(BudgetError, match=msg):
        plan_fpdm(10, 2, iters=26)
    with pytest.raises(BudgetError, match=r"sample.budget=300 .*depth 28.*280 or 308"):
        plan_dit(300, 28)
    with pytest.raises(BudgetError, match="nearest feasible budgets: 28$"):
        plan_dit(20, 28)
    with pytest.raises(BudgetError, match="sample.budget must be >= 1"):
        plan_fpdm(0, 2, iters=1)
    with pytest.raises(BudgetError, match="sample.iters must be a whole number"):
        plan_fpdm(280, 2, iters=2.5)
    with pytest.raises(KeyError, match=r"unknown schedule 'nope' \(sample.schedule\); valid names: .*cosine"):
        plan_fpdm(280, 2, iters=4, schedule="nope")
    with pytest.raises(BudgetError, match="sample.schedule=increasing: ratio must satisfy"):
        plan_fpdm(280, 2, iters=4, schedule="increasing", ratio=(2.0, 1.0))


def test_plan_is_frozen_and_checked():
    plan = plan_fpdm(280, 2, iters=6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.steps = 3
    with pytest.raises(ValueError, match="inconsistent"):
        dataclasses.replace(plan, block_passes=plan.block_passes + 1)
    d = plan.to_dict()
    assert d["iters"] == list(plan.iters) and d["block_passes"] == 280
    assert d["k_mean"] == 6.0 and d["total_iters"] == 210


# ------------------------------------------------------------------ config entry point
def test_plan_from_sample_config():
    assert plan_from_sample_config("dit", 560, 28).steps == 20
    assert plan_from_sample_config("dit_diffusers", 560, 28).steps == 20  # same depth-per-step rule
    assert plan_from_sample_config("dit", None, 28, steps=7).block_passes == 196
    with pytest.raises(BudgetError, match="sample.steps=7 contradicts sample.budget=560"):
        plan_from_sample_config("dit", 560, 28, steps=7)
    p = plan_from_sample_config("fpdm", 560, 2, iters=8, schedule="decreasing")
    assert p.steps == 56 and p.iters[0] >= p.iters[-1] and p.block_passes == 560
    # no budget: steps and iters define it (constant k per step)
    p = plan_from_sample_config("fpdm", None, 2, steps=10, iters=26)
    assert p.block_passes == 280 and set(p.iters) == {26}
    with pytest.raises(BudgetError, match="set sample.budget, or both"):
        plan_from_sample_config("fpdm", None, 2, steps=10)
    with pytest.raises(KeyError, match="fpdm"):
        plan_from_sample_config("unet", 280, 2, iters=1)
