"""The training curves of a sweep: each distinct training's ``train_log.jsonl``, one curve per training.

A job keeps its training's log beside its record (harness/app/run.py copies it from the train
cache, cached trainings included), so a sweep folder alone rebuilds the curves. For records
without the copy the log is found where the record says the training ran (``artifacts.train_log``,
else the folder of ``artifacts.checkpoint``), a path relative to the record, the current folder or
a folder above the sweep (the cache's default ``outputs/cache`` is relative to where the sweep ran).

Jobs that share a training (the same ``key_train``: a sweep over sampling settings trains each
model once) share one curve, labelled by the model and the training settings that differ between
the curves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from reports.collect import SweepData
from reports.tables import value_label, varies

TRAIN_LOG = "train_log.jsonl"
# the settings that tell two trainings apart in a curve's label (record axes)
TRAINING_AXES = (
    "preset",
    "data",
    "protocol",
    "prediction_type",
    "train_method",
    "pre_depth",
    "post_depth",
    "no_grad_max",
    "with_grad_max",
    "depth",
    "hidden_size",
    "num_heads",
    "patch_size",
    "mlp_ratio",
    "train_seed",
)


def read_train_log(path: Path) -> pd.DataFrame:
    """The log's lines as a frame, sorted by step; a step logged twice (a training resumed from a
    checkpoint older than its last line re-logs the steps after it) keeps its last line."""
    lines = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    frame = pd.DataFrame(lines)
    if frame.empty or "step" not in frame or "loss" not in frame:
        return pd.DataFrame(columns=["step", "loss"])
    return frame.drop_duplicates("step", keep="last").sort_values("step", kind="stable").reset_index(drop=True)


def find_train_log(root: Path, record_dir: str) -> Path | None:
    """The job's training log: beside its record, else where its record says the training ran."""
    job_dir = Path(root) / record_dir
    if (job_dir / TRAIN_LOG).is_file():
        return job_dir / TRAIN_LOG
    try:
        artifacts = json.loads((job_dir / "record.json").read_text()).get("artifacts") or {}
    except (OSError, ValueError, AttributeError):
        return None
    names = [Path(artifacts["train_log"])] if isinstance(artifacts.get("train_log"), str) else []
    if isinstance(artifacts.get("checkpoint"), str):  # the log lives beside the trained weights
        names.append(Path(artifacts["checkpoint"]).with_name(TRAIN_LOG))
    bases = [job_dir, Path.cwd(), *Path(root).resolve().parents]
    for name in names:
        for candidate in [name] if name.is_absolute() else [b / name for b in bases]:
            if candidate.is_file():
                return candidate
    return None


def training_curves(data: SweepData, rows: pd.DataFrame) -> pd.DataFrame:
    """One curve per distinct training of ``rows`` (long format: ``training``, ``model`` and the
    log's columns), the label naming the model and the training settings that differ."""
    if rows.empty or "record_dir" not in rows:
        return pd.DataFrame()
    key = "key_train" if "key_train" in rows else "record_dir"
    first = rows.assign(_key=rows[key].fillna(rows["record_dir"])).drop_duplicates("_key")
    labels = _labels(first)
    parts = []
    for (_, job), label in zip(first.iterrows(), labels):
        path = find_train_log(data.roots.get(job["sweep"], Path(".")), job["record_dir"])
        log = read_train_log(path) if path is not None else pd.DataFrame()
        if not log.empty:
            parts.append(log.assign(training=label, model=job.get("model")))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _labels(trainings: pd.DataFrame) -> list[str]:
    """``model`` plus ``axis=value`` for each training axis that differs between the trainings; a
    training key prefix where two labels would still be equal."""
    shown = [a for a in TRAINING_AXES if varies(trainings, a)]
    labels = [
        " ".join([value_label(job.get("model")), *(f"{a}={value_label(job.get(a))}" for a in shown)])
        for _, job in trainings.iterrows()
    ]
    if len(set(labels)) < len(labels) and "key_train" in trainings:
        labels = [f"{lab} ({str(k)[:7]})" for lab, k in zip(labels, trainings["key_train"])]
    return labels
