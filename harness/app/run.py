"""``python -m harness.run``: the Hydra app. One call of the task function is one job.

    python -m harness.run                                   # one job on the embedded default
    python -m harness.run -m sweep=budget_schedules         # the main job: a sweep + its report
    python -m harness.run -m sweep=tune                     # Optuna (hydra/sweeper=fpdm_optuna)
    python -m harness.run -m sweep=depth hydra/launcher=slurm_cpu run.plan=true   # the plan only

The task returns the objective (``run.objective``, FID by default; a tuple for several) so that
sweepers consume it. Any exception inside a job becomes a ``failed`` record with its reason and
the objective NaN (the Optuna sweeper tells it as FAIL), so one bad job never sinks a sweep.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import harness.config  # noqa: F401  (fills the ConfigStore before Hydra composes)
from harness.config.validate import validate_config
from harness.stages.records import make_record, write_record

log = logging.getLogger("harness.run")


def _objective(metrics: dict, names) -> float | tuple:
    vals = tuple(float(metrics[n]) if metrics.get(n) is not None else math.nan for n in names)
    return vals[0] if len(vals) == 1 else vals


def task(cfg: DictConfig) -> float | tuple:
    """One Hydra task call = one job: validate, run the stages, write the record (a failure too)."""
    from harness.stages.job import resolved_config, run_job

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:  # the folder is a hash of the overrides: keep them readable beside it
        _write_name(job_dir, hc.job.override_dirname)
    if cfg.get("sweep") is None and hc.runtime.choices.get("sweep"):  # a user's sweep/*.yaml (--config-dir)
        cfg.sweep = hc.runtime.choices["sweep"]
    job = _Job(
        job_dir,
        hc.mode == RunMode.MULTIRUN,
        list(cfg.run.objective),
        dict(job_id=job_dir.name, overrides=list(hc.overrides.task), config=resolved_config(cfg)),
    )
    stopped = _parallel_worker_stopped()
    if stopped is not None:
        return stopped
    try:
        _apply_search(cfg, hc, job)
        validate_config(cfg)
        result = run_job(cfg, progress=cfg.run.progress, plan_only=cfg.run.plan)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a failed job is a record, not a crashed sweep
        if isinstance(exc, SystemExit) and (exc.code in (None, 0) or _interrupted(exc)):
            stopped = _parallel_worker_stopped(exc.signum) if _interrupted(exc) else None
            if stopped is not None:
                return stopped
            raise  # requeued, or stopped by SIGINT/SIGTERM after its checkpoint: no record, rerun resumes
        return _record_failure(cfg, job, exc)
    if not result.is_main:  # another rank of a data-parallel job: rank 0 writes the record
        return job.nan
    if cfg.run.plan:
        status = ", ".join(f"{k}: {v}" for k, v in result.stage_status.items())
        print(
            f"[plan] {job.dir.name}  {_axes_line(result.axes)}  ->  {_plan_status(job.dir, result.stage_status)} "
            f"({status})"
        )
        return job.nan
    return _record_result(cfg, job, result)


@dataclass
class _Job:
    """What every record of one task call shares."""

    dir: Path
    multirun: bool
    objective_names: list
    common: dict  # job_id, overrides, resolved config
    extra: dict = field(default_factory=dict)  # more top-level record fields (``search``)

    @property
    def nan(self) -> float | tuple:
        return _objective({}, self.objective_names)


def _apply_search(cfg: DictConfig, hc, job: _Job) -> None:
    """``sample.search.study``: the best trial's knots into ``sample.knots`` before the cache keys are
    computed, the recorded config updated and the trial named in the record (harness/app/searched.py)."""
    from harness.app.searched import apply_searched_knots, sweep_root
    from harness.stages.job import resolved_config

    found = apply_searched_knots(cfg, sweep_root(hc))
    if found is not None:
        job.common["config"] = resolved_config(cfg)
        job.extra["search"] = found.as_record()
        log.info(
            "sample.knots=%s from trial %d of study %s (value %g)", found.knots, found.trial, found.study, found.value
        )


def _record_failure(cfg: DictConfig, job: _Job, exc: BaseException) -> float | tuple:
    """A ``failed`` record; a single run also exits non-zero (or re-raises with ``run.debug``)."""
    from harness.stages.job import job_axes

    log.error("job %s failed: %s: %s", job.dir.name, type(exc).__name__, exc)
    try:
        axes = job_axes(cfg)
    except Exception:
        axes = {}
    from harness.stages.records import RECORD_NAME

    record = job.dir / RECORD_NAME
    if not _other_rank():  # a data-parallel job's record is rank 0's (it names every failed rank)
        record = write_record(
            job.dir, make_record(status="failed", axes=axes, metrics={}, error=exc, extra=job.extra, **job.common)
        )
    if not job.multirun:
        if cfg.run.debug:
            raise exc
        _exit_failed(f"{type(exc).__name__}: {exc}", record)
    return job.nan


def _record_result(cfg: DictConfig, job: _Job, result) -> float | tuple:
    """The record of a finished job (``failed`` when the objective is not finite) and its objective."""
    from harness.metrics.evidence import keep_beside_record

    _copy_grid(result.artifacts, job.dir)
    _copy_train_log(result.artifacts, job.dir)
    keep_beside_record(result.artifacts, job.dir)  # features + reference stats: reports rebuild from the sweep dir
    names = job.objective_names
    objective = _objective(result.metrics, names)
    finite = all(math.isfinite(v) for v in (objective if isinstance(objective, tuple) else (objective,)))
    finite = finite or "evaluate" not in cfg.run.stages  # without the evaluate stage there is no objective to check
    reason = None if finite else f"non-finite objective {names}={objective}"
    record = make_record(
        status="ok" if finite else "failed",
        reason=reason,
        axes=result.axes,
        metrics=result.metrics,
        protocol=result.protocol,
        keys=result.keys.as_dict(),
        artifacts=result.artifacts,
        solver_trace=result.solver_trace,
        extra={"stages": result.stage_status, **job.extra},
        **job.common,
    )
    path = write_record(job.dir, record)
    if not job.multirun:
        from harness.app.console import console_table

        print(console_table([record]))
        if not finite:
            _exit_failed(reason, path)
    return objective if finite else job.nan


def _parallel_worker_stopped(signum: int | None = None):
    """In a worker of hydra/launcher=parallel (harness/stages/signals.py says why): Ctrl-C / kill
    are recorded, not raised; once one arrived (or ``signum``, a job that just checkpointed) every
    job returns ``InterruptedJob`` at once and the parent's launcher stops the sweep. None otherwise."""
    from harness.stages import signals

    if not signals.in_parallel_worker():
        return None
    signals.record_stop_signals()
    if signum is not None:
        signals.note_signal(signum)
    received = signals.received_signal()
    return None if received is None else signals.InterruptedJob(received)


