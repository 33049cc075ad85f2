"""Several sweep points at once on one machine, stopped cleanly by Ctrl-C or ``kill``.

hydra-joblib-launcher runs the points in a loky process pool. On its own, Ctrl-C raises
KeyboardInterrupt in the parent and joblib SIGKILLs the workers, so a job in training may die
before its checkpoint. Here the parent records SIGINT / SIGTERM (and passes them to the workers)
instead of raising; each worker's job in training checkpoints at its step boundary and returns
``InterruptedJob`` (harness/stages/signals.py), the pool drains, and the parent raises
``Interrupted``: exit 128 + signal, no record for the stopped jobs, and the same command resumes
them, as with the sequential launcher (docs/cluster.md, "Stopping a local run").

Each worker draws its progress bars on a terminal line of its own (harness/runtime/progress.py):
the launch names a fresh directory of line slots in ``FPDM_PROGRESS_LINES``.

When every stage of every job is already in the cache (a warm re-run: the jobs only write their
records), the jobs run one after another in this process, as hydra/launcher=basic runs them: the
records are the same, and no worker pays seconds of imports to write one (docs/performance.md).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import DictConfig

from harness.runtime import progress
from harness.stages import signals

log = logging.getLogger(__name__)


@contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (inherited by the workers loky starts)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class ParallelLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if all_cached(job_overrides):
            log.info("every stage of the %d jobs is cached: writing their records in this process", len(job_overrides))
            basic = BasicLauncher()
            basic.setup(hydra_context=self.hydra_context, task_function=self.task_function, config=self.config)
            return basic.launch(job_overrides, initial_job_idx)
        previous = signals.record_stop_signals(parent=True)
        try:
            with (
                tempfile.TemporaryDirectory(prefix="fpdm-lines-") as lines,
                _environ(signals.PARALLEL_WORKER_ENV, "1"),
                _environ(progress.LINES_ENV, lines),
            ):
                runs = super().launch(job_overrides, initial_job_idx)
        finally:
            signals.restore_handlers(previous)
        stopped = [
            r.return_value
            for r in runs
            if r.status == JobStatus.COMPLETED and isinstance(r.return_value, signals.InterruptedJob)
        ]
        signum = signals.received_signal() or (stopped[0].signum if stopped else None)
        if signum is not None:
            raise signals.Interrupted(signum)
        return runs


_CHECKED: dict[tuple[str, ...], DictConfig] = {}  # job overrides (_job_key) -> the config the entry point checked


def note_checked_jobs(jobs: Sequence[Sequence[str]], configs: Sequence[DictConfig]) -> None:
    """The jobs of a basic sweep and their configs, as the entry point composed and checked them
    (harness/app/precheck.py) before Hydra started: ``all_cached`` plans them without composing again."""
    _CHECKED.clear()
    _CHECKED.update({_job_key(job): cfg for job, cfg in zip(jobs, configs)})


def all_cached(job_overrides: Sequence[Sequence[str]]) -> bool:
    """Every job is one the entry point checked (note_checked_jobs) and its plan says every stage
    is cached. Anything else (an Optuna trial, a stage to compute, an error while looking) is
    False: the jobs go to the workers, as without this check."""
    configs = _CHECKED
    if not configs or not job_overrides:
        return False
    try:
        from harness.stages.job import run_job

        for overrides in job_overrides:
            cfg = configs.get(_job_key(overrides))
            if cfg is None:
                return False
            status = run_job(cfg, progress=False, plan_only=True).stage_status
            if any(v != "cached" for v in status.values()):
                return False
    except Exception as exc:  # noqa: BLE001 - only a shortcut: the workers run the jobs as before
        log.debug("cache check skipped: %s", exc)
        return False
    return True


def _job_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """A job's overrides without Hydra's own (``hydra.*``, ``hydra/launcher=...``), which set where
    and how Hydra runs the job, not its config (the launcher is handed them apart from the job's)."""
    return tuple(o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/")))
