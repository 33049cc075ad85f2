"""The searched schedule family of ``sweep=schedule_search`` (Optuna's custom search space).

A member is ``sample.schedule=density`` with ``sample.knots``: KNOTS knot heights of a
piecewise-linear density over sampling order (fpdm/schedules.py ``density``), plus the number of
steps (an ordinary ``sample.steps`` sweep parameter). Any density is allowed, not only monotone
ones, so the family contains constant, increasing, decreasing and hump shapes. Every member spends
exactly the budget with >= 1 iteration per step (largest-remainder apportionment). The heights are
relative (scaling all of them changes nothing), so one of them could be fixed; TPE copes with the
redundancy and a fixed knot would bias the search's starting points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

KNOTS = 4  # knot heights searched; a family with more knots than steps is refused (sample.knots)
HEIGHT_RANGE = (0.05, 1.0)


def search_space(trial: Any) -> dict[str, list[float]]:
    """``hydra.sweeper.custom_search_space``: the knot heights as one ``sample.knots`` override."""
    lo, hi = HEIGHT_RANGE
    heights = [round(trial.suggest_float(f"knot{j}", lo, hi), 3) for j in range(KNOTS)]
    return {"sample.knots": heights}
