"""Multiplicity control for the paired comparisons of one table: bootstrap p-values, Holm's step-down.

A report makes many comparisons at once (every schedule against constant at every budget, under two
rulers), so a 5% test per comparison would call some differences real by chance alone. Each table's
comparisons under one ruler are one family, and Holm's step-down procedure (Holm 1979, "A simple
sequentially rejective multiple test procedure") holds the chance of any false claim in the family
at ``ALPHA``, with no assumption about how the comparisons depend on each other.

The p-value of one comparison comes from its paired bootstrap draws of the difference d
(reports.significance): two-sided, ``2 * min(P(d <= 0), P(d >= 0))``, each tail counted with the
+1 correction of Monte Carlo tests, ``(1 + #tail) / (B + 1)`` (Davison & Hinkley 1997, Ch. 4), so
it is never 0: with B draws the smallest p is ``2 / (B + 1)``, and a family of m comparisons can only declare a
difference when ``m * 2 / (B + 1) <= ALPHA`` (``metrics.bootstrap`` large enough).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALPHA = 0.05


def bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'the difference is 0' from the draws of the difference."""
    d = np.asarray(draws, np.float64)
    b = len(d)
    lower = (1 + int((d <= 0).sum())) / (b + 1)
    upper = (1 + int((d >= 0).sum())) / (b + 1)
    return float(min(1.0, 2 * min(lower, upper)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest of m is multiplied by
    m - i + 1 (i from 1), made non-decreasing along the order, and capped at 1."""
    p = np.asarray(pvalues, np.float64)
    m = len(p)
    out = np.empty(m)
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="mergesort")):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def decide(diff: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """'better' / 'worse' (the setting's FID is lower / higher) where the adjusted p is at most
    ``alpha``; else 'tie'."""
    if p_adjusted > alpha:
        return "tie"
    return "better" if diff < 0 else "worse"


def family_text(m: int) -> str:
    return f"Holm over the {m} comparison{'s' if m != 1 else ''} of this table, per ruler"


def too_few_resamples(m: int, resamples: int, alpha: float = ALPHA) -> bool:
    """True where no comparison of a family of ``m`` can reach ``alpha`` with ``resamples`` draws."""
    return m * 2 / (resamples + 1) > alpha
