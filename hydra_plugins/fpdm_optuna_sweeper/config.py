"""Structured config of the Optuna sweeper (``hydra/sweeper=fpdm_optuna``).

Stored in Hydra's ConfigStore by ``__init__.py``; every field can be overridden from the command
line as ``hydra.sweeper.<field>=...``. Semantics that differ from the released
hydra-optuna-sweeper are spelled out per field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.fpdm_optuna_sweeper.OptunaSweeper"
    # The sampler config is instantiated by the sweeper itself (so that the seed can be offset on
    # resume), not recursively by Hydra while the plugin is built.
    _recursive_: bool = False

    # Short name (tpe | random | grid | nsgaii), {name: tpe, <sampler kwargs>} or
    # {_target_: optuna.samplers.X, <kwargs>}.
    sampler: Any = "tpe"
    # Base sampler seed; the effective seed is seed + number of trials already in the study, so a
    # resumed sweep (or a worker joining later) does not re-propose the same first points.
    seed: Optional[int] = None
    # "minimize" | "maximize", or a list of them (multi-objective, e.g. [minimize, minimize] for
    # FID vs block budget).
    direction: Any = "minimize"
    # None: the Hydra job name (the app name), so a rerun of the same command resumes the study.
    study_name: Optional[str] = None
    # "journal" (default): JournalStorage in <root>/optuna/<study_name>.journal, where <root> is the
    # fixed part of hydra.sweep.dir before its first ${...} ("multirun" for the default
    # multirun/${now:...}/${now:...}), so rerunning the same command tops up the same study |
    # "journal:PATH" (relative PATH resolves against <root>) | an RDB URL such as
    # "sqlite:///study.db" or "postgresql://..." | "memory" or null (a new study every run).
    storage: Optional[str] = "journal"
    # TOTAL number of trials in the study (COMPLETE + FAIL + PRUNED, interrupted ones excluded):
    # a resumed or parallel sweep tops up to it. None is only valid for the grid sampler (the
    # whole grid).
    n_trials: Optional[int] = None
    # Trials asked and launched together in one launcher call.
    n_jobs: int = 1
    # The sweep stops with an error once more than max_failure_rate * n_trials trials failed.
    max_failure_rate: float = 0.25
    # Search space in Hydra's override grammar, e.g. {lr: "tag(log, interval(1e-4, 1e-1))"}.
    # Non-sweep values are fixed overrides for every trial.
    params: Dict[str, Any] = field(default_factory=dict)
    # Dotted path "module.fn" of fn(trial) -> {override_key: value} for conditional or
    # constrained spaces; its overrides are applied after those from `params`.
    custom_search_space: Optional[str] = None
    # How to read the objective from the task's return value: None (a number or a sequence of
    # numbers), or a dotted key ("metrics.fid") / list of keys into a returned mapping.
    objective_key: Any = None
    # A RUNNING trial whose owner stopped heart-beating this long ago (or whose owner process on
    # this host is gone) is marked FAIL (reason "interrupted") and its params are re-queued.
    stale_after_s: float = 600.0
    # Export FPDM_OPTUNA_STUDY / FPDM_OPTUNA_TRIAL to each job (hydra.job.env_set), so the task
    # can record which trial it is.
    export_trial_env: bool = True
    # A boolean key of the app's config (absent = false): when true the sweep prints its plan
    # (search space, sampler, storage, trials already done) and runs no trial, touches no study.
    plan_key: Optional[str] = "run.plan"