NAME_FILE = "name"


def _write_name(job_dir: Path, override_dirname: str) -> None:
    """``<job dir>/name``: the job's overrides as Hydra's ``override_dirname`` (``job-<hash>`` alone
    says nothing to a reader of the sweep folder)."""
    from harness.runtime.io import atomic_write_text

    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_dir / NAME_FILE, (override_dirname or "(the defaults)") + "\n")


def _other_rank() -> bool:
    """A rank other than 0 of an initialised process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def _interrupted(exc: BaseException) -> bool:
    from harness.stages.train import Interrupted

    return isinstance(exc, Interrupted)


def _copy_grid(artifacts: dict, job_dir: Path) -> None:
    """Keep the job's sample grid beside its record, so the report embeds it from the sweep
    directory alone (the cache may live elsewhere, or be cleaned)."""
    import shutil

    src = artifacts.get("grid")
    if src and Path(src).is_file():
        shutil.copyfile(src, job_dir / "grid.png")
        artifacts["grid"] = "grid.png"


def _copy_train_log(artifacts: dict, job_dir: Path) -> None:
    """Keep the training's ``train_log.jsonl`` beside the record (the report's training curves come
    from the sweep directory alone); a cached training's log is its cache's, copied all the same."""
    from harness.runtime.io import atomic_write

    src = artifacts.get("train_log")
    if src and Path(src).is_file():
        atomic_write(job_dir / "train_log.jsonl", Path(src).read_bytes())
        artifacts["train_log"] = "train_log.jsonl"


def _exit_failed(reason: str, record_path: Path) -> None:
    """A failed single run exits non-zero with one line (a sweep goes on: its report lists failures)."""
    first = next((ln for ln in str(reason).splitlines() if ln.strip()), "job failed")
    print(f"error: {first} (record: {record_path}; run.debug=true shows the traceback)", file=sys.stderr)
    raise SystemExit(1)


def _plan_status(job_dir: Path, stage_status: dict) -> str:
    """done: the job has its ok record; cached: every stage is in the cache (the job only writes its
    record); to run: some stage computes."""
    from harness.runtime.io import read_json
    from harness.stages.records import RECORD_NAME

    cached = all(v == "cached" for v in stage_status.values())
    try:
        ok = read_json(job_dir / RECORD_NAME).get("status") == "ok"
    except (OSError, ValueError):
        ok = False
    return "done" if ok and cached else "cached" if cached else "to run"


def _axes_line(axes: dict) -> str:
    keys = ("model", "sampler", "budget_blocks", "steps", "iters_per_step", "schedule", "solver", "reuse")
    return " ".join(f"{k}={axes.get(k)}" for k in keys if axes.get(k) is not None)


@hydra.main(version_base="1.3", config_path="pkg://harness.config", config_name="config")
def _hydra_main(cfg: DictConfig):
    return task(cfg)


def main() -> None:
    from harness.app.precheck import run_precheck_or_exit

    checked = run_precheck_or_exit(sys.argv[1:], calling_file=__file__)
    if checked is not None and checked.multirun and checked.basic_sweeper:
        from hydra_plugins.fpdm_parallel_launcher.launcher import note_checked_jobs

        note_checked_jobs(checked.jobs, checked.configs)  # hydra/launcher=parallel: are they all cached?
    if checked is not None and checked.plan_only:  # a plan never reaches a launcher (harness/app/plan.py)
        from harness.app.plan import plan_lines

        print("\n".join(plan_lines(checked.jobs, checked.configs)))
        return
    try:
        _hydra_main()
    except KeyboardInterrupt:  # Ctrl-C outside training (sampling, evaluation): cached stages rerun
        print("interrupted (SIGINT); rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit as exc:
        if _interrupted(exc):  # the whole sweep stops, not only the job in training
            print(f"interrupted: {exc}", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
