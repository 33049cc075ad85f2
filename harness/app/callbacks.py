"""Hydra callback of every multirun: write the sweep plan at the start, build the report at the end.

``sweep_plan.json`` lists every planned job (its id and overrides) so a report can name the jobs
that never produced a record; the report (tables, figures, HTML) is rebuilt from the records alone
(``python -m reports.build SWEEP_DIR`` does the same by hand).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.runtime.io import atomic_write_json
from reports.callback import ReportCallback

log = logging.getLogger("harness.app.callbacks")


def planned_jobs(config: DictConfig) -> list[dict] | None:
    """Jobs of a basic-sweeper multirun: the cartesian product Hydra will launch (None for sampled sweeps)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.app.precheck import expand_sweep
    from harness.config import job_id_from_dirname

    if "BasicSweeper" not in str(OmegaConf.select(config, "hydra.sweeper._target_") or ""):
        return None
    params = (
        OmegaConf.to_container(config.hydra.sweeper.params, resolve=False) if config.hydra.sweeper.get("params") else {}
    )
    batch = expand_sweep(list(config.hydra.overrides.task), params)
    parser = OverridesParser.create()
    od = config.hydra.job.config.override_dirname
    jobs = []
    for job in batch:
        dirname = get_overrides_dirname(parser.parse_overrides(job), list(od.exclude_keys), od.item_sep, od.kv_sep)
        jobs.append({"job_id": job_id_from_dirname(dirname), "overrides": list(job)})
    return jobs


def merge_plan(path: Path, jobs: list[dict]) -> None:
    """Several processes can sweep into one directory at once (array jobs, a second command adding
    values): the plan is the union of their jobs, merged under a lock so that none is lost."""
    from filelock import FileLock

    from harness.runtime.io import read_json

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            old = read_json(path).get("jobs", [])
        except (OSError, ValueError, AttributeError):
            old = []
        new_ids = {j["job_id"] for j in jobs}
        atomic_write_json(path, {"jobs": [j for j in old if j.get("job_id") not in new_ids] + jobs})


class SweepReportCallback(ReportCallback):
    """The app's default multirun callback: ``sweep_plan.json`` at the start, then the report
    (``reports.callback.ReportCallback``: its options, e.g. ``hydra.callbacks.sweep_report.figures=false``)
    and the list of failed jobs at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            jobs = planned_jobs(config)
        except Exception as exc:  # never let bookkeeping stop a sweep
            log.warning("could not write sweep_plan.json: %s", exc)
            return
        if jobs is not None:
            merge_plan(sweep_dir / "sweep_plan.json", jobs)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        super().on_multirun_end(config, **kwargs)
        _print_failures(sweep_dir)


def _print_failures(sweep_dir: Path) -> None:
    import json

    failed = []
    for rec in sorted(sweep_dir.rglob("record.json")):
        try:
            data = json.loads(rec.read_text())
        except (OSError, ValueError):
            continue
        if data.get("status") != "ok":
            failed.append(f"  {data.get('job_id')}: {data.get('reason')}")
    if failed:
        print(f"{len(failed)} job(s) failed:\n" + "\n".join(failed))
