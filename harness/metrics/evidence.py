"""What the evaluate stage keeps so that a report can say how sure it is.

For every ruler (the configured extractor and its second ruler, see digits_mlp) the stage stores
the sample features once, as float32 `.npy`, with the reference statistics they are scored
against (`<ruler>.ref.npz`: mu, sigma float64), under `<eval dir>/features/`; the job copies them
beside its record (`keep_beside_record`), so reports resample features, never images, and rebuild
from the sweep directory alone. The stage also records the protocol's real-vs-real noise floor
(noise_floor.py) and a bootstrap interval of the FID itself (bootstrap.py).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np

from harness.metrics.bootstrap import bootstrap_fid_draws, debias, percentile_ci, ref_sqrt
from harness.metrics.noise_floor import FLOOR_KEYS, cached_noise_floor
from harness.runtime.io import atomic_write

__all__ = ["FEATURES_DIR", "store_features", "ruler_evidence", "keep_beside_record", "second_ruler"]

FEATURES_DIR = "features"


def second_ruler(primary: str, setting: str | None) -> str | None:
    """metrics.second_extractor: 'auto' -> the registered partner of `primary` (None if it has none)."""
    from harness.metrics.digits_mlp import SECOND_RULER

    if setting in (None, "", "none", "null"):
        return None
    if setting == "auto":
        return SECOND_RULER.get(primary)
    return None if setting == primary else setting


def store_features(eval_dir: Path, ruler: str, keep: dict) -> str:
    """Write `<eval_dir>/features/<ruler>.npy` (+ `.ref.npz`) atomically -> the .npy path."""
    d = Path(eval_dir) / FEATURES_DIR
    f = np.ascontiguousarray(keep["features"], dtype=np.float32)
    atomic_write(d / f"{ruler}.npy", lambda fh: np.save(fh, f, allow_pickle=False))
    ref = keep["reference"]
    buf = io.BytesIO()
    np.savez(buf, mu=np.asarray(ref.mu, np.float64), sigma=np.asarray(ref.sigma, np.float64), n=np.int64(ref.n))
    atomic_write(d / f"{ruler}.ref.npz", lambda fh: fh.write(buf.getvalue()))
    return str(d / f"{ruler}.npy")


def ruler_evidence(keep: dict, fid: float, *, resamples: int, seed: int, floor_splits: int, suffix: str = "") -> dict:
    """Noise floor and bootstrap interval of one ruler's FID, as flat record metrics."""
    ranges = keep["ranges"]
    n = min(b - a for a, b in ranges)
    ref = keep["reference"]
    if ref.features is None:  # statistics-only reference file: no real images to split
        floor = dict.fromkeys(FLOOR_KEYS)
    else:
        floor = cached_noise_floor(keep["reference_path"], ref.features, n, splits=floor_splits, seed=seed)
    draws = bootstrap_fid_draws(keep["features"], ref_sqrt(ref.mu, ref.sigma), ranges, resamples, seed)
    lo, hi = percentile_ci(debias(draws, fid))
    out = {f"{k}{suffix}": floor[k] for k in FLOOR_KEYS}
    out.update({f"fid{suffix}_ci_low": lo, f"fid{suffix}_ci_high": hi})
    return out


def keep_beside_record(artifacts: dict, job_dir: Path) -> None:
    """Copy (hard-link where possible) the stored features next to the job's record and point the
    record's `artifacts.features` at them, relative to the record's directory."""
    feats = artifacts.get("features")
    if not isinstance(feats, dict):
        return
    out = {}
    for ruler, src in sorted(feats.items()):
        src = Path(src)
        for s in (src, src.with_name(f"{ruler}.ref.npz")):
            if not s.is_file():
                break
            dst = Path(job_dir) / FEATURES_DIR / s.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            tmp.unlink(missing_ok=True)
            try:
                tmp.hardlink_to(s)  # same file system: no extra space for 2048-d features
            except OSError:
                shutil.copyfile(s, tmp)
            tmp.replace(dst)
        else:
            out[ruler] = f"{FEATURES_DIR}/{src.name}"
    artifacts["features"] = out
