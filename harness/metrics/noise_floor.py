"""The real-vs-real FID of a FID protocol: what FID reads when nothing differs but the draw.

FID is biased upwards at finite sample sizes: two independent sets of `n1` and `n2` images from one
distribution score about `c * (1/n1 + 1/n2)`, not 0 (Chong & Forsyth 2020, "Effectively Unbiased FID
and Inception Score and where to find them", Sec. 3: FID is linear in 1/n). For Gaussian features
with identity covariance in `d` dimensions, `c = d + d (d + 1) / 4` to leading order: the means
differ by `d (1/n1 + 1/n2)` in squared norm, and each sample covariance `I + E` has
`E||E||_F^2 = d (d + 1) / (n - 1)`, of which the covariance term of FID (the Bures distance,
`||E1 - E2||_F^2 / 4` near the identity) keeps a quarter.

A protocol scores `n` generated images (per seed range) against `N` reference images, so the FID
two real sample sets of *these* sizes give is `c * (1/n + 1/N)`. Only the `N` reference features
are at hand (no image is re-encoded), and two disjoint real sets of `n` and `N` images cannot be
cut from them, so the value is extrapolated in 1/n (Chong & Forsyth's correction, with the
intercept fixed at 0 because two samples of one distribution have FID 0 in the limit):

- `matched`: disjoint reference splits of N/2, N/3 and N/4 images each give FID(m, m) at
  `x = 2/m`; a least-squares line through the origin gives `c`, and `c * (1/n + 1/N)` is the value
  at the protocol's sizes. One estimate per split seed; mean and std over `splits` seeds;
- `halves`: FID(half A, half B), two disjoint halves of the reference (the largest split, at
  `x = 4/N`): for `n` below N it is larger than the matched value (1/n + 1/N < 4/N);
- `subset`: `n` reference images against the whole reference. It overlaps the reference, so it is
  the optimistic (lower) estimate.

It is about what a perfect generator would score under the protocol, not a resolution limit:
two settings scored at the same sizes carry about the same bias, and whether they differ is what
their paired bootstrap intervals say (bootstrap.py). Computed once per (reference statistics, n, splits,
seed) and cached as JSON beside the cached reference statistics (file-locked, atomic, like
`fidelity.reference_stats`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from filelock import FileLock

from harness.metrics.fid_stats import features_to_stats, fid_from_stats
from harness.runtime.io import atomic_write

__all__ = ["noise_floor", "cached_noise_floor", "matched_floor", "FLOOR_KEYS", "SPLIT_PARTS"]

FLOOR_KEYS = (
    "noise_floor_matched",
    "noise_floor_matched_std",
    "noise_floor_n",
    "noise_floor_ref_n",
    "noise_floor_halves",
    "noise_floor_halves_std",
    "noise_floor_subset",
    "noise_floor_subset_std",
)
SPLIT_PARTS = (2, 3, 4)  # disjoint splits of N/2, N/3, N/4 images each: the points of the 1/n fit
_CACHE_VERSION = 2  # in the cache file's name: a floor cached without the matched value is recomputed


def _mean_std(v: list[float]) -> tuple[float, float | None]:
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def matched_floor(split_fids: dict[int, float], n: int, ref_n: int) -> float:
    """FID(m, m) of disjoint real splits of m images -> the real-vs-real FID of `n` against `ref_n`.

    Fits `FID = c * x` with `x = 1/m + 1/m` by least squares through the origin and returns
    `c * (1/n + 1/ref_n)`."""
    x = np.array([2.0 / m for m in split_fids])
    y = np.array(list(split_fids.values()), np.float64)
    slope = float(x @ y / (x @ x))
    return slope * (1.0 / n + 1.0 / ref_n)


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    return fid_from_stats(*features_to_stats(a), *features_to_stats(b))


def noise_floor(ref_features: np.ndarray, n: int, *, splits: int = 5, seed: int = 0) -> dict:
    """Real-vs-real FIDs from (N, D) reference features for a protocol with `n` samples per range."""
    f = np.asarray(ref_features, np.float64)
    big_n = f.shape[0]
    if splits < 1:
        raise ValueError(f"metrics.noise_floor_splits={splits} must be >= 1")
    if big_n < 2 * max(SPLIT_PARTS):
        raise ValueError(
            f"noise floor: the reference holds {big_n} images; need at least {2 * max(SPLIT_PARTS)} "
            "to split it in quarters"
        )
    mu, sigma = features_to_stats(f)
    matched, halves, subset = [], [], []
    for s in range(splits):
        rng = np.random.default_rng([seed, s])
        perm = rng.permutation(big_n)
        by_size = {big_n // k: _fid(f[perm[: big_n // k]], f[perm[big_n // k : 2 * (big_n // k)]]) for k in SPLIT_PARTS}
        halves.append(by_size[big_n // 2])
        matched.append(matched_floor(by_size, n, big_n))
        idx = rng.choice(big_n, size=n, replace=n > big_n)  # more samples than references: with replacement
        subset.append(fid_from_stats(*features_to_stats(f[idx]), mu, sigma))
    (mm, ms), (hm, hs), (sm, ss) = _mean_std(matched), _mean_std(halves), _mean_std(subset)
    return {
        "noise_floor_matched": mm,
        "noise_floor_matched_std": ms,
        "noise_floor_n": int(n),
        "noise_floor_ref_n": int(big_n),
        "noise_floor_halves": hm,
        "noise_floor_halves_std": hs,
        "noise_floor_subset": sm,
        "noise_floor_subset_std": ss,
        "noise_floor_halves_n": int(big_n // 2),
        "noise_floor_splits": int(splits),
        "noise_floor_seed": int(seed),
    }


def cached_noise_floor(ref_path: Path, ref_features: np.ndarray, n: int, *, splits: int = 5, seed: int = 0) -> dict:
    """`noise_floor`, computed once and kept as `<reference stats stem>.floor<v>-n<n>-s<splits>-seed<seed>.json`."""
    ref_path = Path(ref_path)
    path = ref_path.with_name(f"{ref_path.stem}.floor{_CACHE_VERSION}-n{n}-s{splits}-seed{seed}.json")
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return json.loads(path.read_text())
        out = noise_floor(ref_features, n, splits=splits, seed=seed)
        atomic_write(path, json.dumps(out, sort_keys=True))
        return out
