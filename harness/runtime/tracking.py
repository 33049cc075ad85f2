"""Experiment tracking: a job's training scalars and final metrics sent to TensorBoard, W&B or MLflow.

``logger=none|tensorboard|wandb|mlflow`` (the Hydra group harness/config/logger/*.yaml) picks a
backend from ``TRACKERS``; each implements ``Tracker``: ``log_scalars(step, values)`` for the
training curves, ``log_metrics(metrics, step)`` for the numbers of the job's record, ``close()``.
Only rank 0 opens one (the other ranks of a data-parallel job get the null tracker), on a cluster
as locally: the job's output folder is where it writes.

Where: ``logger.dir`` null puts everything under the job's output folder (TensorBoard in
``<job dir>/tb``, W&B in ``<job dir>/wandb``; ``tensorboard --logdir <sweep dir>`` shows every job
of a sweep side by side); a path puts it under ``<logger.dir>/<job id>``. MLflow writes to
``logger.tracking_uri``, by default a SQLite store ``<sweep dir>/mlflow.db`` with its artifacts in
``<sweep dir>/mlartifacts`` (``mlflow ui --backend-store-uri sqlite:///<sweep dir>/mlflow.db``).

One run per job folder: the training and the evaluation of a job open the backend in turn and
append to the same run (TensorBoard: the same folder; W&B: the run id; MLflow: a tag), and a
resumed training continues it (TensorBoard drops the events past the checkpoint it resumed from).
A cached stage computes nothing, so it logs nothing new: the curves of a cached training stay in
its ``train_log.jsonl`` (the report draws them from there).

TensorBoard comes with ``torch.utils.tensorboard`` but needs the ``tensorboard`` package; W&B and
MLflow are imported only when chosen. All three are in the ``[tracking]`` extra; a missing one is
refused before any compute (``check_logger``, called by harness/config/validate.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baselines.registry import Registry


class Tracker:
    """The interface every backend implements; this base class is the null tracker (``logger=none``)."""

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Points of the curves named by ``values``' keys, at training step ``step``."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """A job's final numbers (FID, KID, ...), placed at ``step`` where the backend wants one."""

    def close(self) -> None:
        """Flush and release the backend (the run stays open for the next stage of the job)."""


@dataclass(frozen=True)
class RunPlace:
    """Where one job's run lives and what it is called."""

    job_id: str  # the run's name: the job folder's name (job-<hash> in a sweep)
    out_dir: Path  # the folder this job's backend writes under
    sweep_dir: Path  # the sweep's folder (a single run: the job's own); MLflow's store lives here
    run_key: str  # a hash of the job folder's absolute path: a rerun of the job continues its run,
    # the same overrides in another sweep start a new one
    config: dict = field(default_factory=dict)  # the resolved config, stored with the run


@dataclass(frozen=True)
class Backend:
    """One ``logger=NAME``: how to open it and what it needs installed."""

    open: Callable[[RunPlace, Any, int | None], Tracker]  # (place, logger config, resumed_from)
    requires: tuple[str, ...] = ()  # importable modules it needs
    check: Callable[[Any], str | None] | None = None  # a problem with its logger.* keys, else None


TRACKERS: Registry[Backend] = Registry("logger", key="logger")
register_tracker, list_trackers = TRACKERS.register, TRACKERS.list

INSTALL_HINT = "pip install 'fpdm-bench[tracking]'"


def check_logger(lc: Any) -> str | None:
    """The one-line problem with the ``logger`` config (an unknown name, a backend not installed, a
    bad key), or None. Run by the validation before any compute."""
    if lc.name not in TRACKERS:
        return f"logger={lc.name!r} is not known; valid values: {', '.join(list_trackers())}"
    backend = TRACKERS.get(lc.name)
    missing = [m for m in backend.requires if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"logger={lc.name} needs the {missing[0]} package, which is not installed: "
            f"pip install {missing[0]} (or {INSTALL_HINT}), or set logger=none"
        )
    return backend.check(lc) if backend.check else None


def open_tracker(cfg: Any, is_main: bool = True, resumed_from: int | None = None) -> Tracker:
    """The job's tracker on rank 0, the null tracker elsewhere or with ``logger=none`` (or a config
    from before the ``logger`` key). ``resumed_from``: a training starts after this step (0: from
    scratch), so a backend that can drops what an earlier attempt logged past it."""
    lc = cfg.get("logger")
    if not is_main or lc is None or lc.name == "none":
        return Tracker()
    return TRACKERS.get(lc.name).open(run_place(cfg), lc, resumed_from)


