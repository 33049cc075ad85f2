"""Iteration schedules (fpdm/schedules.py): contract properties, directions, official controller
numbers (docs/paper-notes.md §4.3, §8.5), and error messages."""

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpdm.schedules import get_schedule, list_schedules, register_schedule

SHAPED = ["constant", "increasing", "decreasing", "cosine", "official_increasing"]


@st.composite
def budgets(draw, max_steps=60):
    steps = draw(st.integers(1, max_steps))
    total = draw(st.integers(steps, steps * 40))
    return total, steps


ratios = st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 3.0)).map(sorted).filter(lambda r: r[1] > 0)


def _nondecreasing(xs):
    return all(a <= b for a, b in zip(xs, xs[1:]))


# ------------------------------------------------------------------ contract
@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(SHAPED), tb=budgets(), ratio=ratios)
def test_contract_exact_sum_positive_length(name, tb, ratio):
    total, steps = tb
    out = get_schedule(name)(total, steps, ratio=ratio)
    assert len(out) == steps
    assert sum(out) == total
    assert min(out) >= 1
    assert all(isinstance(v, int) for v in out)


@settings(max_examples=100, deadline=None)
@given(tb=budgets())
def test_constant_differs_by_at_most_one(tb):
    total, steps = tb
    out = get_schedule("constant")(total, steps)
    assert max(out) - min(out) <= 1
    assert set(out) <= {total // steps, math.ceil(total / steps)}


@settings(max_examples=100, deadline=None)
@given(tb=budgets(), ratio=ratios)
def test_direction_monotone(tb, ratio):
    total, steps = tb
    inc = get_schedule("increasing")(total, steps, ratio=ratio)
    dec = get_schedule("decreasing")(total, steps, ratio=ratio)
    cos = get_schedule("cosine")(total, steps, ratio=ratio)
    assert _nondecreasing(inc), inc  # fewest at the noisiest (first) step
    assert _nondecreasing(dec[::-1]), dec  # most at the noisiest step
    assert _nondecreasing(cos), cos
    # increasing and decreasing use the same weights, mirrored; ties (and so the rounding)
    # are oriented by direction, so they are exact mirror images
    assert inc == dec[::-1]


def _controller_verbatim(budget, steps, ratio):
    """LinearController(type="increasing") as released, in exact arithmetic: ceil below a
    threshold starting at S//2, floor above, threshold lowered until sum <= budget; get()
    reads from the last index, hence the reversal into sampling order."""
    lo, hi = (Fraction(x) for x in ratio)
    r = [lo + (hi - lo) * Fraction(i, steps - 1) for i in range(steps)] if steps > 1 else [lo]
    if sum(r) == 0:  # one step with lo = 0: the controller divides 0 by 0; ours gives [budget]
        r = [Fraction(1)]
    f = [1 + (budget - steps) * x / sum(r) for x in r]
    th = steps // 2
    while True:
        b = [math.ceil(x) if i < th else math.floor(x) for i, x in enumerate(f)]
        if sum(b) <= budget:
            return b[::-1], f[::-1]
        th -= 1


@settings(max_examples=100, deadline=None)
@given(tb=budgets(), ratio=ratios)
def test_official_increasing_matches_controller(tb, ratio):
    total, steps = tb
    off = get_schedule("official_increasing")(total, steps, ratio=ratio)
    ref, shares = _controller_verbatim(total, steps, ratio)
    if sum(ref) == total:  # the controller spent the budget: identical lists
        assert off == ref
    else:  # it under-spent: ours tops up, never dropping an entry
        assert all(o >= c for o, c in zip(off, ref))
    # every entry is its exact share rounded up or down: the shape (most iterations at the
    # noisiest step) holds up to the rounding, at most one iteration out of order
    assert all(abs(o - e) < 1 for o, e in zip(off, shares))
    assert all(off[i] >= off[j] - 1 for i in range(steps) for j in range(i, steps))


def test_official_rounding_is_not_always_monotone():
    # documented finding: the controller's ceil-then-floor rule gives the smaller share more
    # (shares 1.75 at the noisiest step, 1.25 at the last -> [1, 2])
    assert get_schedule("official_increasing")(3, 2) == [1, 2]
    assert get_schedule("decreasing")(3, 2) == [2, 1]


def test_increasing_means_more_at_later_sampling_steps():
    out = get_schedule("increasing")(210, 35)
    assert out[0] < out[-1]
    assert out[0] == 3 and out[-1] == 9  # shares 3.5 and 8.5 with the paper ratio (1:3 extra span)


def test_ratio_span_is_configurable():
    flat = get_schedule("increasing")(60, 10, ratio=(1.0, 1.0))
    assert flat == [6] * 10
    steep = get_schedule("increasing")(60, 10, ratio=(0.0, 1.0))
    assert steep[0] == 1 and steep[-1] > get_schedule("increasing")(60, 10)[-1]


def test_cosine_shape_flat_ends_steep_middle():
    out = get_schedule("cosine")(1000, 21, ratio=(0.5, 1.5))
    lin = get_schedule("increasing")(1000, 21, ratio=(0.5, 1.5))
    assert out[0] == lin[0] and out[-1] == lin[-1]  # same end weights
    assert out[1] - out[0] < out[11] - out[10]  # eased start, steeper middle
    assert out[3] < lin[3] and out[17] > lin[17]


# ------------------------------------------------------------------ official controller numbers
def test_official_controller_s35_six_per_step():
    out = get_schedule("official_increasing")(35 * 6, 35)
    assert out[:5] == [8, 8, 8, 8, 7]
    assert out[-5:] == [5, 4, 4, 4, 4]
    assert sum(out) == 210


def test_official_controller_s10_26_per_step():
    out = get_schedule("official_increasing")(260, 10)
    assert out[0] == 38 and out[-1] == 14 and sum(out) == 260


def test_official_differs_from_largest_remainder():
    # exact largest-remainder of the same shares gives 9 first and 3 last: the official
    # rounding had to be reproduced separately
    assert get_schedule("decreasing")(210, 35)[0] == 9
    assert get_schedule("decreasing")(210, 35)[-1] == 3


# ------------------------------------------------------------------ list schedule and errors
def test_list_schedule_validates():
    fn = get_schedule("list")
    assert fn(10, 3, values=[2, 3, 5]) == [2, 3, 5]
    with pytest.raises(ValueError, match="got 2 values for num_steps=3"):
        fn(10, 3, values=[5, 5])
    with pytest.raises(ValueError, match=">= 1"):
        fn(10, 3, values=[0, 5, 5])
    with pytest.raises(ValueError, match=r"sum to 9 but total_iters=10.*\+1"):
        fn(10, 3, values=[2, 3, 4])
    with pytest.raises(ValueError, match="needs values"):
        fn(10, 3)


@pytest.mark.parametrize("name", SHAPED)
def test_infeasible_total_is_a_clear_error(name):
    with pytest.raises(ValueError, match=r"total_iters=4 cannot give num_steps=5.*>= 5.*<= 4"):
        get_schedule(name)(4, 5)


def test_bad_arguments():
    fn = get_schedule("increasing")
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        fn(10, 0)
    with pytest.raises(ValueError, match="whole number"):
        fn(10.5, 3)
    with pytest.raises(TypeError):
        fn(True, 1)
    with pytest.raises(ValueError, match="ratio must satisfy"):
        fn(10, 3, ratio=(1.5, 0.5))
    assert fn(10.0, 2) == fn(10, 2)  # integral floats from YAML are fine


def test_registry():
    assert set(SHAPED) | {"list"} <= set(list_schedules())
    with pytest.raises(KeyError, match="constant"):
        get_schedule("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_schedule("constant")(lambda t, s, **kw: [t])


def test_registered_schedule_contract_is_enforced():
    @register_schedule("_test_broken")
    def broken(total, steps, **kw):
        return [1] * steps  # does not spend the budget

    try:
        with pytest.raises(AssertionError, match="broke its contract"):
            broken(10, 3)
    finally:
        from fpdm import schedules

        schedules.SCHEDULES.remove("_test_broken")
