"""Job records -> one tidy pandas DataFrame (one row per job).

The record schema is docs/architecture.md, "Job record". The collector is DomainBed-style
(``collect_results.py``): it scans sweep directories for ``record.json`` files, adds one row per
job planned in ``sweep_plan.json`` that has no record (status ``missing``), and merges several
sweeps. Nothing absolute is stored in the frame (paths are relative to their sweep directory and
sweeps are named by their directory's base name), so a moved sweep rebuilds byte-identically.

Columns: the meta columns below, then every axis, every metric, the protocol, the keys and the
provenance. ``budget_blocks`` is the budget the job asked for (``sample.budget``, the quantity FPDM
and DiT are matched on); the passes its plan spends are ``block_passes_planned`` and the passes and
FLOPs it measured ``block_passes_per_image`` and ``flops_per_image``. ``df.attrs`` carries the axis and metric column lists; ``SweepData`` additionally holds
the per-timestep solver traces (long format), the Optuna studies and the sweep roots on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.searched import search_columns

META_COLUMNS = ("job_id", "sweep", "status", "reason", "record_dir", "overrides")
PROTOCOL_FIELDS = ("label", "num_samples", "extractor", "reference", "sampler")
KEY_FIELDS = ("train", "sample", "eval")
PROVENANCE_COLUMNS = ("git_sha", "python", "hostname", "hardware", "packages", "config_hash")
# Seed-like axes: rows that differ only in these are repetitions of one setting (mean +/- std);
# training seeds too (tables give mean and interval over training seeds).
SEED_AXES = ("seed", "seed_range", "sample_seed", "train_seed")
# When one job id shows up in several sweeps (a resumed or re-run sweep) the best status wins.
_STATUS_RANK = {"ok": 0, "failed": 1, "missing": 2}


@dataclass
class SweepData:
    """Everything a report is built from; ``jobs`` is the tidy one-row-per-job frame."""

    jobs: pd.DataFrame
    traces: pd.DataFrame  # job_id, step, timestep, iters, residual
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)  # sweep -> {trials, study}
    roots: dict[str, Path] = field(default_factory=dict)  # sweep label -> directory on disk
    tracebacks: dict[str, str] = field(default_factory=dict)  # job_id -> traceback tail

    @property
    def axes(self) -> list[str]:
        return list(self.jobs.attrs.get("axes", []))

    @property
    def metrics(self) -> list[str]:
        return list(self.jobs.attrs.get("metrics", []))


# ---------------------------------------------------------------------------------------------
# reading


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _sweep_labels(dirs: list[Path]) -> list[str]:
    """Base names, disambiguated in argument order (two sweeps both called ``12-00-00``)."""
    labels: list[str] = []
    for d in dirs:
        base = d.name or "sweep"
        label, k = base, 2
        while label in labels:
            label, k = f"{base}#{k}", k + 1
        labels.append(label)
    return labels


def _flat_scalars(d: Any, where: str) -> dict[str, Any]:
    """Axes and metrics are flat scalars by contract; anything else becomes its JSON text."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"record field {where!r} must be an object, got {type(d).__name__}")
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = str(k).replace(".", "_")
        out[key] = v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v, sort_keys=True)
    return out


def _hardware_text(hw: Any) -> str | None:
    if not hw:
        return None
    if not isinstance(hw, dict):
        return str(hw)
    return "; ".join(
        f"{k}={json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v}" for k, v in sorted(hw.items())
    )


def _packages_text(pk: Any) -> str | None:
    if not pk:
        return None
    if not isinstance(pk, dict):
        return str(pk)
    return "; ".join(f"{k}={v}" for k, v in sorted(pk.items()))


def config_hash(config: Any) -> str | None:
    """Short hash of the resolved config (canonical JSON), shown in the provenance section."""
    if not config:
        return None
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _row_from_record(rec: dict, sweep: str, rel_dir: str) -> tuple[dict, dict, dict, dict]:
    """-> (meta+protocol+provenance columns, axes, metrics, trace) of one record."""
    prov = rec.get("provenance") or {}
    proto = rec.get("protocol") or {}
    keys = rec.get("keys") or {}
    overrides = rec.get("overrides") or []
    row: dict[str, Any] = {
        "job_id": str(rec.get("job_id") or Path(rel_dir).name),
        "sweep": sweep,
        "status": str(rec.get("status") or "failed"),
        "reason": rec.get("reason"),
        "record_dir": rel_dir,
        "overrides": " ".join(map(str, overrides)) if isinstance(overrides, list) else str(overrides),
    }
    for f in PROTOCOL_FIELDS:
        row[f"protocol_{f}"] = proto.get(f) if isinstance(proto, dict) else None
    for f in KEY_FIELDS:
        row[f"key_{f}"] = keys.get(f) if isinstance(keys, dict) else None
    row.update(
        {
            "git_sha": prov.get("git_sha"),
            "python": prov.get("python"),
            "hostname": prov.get("hostname"),
            "hardware": _hardware_text(prov.get("hardware")),
            "packages": _packages_text(prov.get("packages")),
            "config_hash": config_hash(rec.get("config")),
        }
    )
    row.update(search_columns(rec))  # the study trial of a searched schedule (reports.searched)
    art = rec.get("artifacts") or {}
    grid = art.get("grid") if isinstance(art, dict) else None
    # The grid path is stored relative to the record's directory; re-root it on the sweep directory.
    row["grid_path"] = Path(rel_dir, grid).as_posix() if isinstance(grid, str) and grid else None
    trace = rec.get("solver_trace") if isinstance(rec.get("solver_trace"), dict) else {}
    axes, metrics = _flat_scalars(rec.get("axes"), "axes"), _flat_scalars(rec.get("metrics"), "metrics")
    if "budget_blocks" in axes:
        # Cells are keyed by the budget asked for, the matched quantity: under sample.match=flops the
        # record's axis holds the passes the plan spends (FPDM 49 where DiT spends 60), which would
        # split one FLOP-matched pair into two unrelated cells (reports.accounting).
        metrics.setdefault("block_passes_planned", axes["budget_blocks"])
        axes["budget_blocks"] = requested_budget(rec)
    return row, axes, metrics, trace


