"""Objective values from a Hydra job's result; anything unusable becomes a failed trial.

hydra-optuna-sweeper crashed the whole sweep on a NaN objective (a double ``study.tell``,
hydra#2237). Here a job that raised, returned None, a non-number, the wrong number of values
or a non-finite value yields a :class:`TrialFailure` carrying a one-line reason; the sweeper tells
the trial as FAIL (no values) and goes on.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus


class TrialFailure(Exception):
    """The job's result cannot be told as COMPLETE; ``str(err)`` is the reason."""


def _lookup(result: Any, key: str) -> Any:
    node = result
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif hasattr(node, part):
            node = getattr(node, part)
        else:
            raise TrialFailure(f"objective_key {key!r}: {part!r} not in the task's return value")
    return node


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # 0-d tensors / numpy scalars expose item(); anything else is not an objective.
        item = getattr(value, "item", None)
        if item is None:
            raise TrialFailure(f"{what} is {type(value).__name__}, not a number")
        value = item()
    value = float(value)
    if not math.isfinite(value):
        raise TrialFailure(f"{what} is {value} (non-finite)")
    return value


def objective_values(result: Any, objective_key: None | str | Sequence[str], n_objectives: int) -> list[float]:
    """The finite objective values of one job result, or raise :class:`TrialFailure`."""
    if result is None:
        raise TrialFailure("the task returned None")
    if objective_key is None:
        raw = list(result) if isinstance(result, (list, tuple)) else [result]
        names = [f"value {i}" for i in range(len(raw))] if len(raw) > 1 else ["objective"]
    else:
        keys = [objective_key] if isinstance(objective_key, str) else list(objective_key)
        raw, names = [_lookup(result, k) for k in keys], [repr(k) for k in keys]
    if len(raw) != n_objectives:
        raise TrialFailure(
            f"the task returned {len(raw)} objective value(s) for {n_objectives} direction(s); "
            "make hydra.sweeper.direction match the task's return value"
        )
    return [_as_float(v, n) for v, n in zip(raw, names)]


def job_values(job: JobReturn, objective_key: None | str | Sequence[str], n_objectives: int) -> list[float]:
    """Values of a finished Hydra job; a job that raised is a failure, not a crash.

    ``JobReturn.return_value`` re-raises the job's exception, so ``status`` is checked first.
    """
    if job.status != JobStatus.COMPLETED:
        err: BaseException | None = job._return_value
        reason = f"{type(err).__name__}: {err}" if err is not None else "job did not complete"
        raise TrialFailure(f"the task raised {reason}".splitlines()[0])
    return objective_values(job._return_value, objective_key, n_objectives)
