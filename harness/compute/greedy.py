"""Residual-informed static schedules (``sample.schedule=greedy``): water-filling on residual traces.

Given, per sampling step i, the mean relative residual ``r_i(k)`` after ``k = 0..K`` fixed point
iterations (a calibration run's traces, ``harness.stages.calibrate``), spend ``total`` iterations
so that ``sum_i r_i(k_i)`` is smallest, with ``1 <= k_i <= K``. With diminishing returns (each
further iteration lowers ``r_i`` by no more than the one before, i.e. ``r_i`` convex in k) the
greedy rule "give the next iteration to the step where it lowers the residual most" is optimal
for this separable concave allocation (Gross 1956; the discrete water-filling argument). Measured
traces are noisy, so the gains of iterations 2..K are first replaced by their non-increasing
least-squares fit (pool adjacent violators), which keeps their sum: the total reduction at K.

Pure function of ``(traces, total)``: the plan sums exactly to ``total`` (integers, no rounding
step needed) and ties go to the earlier (noisier) step, so the result is deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from harness.compute.plan import BudgetError


def nonincreasing_fit(values: Sequence[float]) -> list[float]:
    """Least-squares non-increasing fit (pool adjacent violators, equal weights)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(int(c))]


def greedy_allocation(traces: Sequence[Sequence[float]], total: int) -> list[int]:
    """Iterations per step (sampling order) minimising the summed residual; sums exactly to ``total``.

    ``traces[i][k]``: residual at step i after k iterations, k = 0..K (K >= 1, the same K for all)."""
    steps = len(traces)
    if steps == 0:
        raise BudgetError("greedy schedule: no residual traces (the calibration run recorded no step)")
    cap = min(len(t) for t in traces) - 1
    if cap < 1:
        raise BudgetError("greedy schedule: residual traces need the residual after >= 1 iteration per step")
    if not steps <= total <= steps * cap:
        raise BudgetError(
            f"greedy schedule: {total} iterations over {steps} steps must lie in [{steps}, {steps * cap}] "
            f"(1 to sample.adaptive.max_iters_per_step={cap} per step); change sample.budget or "
            f"sample.adaptive.max_iters_per_step"
        )
    gains = []
    for t in traces:
        raw = [float(t[k - 1]) - float(t[k]) for k in range(2, cap + 1)]  # gain of iteration k = 2..K
        gains.append(nonincreasing_fit(raw))
    alloc = [1] * steps
    heap = [(-g[0], i) for i, g in enumerate(gains) if g]  # max-heap by gain; ties -> lower index
    heapq.heapify(heap)
    for _ in range(total - steps):
        _, i = heapq.heappop(heap)
        alloc[i] += 1
        nxt = alloc[i] - 1  # index of the next iteration's gain (iteration alloc[i] + 1)
        if nxt < len(gains[i]):
            heapq.heappush(heap, (-gains[i][nxt], i))
    assert sum(alloc) == total and min(alloc) >= 1  # noqa: S101 - the contract every plan keeps
    return alloc
