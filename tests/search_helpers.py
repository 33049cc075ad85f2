"""A stored ``sweep=schedule_search`` study for the tests of the searched schedule
(tests/test_searched_schedule.py, tests/test_app.py): an Optuna journal written with Optuna's own
API where the sweeper keeps it (``<sweep root>/optuna/<study>.journal``)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

STUDY = "fpdm-schedule-search"  # the study name of sweeps/sweep/schedule_search.yaml
KNOT = FloatDistribution(0.05, 1.0)
STEPS = IntDistribution(4, 20)


def search_trial(knots: list[float], steps: int, value: float | None, state: TrialState = TrialState.COMPLETE):
    """One finished trial as the sweeper stores it: params knot0..knot3 and sample.steps."""
    params = {f"knot{j}": k for j, k in enumerate(knots)} | {"sample.steps": steps}
    dists = {f"knot{j}": KNOT for j in range(len(knots))} | {"sample.steps": STEPS}
    kw = {"intermediate_values": {0: value}} if state == TrialState.PRUNED else {"value": value}
    if state == TrialState.FAIL:
        kw = {}
    return create_trial(params=params, distributions=dists, state=state, **kw)


def write_study(root: Path, trials: list, name: str = STUDY) -> Path:
    """Store ``trials`` in a minimize study at ``root/optuna/<name>.journal``; returns the journal."""
    path = Path(root) / "optuna" / f"{name}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    for t in trials:
        study.add_trial(t)
    return path
