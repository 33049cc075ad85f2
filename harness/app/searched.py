"""The searched schedule carried into a comparison: ``sample.search.study`` -> ``sample.knots``.

``sweep=schedule_search`` stores its Optuna study (the family: harness/compute/schedule_family.py);
``sweep=schedule_compare`` runs ``sample.schedule=density`` with ``sample.knots: null`` and
``sample.search.study`` naming that study. Every such job takes the knots of the study's best
COMPLETE trial (Optuna's ``best_trial``: failed, pruned and running trials never count) before its
cache keys are computed, so the knots enter the sample key and the recorded config, and the record
names the trial (``search``: study, storage, trial number, its value, knots, steps and the seeds it
was scored on). The knots are a setting chosen on the search's images: a job that would score them
on any of those images is refused (``check_disjoint_from_search``).

Documented choices:
- explicit ``sample.knots`` win: the study is read only for a density job whose knots are null;
- only the knots are carried, not the trial's ``sample.steps``: a comparison runs every schedule at
  the same steps so that a pair differs in the allocation only (the density is over sampling
  order, so the same knots give the same shape at any number of steps); the trial's steps are
  recorded beside its knots;
- the study is looked up where the sweeper stores it: ``storage`` as ``hydra.sweeper.storage``,
  relative journals under the fixed part of ``hydra.sweep.dir`` (``storage_root``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from harness.config.validate import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

FIX = "run `python -m harness.run -m sweep=schedule_search` first, or set sample.knots=[...]"


@dataclass(frozen=True)
class SearchedTrial:
    """The trial whose knots a density job runs (written to the record as ``search``)."""

    study: str
    storage: str  # absolute journal path or RDB URL (password hidden)
    trial: int
    value: float
    knots: list[float]
    steps: int | None  # the steps the trial ran (not carried, see the module docstring)
    seeds: list[int] | None = None  # [start, end): the images the trial was scored on (its record), None: unknown

    def as_record(self) -> dict:
        return asdict(self)


def sweep_root(hydra_cfg: DictConfig) -> Path:
    """Where the sweeper keeps relative journals: the fixed folders of ``hydra.sweep.dir`` (its
    unresolved template, as ``hydra_plugins.fpdm_optuna_sweeper`` reads it)."""
    from hydra_plugins.fpdm_optuna_sweeper.storage import storage_root

    return storage_root(str(OmegaConf.to_container(hydra_cfg.sweep, resolve=False)["dir"]))


def needs_study(cfg: DictConfig) -> bool:
    """A density job with no explicit knots and a study to take them from."""
    s = cfg.sample
    return cfg.model.name == "fpdm" and s.schedule == "density" and s.knots is None and bool(s.search.study)


def best_searched_trial(study_name: str, spec: str, root: str | Path) -> SearchedTrial:
    """The best COMPLETE trial of the study as a ``SearchedTrial``; ``ConfigError`` (one line naming
    ``sample.search.*`` and the fix) when there is no such study, no complete trial or no knots."""
    from harness.compute.schedule_family import KNOT_PARAMS, knots_from_params
    from hydra_plugins.fpdm_optuna_sweeper import storage as st

    key = f"sample.search.study={study_name}"
    full = st.expand_spec(spec, study_name)
    if full is None:
        raise ConfigError(f"sample.search.storage={spec}: an in-memory study ends with its sweep; use journal")
    where = st.describe_storage(full, root)
    try:
        study = st.open_existing_study(full, root, study_name)
    except Exception as exc:  # noqa: BLE001 - an unreachable database or a corrupt journal: one line
        raise ConfigError(f"{key}: cannot open {where}: {type(exc).__name__}: {exc}") from None
    if study is None:
        raise ConfigError(f"{key}: no such study in {where}; {FIX}")
    if len(study.directions) != 1:
        raise ConfigError(
            f"{key} has {len(study.directions)} objectives; the searched knots need a one-objective study"
        )
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        states = ", ".join(f"{n} {s}" for s, n in sorted(Counter(t.state.name for t in trials).items())) or "none"
        raise ConfigError(f"{key}: no COMPLETE trial in {where} (trials: {states}); {FIX}")
    best = study.best_trial
    try:
        knots = knots_from_params(best.params)
    except KeyError:
        raise ConfigError(
            f"{key}: best trial {best.number} has no {'/'.join(KNOT_PARAMS)} params (not a sweep=schedule_search "
            "study); name the schedule_search study or set sample.knots=[...]"
        ) from None
    steps = best.params.get("sample.steps")
    return SearchedTrial(
        study_name,
        where,
        best.number,
        float(best.value),
        knots,
        None if steps is None else int(steps),
        _scored_seeds(best),
    )


def _scored_seeds(trial) -> list[int] | None:
    """The seeds ``[start, end)`` the trial's job scored (``protocol.eval_seeds`` of the record in
    its run directory, which the sweeper stores on the trial); None when that record is not at hand."""
    from harness.runtime.io import read_json
    from harness.stages.records import RECORD_NAME
    from hydra_plugins.fpdm_optuna_sweeper.storage import RUN_DIR

    run_dir = trial.user_attrs.get(RUN_DIR)
    try:
        seeds = read_json(Path(run_dir) / RECORD_NAME)["protocol"]["eval_seeds"] if run_dir else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [int(seeds[0]), int(seeds[1])] if seeds else None


def check_disjoint_from_search(found: SearchedTrial, cfg: DictConfig) -> None:
    """A searched shape is a selected setting: it must be scored on images the search never saw
    (``sample.seed`` .. ``+ num_images`` disjoint from the trial's seeds), or the comparison would
    favour it (a winner's curse). One line naming ``sample.seed`` and the fix."""
    if found.seeds is None:
        return
    start, end = int(cfg.sample.seed), int(cfg.sample.seed) + int(cfg.sample.num_images)
    if start < found.seeds[1] and found.seeds[0] < end:
        raise ConfigError(
            f"sample.seed={start}: the evaluated images' seeds [{start}, {end}) overlap the seeds "
            f"{found.seeds} that trial {found.trial} of study {found.study} was chosen on; score the searched "
            f"shape on other images (sample.seed >= {found.seeds[1]} or the search on other seeds)"
        )


def apply_searched_knots(cfg: DictConfig, root: str | Path) -> SearchedTrial | None:
    """Set ``sample.knots`` of a density job from its study (before the cache keys are computed);
    None, and ``cfg`` untouched, for every other job."""
    if not needs_study(cfg):
        return None
    s = cfg.sample
    found = best_searched_trial(str(s.search.study), str(s.search.storage), root)
    check_disjoint_from_search(found, cfg)
    s.knots = list(found.knots)
    return found
