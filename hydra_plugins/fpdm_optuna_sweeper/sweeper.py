"""Hydra sweeper on Optuna >= 4 with ask/tell (``-m hydra/sweeper=fpdm_optuna``).

Loop: recover interrupted trials -> while the study holds fewer than ``n_trials`` counting trials:
ask up to ``n_jobs`` trials, turn each into Hydra overrides, launch them in one launcher call,
tell each result (COMPLETE with its values, or FAIL with a reason), rewrite the summaries, stop
with an error once failures exceed ``max_failure_rate * n_trials``. See ``storage.py`` for the
resume and multi-process policy and ``objective.py`` for what counts as a failed trial.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from . import storage as st
from .objective import TrialFailure, job_values
from .outputs import atomic_write_text, write_outputs
from .samplers import build_sampler
from .search_space import format_override, load_callable, parse_search_space, suggest_overrides

log = logging.getLogger(__name__)
_DIRECTIONS = ("minimize", "maximize")


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _directions(direction: Any) -> list[str]:
    dirs = [direction] if isinstance(direction, str) else list(direction)
    bad = [d for d in dirs if str(d).lower() not in _DIRECTIONS]
    if not dirs or bad:
        raise ValueError(f"hydra.sweeper.direction={direction!r}: each must be one of {_DIRECTIONS}")
    return [str(d).lower() for d in dirs]


def _one_line(what: str, err: BaseException) -> str:
    return f"{what}: {type(err).__name__}: {err}".splitlines()[0]


def _consecutive_runs(numbers: Sequence[int]) -> list[tuple[int, int]]:
    """(start index, length) of runs of consecutive trial numbers.

    Launchers number jobs ``initial_job_idx + i``; a job's number is its trial number (so resumed
    sweeps never reuse a job dir), which needs consecutive numbers within one launch call. With
    several processes sharing a study a batch can have gaps, and is then launched in pieces.
    """
    runs, start = [], 0
    for i in range(1, len(numbers) + 1):
        if i == len(numbers) or numbers[i] != numbers[i - 1] + 1:
            runs.append((start, i - start))
            start = i
    return runs


class AskTellSweeper(Sweeper):
    """The sweeper's logic; ``OptunaSweeper`` in ``__init__.py`` is the class Hydra instantiates."""

    def __init__(
        self,
        sampler: Any = "tpe",
        seed: int | None = None,
        direction: Any = "minimize",
        study_name: str | None = None,
        storage: str | None = "journal",
        n_trials: int | None = None,
        n_jobs: int = 1,
        max_failure_rate: float = 0.25,
        params: dict[str, Any] | None = None,
        custom_search_space: str | None = None,
        objective_key: Any = None,
        stale_after_s: float = 600.0,
        export_trial_env: bool = True,
        plan_key: str | None = "run.plan",
    ) -> None:
        if n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_jobs={n_jobs}: must be >= 1")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: must be in [0, 1]")
        if n_trials is not None and n_trials < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials}: must be >= 1")
        self.sampler_spec, self.seed = _plain(sampler), seed
        self.directions = _directions(_plain(direction))
        self.study_name, self.storage_spec = study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = _plain(params) or {}
        self.custom_search_space, self.objective_key = custom_search_space, _plain(objective_key)
        self.stale_after_s, self.export_trial_env = float(stale_after_s), export_trial_env
        self.plan_key = plan_key
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        # relative journals live under the fixed part of the sweep dir, not the time-stamped folder
        template = OmegaConf.to_container(config.hydra.sweep, resolve=False)["dir"]
        self.storage_root = st.storage_root(str(template))

    def _study_name(self) -> str:
        assert self.config is not None
        return self.study_name or str(self.config.hydra.job.name)

    def _storage(self) -> str | None:
        """The storage spec with the default ``journal`` expanded to the study's own file."""
        return st.expand_spec(self.storage_spec, self._study_name())

    # ---------------------------------------------------------------- study
    def _open_study(self, space: Any) -> tuple[optuna.Study, int]:
        name = self._study_name()
        study = optuna.create_study(
            study_name=name,
            storage=st.resolve_storage(self._storage(), self.storage_root),
            directions=self.directions,
            load_if_exists=True,
        )
        found = [d.name.lower() for d in study.directions]
        if found != self.directions:
            raise ValueError(
                f"hydra.sweeper.direction={self.directions} but study {name!r} in the storage has "
                f"{found}; use another study_name or the study's directions"
            )
        existing = len(study.get_trials(deepcopy=False))
        seed = None if self.seed is None else int(self.seed) + existing
        study.sampler = build_sampler(self.sampler_spec, seed, space)
        return study, self._target_trials(study)

    def _target_trials(self, study: optuna.Study) -> int:
        if isinstance(study.sampler, optuna.samplers.GridSampler):
            # GridSampler keeps its grid privately; its size caps the total.
            size = math.prod(len(v) for v in study.sampler._search_space.values())
            return size if self.n_trials is None else min(self.n_trials, size)
        if self.n_trials is None:
            raise ValueError("hydra.sweeper.n_trials is not set: give the total number of trials")
        return self.n_trials

    def _info(self, n_trials: int, study: optuna.Study) -> dict[str, Any]:
        return {
            "storage": st.describe_storage(self._storage(), self.storage_root),
            "n_trials": n_trials,
            "n_jobs": self.n_jobs,
            "max_failure_rate": self.max_failure_rate,
            "sampler": type(study.sampler).__name__,
            "seed": self.seed,
        }

    # ---------------------------------------------------------------- trials
    def _fail(self, study: optuna.Study, trial: optuna.trial.Trial, reason: str) -> None:
        trial.set_user_attr(st.FAIL_REASON, reason)
        st.safe_tell(study, trial, state=TrialState.FAIL)
        if reason not in st.NOT_COUNTED:
            log.warning(f"Trial {trial.number} failed: {reason}")

    def _job_overrides(self, study: optuna.Study, trial: optuna.trial.Trial, overrides: list[str]) -> list[str]:
        if not self.export_trial_env:
            return overrides
        env = "++hydra.job.env_set."
        return overrides + [
            format_override(env + "FPDM_OPTUNA_STUDY", study.study_name),
            format_override(env + "FPDM_OPTUNA_TRIAL", str(trial.number)),
        ]

    def _ask_batch(self, study, space, custom, n_trials: int) -> list[tuple[Any, list[str]]]:
        remaining = n_trials - st.budget_used(study.get_trials(deepcopy=False))
        batch: list[tuple[Any, list[str]]] = []
        for _ in range(min(self.n_jobs, remaining)):
            trial = study.ask()
            for key, value in st.owner_attrs().items():
                trial.set_user_attr(key, value)
            if st.over_budget(study.get_trials(deepcopy=False), trial.number, n_trials):
                self._fail(study, trial, "over_budget")  # a concurrent worker took the last slot
                break
            try:
                overrides = self._job_overrides(study, trial, suggest_overrides(trial, space, custom))
            except Exception as err:  # e.g. a custom search space that raised: this trial only
                self._fail(study, trial, _one_line("search space error", err))
                continue
            batch.append((trial, overrides))
        return batch

    def _launch(self, batch: list[tuple[Any, list[str]]]) -> list[Any]:
        assert self.launcher is not None
        numbers = [t.number for t, _ in batch]
        returns: list[Any] = []
        for start, length in _consecutive_runs(numbers):
            part = [ov for _, ov in batch[start : start + length]]
            returns.extend(self.launcher.launch(part, initial_job_idx=numbers[start]))
        return returns

    def _launch_or_fail(self, study, batch) -> list[Any] | None:
        """Launch a batch; if the launcher raises, fail (or re-queue) its trials, not the sweep.

        Overrides are not composed twice on the happy path (a compose costs about as much as a
        toy job); only when a launch fails are the batch's overrides checked one by one: trials
        that do not compose fail, their batch-mates are re-queued (they never ran). If all
        compose, the launcher itself failed (e.g. a submitit job was killed): all trials fail and
        the failure-rate guard stops a systematically broken launcher.
        """
        try:
            with st.Heartbeat(study, [t for t, _ in batch], self.stale_after_s / 4):
                return self._launch(batch)
        except Exception as err:
            launch_error = _one_line("launch failed", err)
        invalid = {}
        for trial, overrides in batch:
            try:
                self.validate_batch_is_legal([overrides])
            except Exception as err:
                invalid[trial.number] = _one_line("invalid overrides", err)
        for trial, _ in batch:
            if trial.number in invalid:
                self._fail(study, trial, invalid[trial.number])
            elif invalid:
                st.interrupt_and_requeue(study, trial)
            else:
                self._fail(study, trial, launch_error)
        return None

    def _tell_batch(self, study, batch, returns) -> None:
        for (trial, _), ret in zip(batch, returns):
            hydra_cfg = getattr(ret, "hydra_cfg", None)
            run_dir = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir") if hydra_cfg else None
            if run_dir:
                trial.set_user_attr(st.RUN_DIR, str(run_dir))
            try:
                values = job_values(ret, self.objective_key, len(self.directions))
            except TrialFailure as failure:
                self._fail(study, trial, str(failure))
                continue
            st.safe_tell(study, trial, values=values)

    def _check_failure_rate(self, study: optuna.Study, n_trials: int) -> None:
        failed = st.failures(study.get_trials(deepcopy=False))
        allowed = math.floor(self.max_failure_rate * n_trials + 1e-9)
        if len(failed) > allowed:
            last = failed[-1]
            raise RuntimeError(
                f"Optuna sweep stopped: {len(failed)} of {n_trials} trials failed, more than "
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows ({allowed}); "
                f"last: trial {last.number}: {last.user_attrs.get(st.FAIL_REASON)}. Fix the task "
                "or raise max_failure_rate, then rerun the same command to resume"
            )

    # ---------------------------------------------------------------- sweep
    def _print_plan(self, space: Any) -> None:
        """What the sweep would run (``plan_key`` true): no study, journal or sweep dir is created."""
        from .plan import plan_lines

        spec = self._storage()
        name = self._study_name()
        lines = plan_lines(
            study_name=name,
            space=space,
            custom=self.custom_search_space,
            sampler=self.sampler_spec,
            seed=self.seed,
            directions=self.directions,
            n_trials=self.n_trials,
            n_jobs=self.n_jobs,
            storage=st.describe_storage(spec, self.storage_root),
            trials=st.peek_trials(spec, self.storage_root, name),
        )
        print("\n".join(lines), flush=True)

    def sweep(self, arguments: list[str]) -> list[FrozenTrial]:
        assert self.config is not None
        space = parse_search_space(self.params, arguments)
        custom: Callable | None = load_callable(self.custom_search_space) if self.custom_search_space else None
        if not space.distributions and custom is None:
            raise ValueError(
                "The Optuna sweeper has no search space: set hydra.sweeper.params, "
                "hydra.sweeper.custom_search_space or pass sweep overrides (x=choice(1,2))"
            )
        if self.plan_key and OmegaConf.select(self.config, self.plan_key, default=False):
            self._print_plan(space)
            return []
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        # Atomic: several sweeper processes sharing a study may share the sweep dir too.
        atomic_write_text(self.sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        study, n_trials = self._open_study(space)
        st.recover_stale_trials(study, self.stale_after_s)
        info = self._info(n_trials, study)
        log.info(
            f"Optuna study {study.study_name!r} ({info['storage'] or 'in memory'}): "
            f"{st.budget_used(study.get_trials(deepcopy=False))}/{n_trials} trials, "
            f"sampler {info['sampler']}, sweep dir {self.sweep_dir}"
        )
        grid = isinstance(study.sampler, optuna.samplers.GridSampler)
        # Each pass adds at least one counting trial (or finds the total reached), so it ends.
        while st.budget_used(study.get_trials(deepcopy=False)) < n_trials:
            if grid and study.sampler.is_exhausted(study):
                break
            st.recover_stale_trials(study, self.stale_after_s)  # a worker sharing the study died
            batch = self._ask_batch(study, space, custom, n_trials)
            if batch:
                returns = self._launch_or_fail(study, batch)
                if returns is not None:
                    self._tell_batch(study, batch, returns)
            write_outputs(study, self.sweep_dir, info)
            self._check_failure_rate(study, n_trials)
        write_outputs(study, self.sweep_dir, info)
        done = study.get_trials(deepcopy=False)
        log.info(f"Optuna sweep done: {st.budget_used(done)} trials; summaries in {self.sweep_dir / 'optuna'}")
        has_complete = any(t.state == TrialState.COMPLETE for t in done)
        return study.best_trials if has_complete else []
