"""``run.plan=true``: every job of a command line, printed before any launcher is called.

The entry point composes and checks every job before Hydra starts (harness/app/precheck.py), so the
plan is made there: a Slurm launcher is never reached (a plan submits nothing), no sweep folder is
created and no cache entry is touched. One line per job names the settings that differ between the
jobs of the command line, as the user typed them (any key: ``model.depth``, ``train.seed``,
``sample.cfg_scale`` ...), the state of each stage in the cache and what running the job would
cost: the training budget (when its weights are not cached) and the sampling block passes (when
its samples are not cached). An Optuna sweep chooses its points as it goes; its own plan
(hydra_plugins/fpdm_optuna_sweeper/plan.py) prints the search space and the trials done.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from harness.stages.job import run_job


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def varying_keys(jobs: Sequence[Sequence[str]]) -> list[str]:
    """The keys whose value is not the same in every job (first-seen order); a key given in some
    jobs only varies too."""
    seen: dict[str, set[str | None]] = {}
    for job in jobs:
        for key, value in map(_split, job):
            seen.setdefault(key, set()).add(value)
    return [k for k, values in seen.items() if len(values) > 1 or any(k not in dict(map(_split, j)) for j in jobs)]


def _settings(job: Sequence[str], keys: Sequence[str]) -> str:
    values = dict(map(_split, job))
    return " ".join(f"{k}={values.get(k, '(default)')}" for k in keys) or "(the defaults)"


def _state(stage_status: dict) -> str:
    if all(v == "cached" for v in stage_status.values()):
        return "cached"
    return "to run (" + ", ".join(f"{k} {v}" for k, v in stage_status.items()) + ")"


def _cost(cfg: DictConfig, stage_status: dict, axes: dict, trained_by: int | None) -> str:
    parts = []
    if stage_status.get("train") != "cached" and "train" in cfg.run.stages:
        budget = cfg.train.budget
        parts.append(f"train {budget.value:g} {budget.unit}" if trained_by is None else f"train in job {trained_by}")
    if stage_status.get("sample") != "cached" and "sample" in cfg.run.stages:
        blocks = axes.get("budget_blocks")
        budget = f" at a budget of {blocks:g} blocks ({cfg.sample.match})" if isinstance(blocks, (int, float)) else ""
        parts.append(f"sample {cfg.sample.num_images} images{budget}")
    return "; ".join(parts) or "nothing (every stage cached)"


def plan_lines(jobs: Sequence[Sequence[str]], configs: Sequence[DictConfig]) -> list[str]:
    """``[plan] job N/M  <varying settings>  ->  <cache state>; cost: <...>`` for each job."""
    keys = varying_keys(jobs)
    lines, first_to_train = [], {}  # jobs that share a training train it once: the first of them
    for i, (job, cfg) in enumerate(zip(jobs, configs), start=1):
        result = run_job(cfg, progress=False, plan_only=True)
        trained_by = first_to_train.setdefault(result.keys.train, i)
        state = _state(result.stage_status)
        cost = _cost(cfg, result.stage_status, result.axes, None if trained_by == i else trained_by)
        steps = f"  steps={result.axes['steps']}" if result.axes.get("steps") is not None else ""
        lines.append(f"[plan] job {i}/{len(jobs)}  {_settings(job, keys)}{steps}  ->  {state}; cost: {cost}")
    lines.append(f"{len(jobs)} job(s) planned; nothing was run or written: drop run.plan=true to run them")
    return lines
