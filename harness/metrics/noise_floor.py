"""The real-vs-real noise floor of a FID protocol: what FID reads when nothing differs but the draw.

Two estimates from the reference features alone (no image is re-encoded):

- `halves`: the reference split into two disjoint halves, FID(half A, half B), for several split
  seeds: the FID between two independent real samples of half the reference size;
- `subset`: `n` real images (the generated count per seed range) drawn from the reference, against
  the whole reference, for several seeds. It overlaps the reference, so it is the optimistic
  (lower) floor: a perfect generator of `n` images would score about this or a little more.

A difference between two settings smaller than these values is not resolved by the protocol.
Computed once per (reference statistics, n, splits, seed) and cached as JSON beside the cached
reference statistics (file-locked, atomic, like `fidelity.reference_stats`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from filelock import FileLock

from harness.metrics.fid_stats import features_to_stats, fid_from_stats
from harness.runtime.io import atomic_write

__all__ = ["noise_floor", "cached_noise_floor", "FLOOR_KEYS"]

FLOOR_KEYS = ("noise_floor_halves", "noise_floor_halves_std", "noise_floor_subset", "noise_floor_subset_std")


def _mean_std(v: list[float]) -> tuple[float, float | None]:
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def noise_floor(ref_features: np.ndarray, n: int, *, splits: int = 5, seed: int = 0) -> dict:
    """Real-vs-real FIDs from (N, D) reference features for a protocol with `n` samples per range."""
    f = np.asarray(ref_features, np.float64)
    big_n = f.shape[0]
    if splits < 1:
        raise ValueError(f"metrics.noise_floor_splits={splits} must be >= 1")
    if big_n < 4:
        raise ValueError(f"noise floor: the reference holds {big_n} images; need at least 4 to split in halves")
    mu, sigma = features_to_stats(f)
    halves, subset = [], []
    for s in range(splits):
        rng = np.random.default_rng([seed, s])
        perm = rng.permutation(big_n)
        h = big_n // 2
        halves.append(fid_from_stats(*features_to_stats(f[perm[:h]]), *features_to_stats(f[perm[h : 2 * h]])))
        idx = rng.choice(big_n, size=n, replace=n > big_n)  # more samples than references: with replacement
        subset.append(fid_from_stats(*features_to_stats(f[idx]), mu, sigma))
    (hm, hs), (sm, ss) = _mean_std(halves), _mean_std(subset)
    return {
        "noise_floor_halves": hm,
        "noise_floor_halves_std": hs,
        "noise_floor_subset": sm,
        "noise_floor_subset_std": ss,
        "noise_floor_n": int(n),
        "noise_floor_halves_n": int(big_n // 2),
        "noise_floor_splits": int(splits),
        "noise_floor_seed": int(seed),
    }


def cached_noise_floor(ref_path: Path, ref_features: np.ndarray, n: int, *, splits: int = 5, seed: int = 0) -> dict:
    """`noise_floor`, computed once and kept as `<reference stats stem>.floor-n<n>-s<splits>-seed<seed>.json`."""
    ref_path = Path(ref_path)
    path = ref_path.with_name(f"{ref_path.stem}.floor-n{n}-s{splits}-seed{seed}.json")
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return json.loads(path.read_text())
        out = noise_floor(ref_features, n, splits=splits, seed=seed)
        atomic_write(path, json.dumps(out, sort_keys=True))
        return out
