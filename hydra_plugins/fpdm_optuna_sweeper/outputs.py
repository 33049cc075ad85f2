"""Sweep-directory summaries: ``optuna/trials.csv``, ``optuna/best.yaml``, ``optuna/study.json``.

hydra-optuna-sweeper's ``optimization_results.yaml`` lacked the best trial's number and run dir
(hydra#2828); here every trial row and every best trial links to its run dir.
All files are rewritten atomically after each batch, so a killed sweep leaves consistent files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from harness.runtime.io import atomic_write_text

from .storage import FAIL_REASON, RUN_DIR, failures

PathLike = str | Path


def link_of(run_dir: str | None, sweep_dir: PathLike) -> str | None:
    """A run dir relative to the sweep dir when inside it (the sweep dir can then be moved)."""
    if not run_dir:
        return None
    try:
        return str(Path(run_dir).resolve().relative_to(Path(sweep_dir).resolve()))
    except ValueError:
        return str(run_dir)


def trials_csv(study: optuna.Study, sweep_dir: PathLike) -> str:
    df = study.trials_dataframe()
    if df.empty:
        return "number,state,run_dir\n"
    runs = {t.number: link_of(t.user_attrs.get(RUN_DIR), sweep_dir) for t in study.trials}
    df["run_dir"] = df["number"].map(runs)
    return df.to_csv(index=False)


def _finite(values: list[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values if math.isfinite(v)]


def _trial_summary(trial: FrozenTrial, sweep_dir: PathLike) -> dict[str, Any]:
    return {
        "number": trial.number,
        "values": _finite(trial.values),
        "params": dict(trial.params),
        "run_dir": link_of(trial.user_attrs.get(RUN_DIR), sweep_dir),
    }


def best_summary(study: optuna.Study, sweep_dir: PathLike) -> dict[str, Any]:
    """Best trial (single objective) or the Pareto front (``best_trials``, multi-objective)."""
    directions = [d.name.lower() for d in study.directions]
    has_complete = any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    best = [_trial_summary(t, sweep_dir) for t in study.best_trials] if has_complete else []
    out: dict[str, Any] = {"study_name": study.study_name, "directions": directions, "best_trials": best}
    if len(directions) == 1 and best:
        out["best_trial"] = best[0]["number"]
        out["best_value"] = best[0]["values"][0]
        out["best_params"] = dict(best[0]["params"])  # a copy: no YAML anchors/aliases
        out["best_run_dir"] = best[0]["run_dir"]
    return out


def study_summary(study: optuna.Study, info: dict[str, Any]) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    failed = failures(trials)
    return {
        "study_name": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        **info,
        "counts": {k: v for k, v in counts.items() if v},
        "failures": [{"number": t.number, "reason": t.user_attrs.get(FAIL_REASON)} for t in failed],
    }


def write_outputs(study: optuna.Study, sweep_dir: PathLike, info: dict[str, Any]) -> Path:
    """Rewrite the three summary files under ``<sweep_dir>/optuna`` and return that folder."""
    out = Path(sweep_dir) / "optuna"
    atomic_write_text(out / "trials.csv", trials_csv(study, sweep_dir))
    atomic_write_text(out / "best.yaml", yaml.safe_dump(best_summary(study, sweep_dir), sort_keys=False))
    atomic_write_text(out / "study.json", json.dumps(study_summary(study, info), indent=2, default=str) + "\n")
    return out
