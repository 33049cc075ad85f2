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


KNOT_PARAMS = tuple(f"knot{j}" for j in range(KNOTS))  # the Optuna param name of each knot height


def knots_from_params(params: dict[str, float]) -> list[float]:
    """The ``sample.knots`` a trial with these Optuna params ran (the search space rounds each height
    to 3 decimals before it becomes the override): the inverse used to carry a study's best member
    into ``sweep=schedule_compare`` (harness/app/searched.py). KeyError when a knot is missing."""
    return [round(float(params[name]), 3) for name in KNOT_PARAMS]


def search_space(trial: Any) -> dict[str, list[float]]:
    """``hydra.sweeper.custom_search_space``: the knot heights as one ``sample.knots`` override."""
    lo, hi = HEIGHT_RANGE
    params = {name: trial.suggest_float(name, lo, hi) for name in KNOT_PARAMS}
    return {"sample.knots": knots_from_params(params)}
