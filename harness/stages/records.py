"""Job records: one JSON file per job (``record.json`` in the job's directory), written
atomically, with status, axes, metrics (units in the key names), protocol, artifact keys, the
resolved config and provenance. Reports are rebuilt from these files alone."""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.runtime.io import atomic_write_json

SCHEMA = 1
RECORD_NAME = "record.json"
PACKAGES = (
    "torch",
    "torchvision",
    "diffusers",
    "torch-fidelity",
    "hydra-core",
    "submitit",
    "optuna",
    "numpy",
    "pandas",
    "seaborn",
    "fpdm-bench",
)


def git_sha(root: str | Path | None = None) -> str | None:
    root = Path(root or Path(__file__).resolve().parents[2])
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware(device: torch.device | str | None = None) -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        # whether fp32 products ran in TF32 is a per-stage setting: the train and sample summaries
        # record it ("train_tf32_matmul", "sample_tf32_matmul", harness/runtime/matmul_precision.py)
    if device is not None:
        info["device"] = str(device)
    return info


def provenance(device: torch.device | str | None = None) -> dict:
    return {
        "git_sha": git_sha(),
        "packages": package_versions(),
        "hardware": hardware(device),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
    }


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    return value


def make_record(
    *,
    job_id: str,
    status: str,
    axes: dict,
    metrics: dict,
    protocol: dict | None = None,
    keys: dict | None = None,
    artifacts: dict | None = None,
    config: dict | None = None,
    overrides: list | None = None,
    solver_trace: dict | None = None,
    error: BaseException | None = None,
    reason: str | None = None,
    device: torch.device | str | None = None,
    extra: dict | None = None,
) -> dict:
    record = {
        "schema": SCHEMA,
        "job_id": job_id,
        "status": status,
        "reason": reason,
        "traceback_tail": None,
        "axes": axes,
        "metrics": metrics,
        "protocol": protocol or {},
        "solver_trace": solver_trace,
        "artifacts": artifacts or {},
        "keys": keys or {},
        "config": config or {},
        "overrides": overrides or [],
        "provenance": provenance(device),
    }
    if error is not None:
        record["reason"] = reason or f"{type(error).__name__}: {error}"
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        record["traceback_tail"] = "\n".join(tb.strip().splitlines()[-15:])
    if extra:
        record.update(extra)
    return _clean(record)


def write_record(job_dir: str | Path, record: dict) -> Path:
    return atomic_write_json(Path(job_dir) / RECORD_NAME, record)
