"""fpdm-bench's Hydra sweeper on Optuna >= 4 (ask/tell), selected with ``hydra/sweeper=fpdm_optuna``.

The released hydra-optuna-sweeper (1.3.x on PyPI) pins optuna<3 (hydra#2162, #3007); this plugin
replaces it. Hydra only instantiates sweepers from the ``hydra_plugins`` namespace package, so the
class lives here and the config is stored under group ``hydra/sweeper``, name ``fpdm_optuna``: not
``optuna``, the official plugin's name, whose ``n_trials`` adds that many trials to a resumed study
where ours tops the study up to ``n_trials`` in all (``hydra/sweeper=optuna`` is refused with a
pointer here, harness.app.precheck, unless the official plugin is installed).

Usage (fields in ``config.py``)::

    python -m harness.run -m hydra/sweeper=fpdm_optuna hydra.sweeper.n_trials=40 \
        "+hydra.sweeper.params.lr='tag(log, interval(1e-4, 1e-1))'" "model=choice(dit,fpdm)"

The study is kept in ``<root>/optuna/<study_name>.journal`` (``<root>``: the fixed part of
``hydra.sweep.dir``, ``multirun`` by default), so rerunning the same command resumes the study and
tops it up to ``n_trials``; ``run.plan=true`` prints the search space and the trials already done
and runs nothing. For parallel
workers without batch barriers, start several such processes (e.g. one per Slurm task) with
``n_jobs=1``, the same storage/study_name and different seeds (or ``seed=null``); each asks until
the study holds ``n_trials`` trials. Multi-objective: ``hydra.sweeper.sampler=nsgaii
hydra.sweeper.direction=[minimize,minimize]`` with the task returning a pair. Outputs:
``<hydra.sweep.dir>/optuna/{trials.csv,best.yaml,study.json}``. Each job also gets the
environment variables FPDM_OPTUNA_STUDY and FPDM_OPTUNA_TRIAL.
"""

from hydra.core.config_store import ConfigStore

from .config import OptunaSweeperConf
from .objective import TrialFailure, objective_values
from .samplers import build_sampler, get_sampler, list_samplers, register_sampler
from .search_space import SearchSpace, distribution_from_override, parse_search_space
from .sweeper import AskTellSweeper

__all__ = [
    "AskTellSweeper",
    "OptunaSweeper",
    "OptunaSweeperConf",
    "SearchSpace",
    "TrialFailure",
    "build_sampler",
    "distribution_from_override",
    "get_sampler",
    "list_samplers",
    "objective_values",
    "parse_search_space",
    "register_sampler",
]


class OptunaSweeper(AskTellSweeper):
    """The plugin class named by ``_target_``.

    Hydra 1.3 registers plugins under ``<defining module>.<class>``, so the class that
    ``hydra_plugins.fpdm_optuna_sweeper.OptunaSweeper`` names must be defined in this module.
    """


ConfigStore.instance().store(
    group="hydra/sweeper", name="fpdm_optuna", node=OptunaSweeperConf, provider="fpdm_optuna_sweeper"
)