def requested_budget(record: dict) -> Any:
    """The block budget asked for: ``config.sample.budget``, else the record's ``budget_blocks`` axis
    (a job planned by ``sample.steps`` has no budget: its plan's passes are what it asked for)."""
    sample = (record.get("config") or {}).get("sample") or {}
    budget = sample.get("budget") if isinstance(sample, dict) else None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return budget
    return (record.get("axes") or {}).get("budget_blocks")


def _trace_frame(job_id: str, trace: dict) -> pd.DataFrame | None:
    res = trace.get("residual")
    if not isinstance(res, list) or not res:
        return None
    n = len(res)

    def col(name: str) -> list:
        v = trace.get(name)
        return list(v)[:n] + [None] * (n - len(v)) if isinstance(v, list) else [None] * n

    return pd.DataFrame(
        {
            "job_id": job_id,
            "step": np.arange(n),
            "timestep": col("timestep"),
            "iters": col("iters"),
            "residual": pd.to_numeric(pd.Series(res), errors="coerce"),
        }
    )


def _find_records(root: Path) -> list[Path]:
    return sorted(root.rglob("record.json"), key=lambda p: p.relative_to(root).as_posix())


def _load_study(root: Path) -> dict[str, Any] | None:
    trials_csv, study_json = root / "optuna" / "trials.csv", root / "optuna" / "study.json"
    if not trials_csv.is_file():
        return None
    trials = pd.read_csv(trials_csv)
    study = _read_json(study_json) if study_json.is_file() else {}
    if "run_dir" in trials.columns:
        # Absolute run dirs would leak the old location; the base name is the job directory.
        trials["run"] = trials["run_dir"].map(lambda p: Path(str(p)).name if isinstance(p, str) else None)
        trials = trials.drop(columns=["run_dir"])
    return {
        "trials": trials.sort_values("number").reset_index(drop=True) if "number" in trials else trials,
        "study": study if isinstance(study, dict) else {},
    }


# ---------------------------------------------------------------------------------------------
# assembling


def _column_order(axes: list[str], metrics: list[str]) -> list[str]:
    proto = [f"protocol_{f}" for f in PROTOCOL_FIELDS]
    keys = [f"key_{f}" for f in KEY_FIELDS]
    return [*META_COLUMNS, *axes, *metrics, *proto, "grid_path", *keys, *PROVENANCE_COLUMNS]


def _tidy_dtypes(df: pd.DataFrame, cols: Iterable[str]) -> pd.DataFrame:
    """Integer-valued columns become nullable Int64 so that CSVs print them exactly."""
    for c in cols:
        vals = [v for v in df[c].tolist() if v is not None and not (isinstance(v, float) and np.isnan(v))]
        if vals and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            df[c] = pd.array(
                [None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v) for v in df[c].tolist()],
                dtype="Int64",
            )
        elif vals and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in vals):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df


@dataclass
class _Collected:
    """What the records of all sweep directories add up to, before it becomes frames."""

    rows: list = field(default_factory=list)
    traces: list = field(default_factory=list)
    studies: dict = field(default_factory=dict)
    tracebacks: dict = field(default_factory=dict)
    axis_names: dict = field(default_factory=dict)  # ordered sets
    metric_names: dict = field(default_factory=dict)


def load_sweeps(dirs: Iterable[str | os.PathLike]) -> SweepData:
    """Read every record under ``dirs`` (plus planned-but-missing jobs) into a ``SweepData``."""
    roots = [Path(d) for d in dirs]
    if not roots:
        raise ValueError("load_sweeps(dirs): give at least one sweep directory")
    for r in roots:
        if not r.is_dir():
            raise FileNotFoundError(f"sweep directory {str(r)!r} does not exist; pass a multirun output dir")
    labels = _sweep_labels(roots)
    acc = _Collected()
    for label, root in zip(labels, roots):
        seen: set[str] = set()
        for path in _find_records(root):
            row = _record_row(path, root, label, acc)
            seen.add(row["job_id"])
            acc.rows.append(row)
        acc.rows += _missing_rows(root, label, seen)
        study = _load_study(root)
        if study is not None:
            acc.studies[label] = study
    df = _jobs_frame(acc)
    return SweepData(
        jobs=df,
        traces=_traces_frame(acc.traces, df),
        studies=acc.studies,
        roots=dict(zip(labels, roots)),
        tracebacks=acc.tracebacks,
    )


