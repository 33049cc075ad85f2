"""``run.plan=true`` for an Optuna sweep: print what the sweep would do, run and touch nothing.

The plan lists the search space (one line per parameter with its Optuna distribution), the fixed
overrides, the sampler, directions, the study's storage and how many of its ``n_trials`` trials
are already done (read without creating the journal, the database or the study), so a user sees
before launching whether a rerun would top up an existing study or start a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from . import storage as st
from .search_space import SearchSpace


def _distribution(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"choice({', '.join(map(str, dist.choices))})"
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    extra = ", log" if dist.log else (f", step={dist.step}" if dist.step not in (None, 1) else "")
    return f"{kind} [{dist.low}, {dist.high}]{extra}"


def plan_lines(
    *,
    study_name: str,
    space: SearchSpace,
    custom: str | None,
    sampler: Any,
    seed: int | None,
    directions: Sequence[str],
    n_trials: int | None,
    n_jobs: int,
    storage: str | None,
    trials: list[FrozenTrial] | None,
) -> list[str]:
    """The lines printed for the plan (pure: everything is passed in)."""
    done = (
        "in memory: a new study each run"
        if trials is None
        else (
            f"{st.budget_used(trials)} trial(s) done of {n_trials if n_trials is not None else 'the whole grid'}"
            + (", a rerun tops up the same study" if trials else ", a new study")
        )
    )
    sampler_name = sampler if isinstance(sampler, str) else dict(sampler).get("name") or dict(sampler).get("_target_")
    lines = [
        f"[plan] Optuna study {study_name!r}: {done}",
        f"[plan]   storage: {storage or 'memory'}",
        f"[plan]   sampler: {sampler_name} (seed {seed}), direction: {', '.join(directions)}, "
        f"n_trials: {n_trials}, n_jobs: {n_jobs}",
    ]
    lines += [
        f"[plan]   param {space.keys.get(name, name)}: {_distribution(dist)}"
        for name, dist in space.distributions.items()
    ]
    if custom:
        lines.append(f"[plan]   custom search space: {custom}")
    lines += [f"[plan]   fixed: {override}" for override in space.fixed]
    lines.append("[plan] nothing was run; drop run.plan=true to start the trials")
    return lines