def log_job_metrics(cfg: Any, metrics: dict) -> None:
    """The record's numeric metrics (``metrics/<name>``) to the job's run, at its last training step."""
    scalars = {
        f"metrics/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    tracker = open_tracker(cfg)
    try:
        tracker.log_metrics(scalars, int(metrics.get("train_steps") or 0))
    finally:
        tracker.close()


def run_place(cfg: Any) -> RunPlace:
    """The job folder from Hydra (``hydra.runtime.output_dir``); with ``logger.dir`` set, one folder
    per job under it (outside a Hydra run, ``logger.dir`` itself)."""
    from omegaconf import OmegaConf

    lc = cfg.logger
    hydra_dirs = _hydra_job_dirs()
    if hydra_dirs is not None:
        job_dir, sweep_dir = hydra_dirs
        out_dir = job_dir if lc.dir is None else Path(lc.dir).resolve() / job_dir.name
    elif lc.dir is not None:
        job_dir = sweep_dir = out_dir = Path(lc.dir).resolve()
    else:
        raise ValueError("logger.dir is needed outside a Hydra run: set logger.dir=PATH (or logger=none)")
    run_key = hashlib.sha1(str(job_dir).encode()).hexdigest()[:16]
    config = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return RunPlace(job_dir.name, out_dir, sweep_dir, run_key, config)


def _hydra_job_dirs() -> tuple[Path, Path] | None:
    """(job folder, sweep folder) of the running Hydra job, or None outside one (a composed config
    in a test has no output folder)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    try:
        job_dir = Path(hc.runtime.output_dir).resolve()
    except Exception:  # a missing (???) output_dir: not a running job
        return None
    return job_dir, (Path(hc.sweep.dir).resolve() if hc.mode == RunMode.MULTIRUN else job_dir)


# ------------------------------------------------------------------ TensorBoard


class TensorBoardTracker(Tracker):
    """``torch.utils.tensorboard``'s ``SummaryWriter`` on ``<out dir>/tb``; flushed at every point, so
    a job killed mid-training leaves readable events."""

    def __init__(self, log_dir: Path, resumed_from: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the earlier events at this step and later
        purge = None if resumed_from is None else resumed_from + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_scalars(step, metrics)

    def close(self) -> None:
        self.writer.close()


register_tracker("none", Backend(lambda place, lc, resumed_from: Tracker()))
register_tracker(
    "tensorboard",
    Backend(lambda place, lc, resumed_from: TensorBoardTracker(place.out_dir / "tb", resumed_from), ("tensorboard",)),
)


# ------------------------------------------------------------------ Weights & Biases

WANDB_MODES = ("offline", "online", "disabled")


class WandbTracker(Tracker):
    """A W&B run (``logger.mode=offline`` by default: files under ``<out dir>/wandb``, sent later with
    ``wandb sync``), named by the job id, grouped by sweep, resumed by the job's run key."""

    def __init__(self, place: RunPlace, lc: Any):
        import wandb

        place.out_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=lc.project,
            name=place.job_id,
            id=place.run_key,
            group=place.sweep_dir.name,
            dir=str(place.out_dir),
            mode=lc.mode,
            resume="allow",
            config=place.config,
        )

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.summary.update(dict(metrics))  # final numbers, not a curve

    def close(self) -> None:
        self.run.finish()


def _check_wandb(lc: Any) -> str | None:
    if lc.mode not in WANDB_MODES:
        return f"logger.mode={lc.mode!r} is not known; valid values: {', '.join(WANDB_MODES)}"
    return None


register_tracker("wandb", Backend(lambda place, lc, resumed_from: WandbTracker(place, lc), ("wandb",), _check_wandb))


# ------------------------------------------------------------------ MLflow

RUN_KEY_TAG = "fpdm.run_key"


MLFLOW_DB = "mlflow.db"


class MlflowTracker(Tracker):
    """An MLflow run through ``MlflowClient`` (no process-global active run, so jobs that share a
    process never write into each other's run): experiment ``logger.project``, run name the job id,
    found again by its run-key tag. The default store is MLflow's own default backend, SQLite, in
    ``<sweep dir>/mlflow.db`` (MLflow 3 refuses new file stores); the jobs of a sweep create it,
    the experiment and their runs one at a time under a file lock beside it."""

    def __init__(self, place: RunPlace, lc: Any):
        from filelock import FileLock
        from mlflow.tracking import MlflowClient

        place.sweep_dir.mkdir(parents=True, exist_ok=True)
        uri = lc.tracking_uri or f"sqlite:///{place.sweep_dir / MLFLOW_DB}"
        # artifacts (the config) beside the default store; a server given by URI keeps its own place
        artifacts = None if lc.tracking_uri else (place.sweep_dir / "mlartifacts").as_uri()
        with FileLock(str(place.sweep_dir / f".{MLFLOW_DB}.lock"), timeout=600):
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id = self._run_id(place, self._experiment_id(lc.project, artifacts))

    def _experiment_id(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifacts)

    def _run_id(self, place: RunPlace, experiment: str) -> str:
        """The job's run: found by its run-key tag, else created (with the resolved config)."""
        query = f"tags.`{RUN_KEY_TAG}` = '{place.run_key}'"
        found = self.client.search_runs([experiment], filter_string=query, max_results=1)
        if found:
            return found[0].info.run_id
        tags = {RUN_KEY_TAG: place.run_key, "fpdm.job_dir": str(place.out_dir)}
        run_id = self.client.create_run(experiment, run_name=place.job_id, tags=tags).info.run_id
        self.client.log_dict(run_id, place.config, "config.json")
        return run_id

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.log_scalars(step, metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


register_tracker("mlflow", Backend(lambda place, lc, resumed_from: MlflowTracker(place, lc), ("mlflow",)))