def _record_row(path: Path, root: Path, label: str, acc: _Collected) -> dict:
    """One job's row from its record.json (a torn or hand-edited record is a failed job)."""
    rel_dir = path.parent.relative_to(root).as_posix()
    try:
        rec = _read_json(path)
        if not isinstance(rec, dict):
            raise ValueError("top level is not an object")
        row, axes, metrics, trace = _row_from_record(rec, label, rel_dir)
    except (OSError, ValueError) as exc:
        row = {
            "job_id": path.parent.name,
            "sweep": label,
            "status": "failed",
            "record_dir": rel_dir,
            "reason": f"unreadable record.json: {exc}",
        }
        axes, metrics, trace, rec = {}, {}, {}, {}
    if isinstance(rec.get("traceback_tail"), str):
        acc.tracebacks[row["job_id"]] = rec["traceback_tail"]
    acc.axis_names.update(dict.fromkeys(axes))
    acc.metric_names.update(dict.fromkeys(metrics))
    row.update({("axis_" + k if k in row else k): v for k, v in axes.items()})
    row.update({("metric_" + k if k in row else k): v for k, v in metrics.items()})
    tf = _trace_frame(row["job_id"], trace)
    if tf is not None:
        acc.traces.append(tf)
        # Derived from the trace so the solver table works even when no metric carries them.
        row.setdefault("trace_nfe", int(pd.to_numeric(tf["iters"], errors="coerce").fillna(0).sum()))
        row.setdefault("trace_residual_mean", float(tf["residual"].mean()))
        acc.metric_names.update(dict.fromkeys(["trace_nfe", "trace_residual_mean"]))
    return row


def _missing_rows(root: Path, label: str, seen: set[str]) -> list[dict]:
    """Jobs planned in sweep_plan.json that never wrote a record."""
    plan = root / "sweep_plan.json"
    if not plan.is_file():
        return []
    planned = _read_json(plan)
    planned = planned.get("jobs", []) if isinstance(planned, dict) else planned
    rows = []
    for job in planned or []:
        jid = str(job.get("job_id"))
        if jid not in seen:
            ov = job.get("overrides") or []
            rows.append(
                {
                    "job_id": jid,
                    "sweep": label,
                    "status": "missing",
                    "reason": "planned in sweep_plan.json but no record.json was written",
                    "overrides": " ".join(map(str, ov)) if isinstance(ov, list) else str(ov),
                }
            )
            seen.add(jid)
    return rows


def _jobs_frame(acc: _Collected) -> pd.DataFrame:
    """One row per job id, columns in report order, ``attrs`` naming the axes and metrics."""
    rows = acc.rows
    axes = sorted(a for a in acc.axis_names if a not in META_COLUMNS)
    metrics = sorted(m for m in acc.metric_names if m not in axes and m not in META_COLUMNS)
    columns = _column_order(axes, metrics)
    extra = sorted({k for r in rows for k in r} - set(columns))  # prefixed clashes (axis_status, ...)
    # Built column by column as objects so ints stay ints (a float NaN column would print 1.04858e+06).
    df = pd.DataFrame({c: pd.Series([r.get(c) for r in rows], dtype=object) for c in columns + extra})
    # One job per id: a job re-run in a later sweep keeps its best-status row (ok > failed > missing).
    df["_rank"] = df["status"].map(lambda s: _STATUS_RANK.get(s, 1))
    df["_order"] = np.arange(len(df))
    df = df.sort_values(["job_id", "_rank", "_order"], kind="mergesort").drop_duplicates("job_id")
    df = df.drop(columns=["_rank", "_order"]).reset_index(drop=True)
    df = _tidy_dtypes(
        df, [*axes, *metrics, *[c for c in extra if c.startswith(("axis_", "metric_"))], "protocol_num_samples"]
    )
    df.attrs["axes"] = axes
    df.attrs["metrics"] = metrics
    return df


def _traces_frame(traces: list, df: pd.DataFrame) -> pd.DataFrame:
    """Solver traces of the ok jobs, one row per sampling step."""
    tr = (
        pd.concat(traces, ignore_index=True)
        if traces
        else pd.DataFrame(columns=["job_id", "step", "timestep", "iters", "residual"])
    )
    tr = tr[tr["job_id"].isin(set(df.loc[df["status"] == "ok", "job_id"]))]
    return tr.sort_values(["job_id", "step"], kind="mergesort").reset_index(drop=True)


def collect(dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per job (sorted by ``job_id``): every axis, metric, status and provenance field."""
    return load_sweeps(dirs).jobs


def setting_axes(df: pd.DataFrame) -> list[str]:
    """Axes that define a setting: every axis except the seed-like ones (which are repetitions)."""
    return [a for a in df.attrs.get("axes", []) if a not in SEED_AXES and a in df.columns]
