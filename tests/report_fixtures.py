"""Fixture sweeps for the report tests: job records written the way harness/stages/records.py lays them out
(docs/architecture.md "Job record"), with ok, failed and missing jobs, solver traces, sample grids and
an Optuna study. FIDs follow a closed-form rule so tests can state the expected table values."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

PROTOCOL = {
    "num_samples": 64,
    "extractor": "digits-cnn",
    "reference": "train split",
    "sampler": "ddpm",
    "label": "FID-64, digits-cnn, vs train split",
}
PROVENANCE = {
    "git_sha": "0123abcd",
    "packages": {"torch": "2.14.1", "pandas": "3.1.1"},
    "hardware": {"device": "cpu", "threads": 2},
    "python": "3.11.9",
    "hostname": "node1",
}


def dit_fid(budget: int, sampler: str, seed: int) -> float:
    return 200.0 * 12 / budget + (10.0 if sampler == "ddpm" else 0.0) + seed


def fpdm_fid(
    budget: int,
    sampler: str,
    iters: int,
    seed: int,
    schedule: str = "constant",
    reuse: bool = True,
    solver: str = "picard",
) -> float:
    return (
        120.0 * 12 / budget
        + (10.0 if sampler == "ddpm" else 0.0)
        + abs(iters - 4) * 5
        + seed
        + (0 if reuse else 7)
        + (-2 if schedule == "increasing" else 0)
        + (1 if solver == "anderson" else 0)
    )


def job_id(overrides: list[str]) -> str:
    return hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:10]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True))


def _grid_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).resize((64, 64), Image.NEAREST).save(path)


def record(
    axes: dict,
    metrics: dict | None,
    status: str = "ok",
    reason: str | None = None,
    trace: dict | None = None,
    grid: bool = False,
    protocol: dict | None = None,
) -> dict:
    overrides = [f"{k}={v}" for k, v in sorted(axes.items())]
    return {
        "schema": 1,
        "job_id": job_id(overrides),
        "status": status,
        "reason": reason,
        "traceback_tail": "Traceback ...\nRuntimeError: CUDA out of memory" if status == "failed" else None,
        "axes": axes,
        "metrics": metrics or {},
        "protocol": protocol or PROTOCOL,
        "solver_trace": trace,
        "artifacts": {"grid": "samples/grid.png"} if grid else {},
        "keys": {
            "train": "t" + job_id(overrides)[:6],
            "sample": "s" + job_id(overrides)[:6],
            "eval": "e" + job_id(overrides)[:6],
        },
        "config": {"axes": axes},
        "overrides": overrides,
        "provenance": PROVENANCE,
    }


def _trace(iters: int, reuse: bool) -> dict:
    ts = [900, 700, 500, 300, 100]
    return {
        "timestep": ts,
        "iters": [iters] * len(ts),
        "residual": [(0.05 if reuse else 0.2) * (0.5**i) for i in range(len(ts))],
    }


def dit_records() -> list[dict]:
    out = []
    for budget in (12, 24):
        for sampler in ("ddpm", "ddim"):
            for seed in (0, 1):
                axes = {
                    "model": "dit",
                    "data": "digits",
                    "sampler": sampler,
                    "budget_blocks": budget,
                    "preset": "tiny",
                    "seed": seed,
                }
                m = {
                    "fid": dit_fid(budget, sampler, seed),
                    "params_total": 300_000,
                    "flops_per_image": 1e6 * budget,
                    "time_per_image_s": 0.01 * budget,
                    "train_mem_params_bytes": 2**22,
                    "train_mem_saved_bytes": 3 * 2**22,
                    "train_mem_peak_bytes": 5 * 2**22,
                }
                out.append(record(axes, m, grid=seed == 0))
    return out


def fpdm_records() -> list[dict]:
    settings = []
    for budget in (12, 24):
        for sampler in ("ddpm", "ddim"):
            for iters in (2, 4):
                settings.append((budget, sampler, iters, "constant", True, "picard"))
    settings += [
        (24, "ddpm", 2, "constant", False, "picard"),
        (24, "ddpm", 4, "constant", False, "picard"),
        (24, "ddpm", 2, "increasing", True, "picard"),
        (24, "ddpm", 4, "increasing", True, "picard"),
        (24, "ddpm", 4, "constant", True, "anderson"),
    ]
    out = []
    for budget, sampler, iters, schedule, reuse, solver in settings:
        for seed in (0, 1):
            axes = {
                "model": "fpdm",
                "data": "digits",
                "sampler": sampler,
                "budget_blocks": budget,
                "preset": "tiny",
                "seed": seed,
                "iters_per_step": iters,
                "schedule": schedule,
                "reuse": reuse,
                "solver": solver,
                "pre_depth": 1,
                "post_depth": 1,
            }
            m = {
                "fid": fpdm_fid(budget, sampler, iters, seed, schedule, reuse, solver),
                "params_total": 90_000,
                "flops_per_image": 1.1e6 * budget,
                "time_per_image_s": 0.012 * budget,
                "train_mem_params_bytes": 2**20,
                "train_mem_saved_bytes": 2**21,
                "train_mem_peak_bytes": 2**22,
            }
            out.append(record(axes, m, trace=_trace(iters, reuse), grid=seed == 0))
    return out


def write_sweep(root: Path, records: list[dict], planned_extra: list[list[str]] = ()) -> Path:
    plan = []
    for rec in records:
        _write(root / rec["job_id"] / "record.json", rec)
        if str(rec["artifacts"].get("grid", "")).endswith(".png"):
            _grid_png(root / rec["job_id"] / rec["artifacts"]["grid"], int(rec["job_id"][:6], 16))
        plan.append({"job_id": rec["job_id"], "overrides": rec["overrides"]})
    for ov in planned_extra:
        plan.append({"job_id": job_id(ov), "overrides": ov})
    _write(root / "sweep_plan.json", plan)
    return root


FAILED_AXES = {
    "model": "fpdm",
    "data": "digits",
    "sampler": "ddpm",
    "budget_blocks": 48,
    "preset": "tiny",
    "seed": 0,
    "iters_per_step": 8,
    "schedule": "constant",
    "reuse": True,
    "solver": "picard",
    "pre_depth": 1,
    "post_depth": 1,
}
MISSING_OVERRIDES = ["model=dit", "sample.budget=48"]


def write_fixture_sweeps(base: Path) -> tuple[Path, Path]:
    """Two sweeps: A (DiT + one missing job), B (FPDM + one failed job + an Optuna study)."""
    a = write_sweep(base / "sweepA", dit_records(), planned_extra=[MISSING_OVERRIDES])
    failed = record(FAILED_AXES, None, status="failed", reason="RuntimeError: CUDA out of memory")
    b = write_sweep(base / "sweepB", [*fpdm_records(), failed])
    rows = ["number,state,value,params_iters,params_schedule,duration,run_dir"]
    for n in range(8):
        it, sch = 2 + n % 4, ("constant", "increasing")[n % 2]
        state = "FAIL" if n == 5 else "COMPLETE"
        val = "" if n == 5 else f"{40 + (it - 3) ** 2 + (0 if sch == 'increasing' else 3) - n * 0.1:.3f}"
        rows.append(f"{n},{state},{val},{it},{sch},0 days 00:00:{10 + n:02d},/old/place/sweepB/job{n}")
    (b / "optuna").mkdir()
    (b / "optuna" / "trials.csv").write_text("\n".join(rows) + "\n")
    _write(b / "optuna" / "study.json", {"study_name": "tune", "directions": ["minimize"], "metric_names": ["fid"]})
    return a, b


# paired-comparison features (tests/test_significance*.py)
D, N = 8, 300


def gaussian_features(job_dir, shift: float, rulers=("digits-cnn", "digits-mlp")):
    """Stored features of one job: image i is z_i (the same draw in every job: one sample seed) shifted
    by ``shift`` along a fixed direction, so its FID against the N(0, I) reference is about shift^2;
    the second ruler sees them rotated (FID unchanged)."""
    z = np.random.default_rng(0).normal(size=(N, D))  # shared by every job: same sample seed
    direction = np.ones(D) / np.sqrt(D)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(D, D)))  # second ruler: a rotation
    for ruler, m in zip(rulers, (np.eye(D), q)):
        d = job_dir / "features"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"{ruler}.npy", ((z + shift * direction) @ m).astype(np.float32))
        np.savez(d / f"{ruler}.ref.npz", mu=np.zeros(D), sigma=np.eye(D), n=np.int64(5000))
    return {r: f"features/{r}.npy" for r in rulers}


def paired_sweep(root: Path, jobs: list[tuple[dict, dict, float, dict]], bootstrap: int = 400) -> Path:
    """A sweep of (axes, metrics, feature shift, config sections) jobs, each with stored features
    (``gaussian_features``) and ``metrics.bootstrap`` resamples seeded alike, so every pair of jobs
    that shares the sample seed is a paired comparison."""
    recs = []
    for axes, metrics, _, config in jobs:
        rec = record(axes, metrics)
        rec["config"].update(config)
        rec["config"]["metrics"] = {"bootstrap": bootstrap, "bootstrap_seed": 3}
        recs.append(rec)
    write_sweep(root, recs)
    for rec, (_, _, shift, _) in zip(recs, jobs):
        rec["artifacts"] = {"features": gaussian_features(root / rec["job_id"], shift)}
        (root / rec["job_id"] / "record.json").write_text(json.dumps(rec))
    return root
