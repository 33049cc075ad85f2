"""Bootstrap FID over images, from features extracted once: batched, float64, eigen-decomposition.

FID (Heusel et al. 2017, Eq. 6) against a fixed reference N(mu_r, S_r) needs Tr((S S_r)^(1/2)) for
every resample's covariance S. S S_r is not symmetric, but it is similar to R S R with R = S_r^(1/2)
(symmetric PSD), whose eigenvalues are real and non-negative, so

    Tr((S S_r)^(1/2)) = sum_i sqrt(lambda_i(R S R)).

R is computed once (one `eigh` of S_r); each resample then costs one batched covariance (a batched
matrix product) and one batched symmetric `eigvalsh`, instead of a non-symmetric `sqrtm` per
resample. Round-off can leave eigenvalues like -1e-14; they are clamped at 0.

Resampling: image indices are drawn with replacement *within each seed range* from one seeded
generator, so every sample set of the same size sees the same index matrix. Two settings sampled
with the same `sample.seed` share each image's label and noise (harness.sample: image i is seeded
by `sample.seed + i`), so subtracting their draws gives a *paired* bootstrap of the difference:
the common part of the images' randomness cancels (common random numbers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RefSqrt",
    "ref_sqrt",
    "batched_fid",
    "fid_exact",
    "bootstrap_indices",
    "iter_bootstrap_indices",
    "bootstrap_fid_draws",
    "percentile_ci",
    "t_interval",
    "PairedDiff",
    "paired_difference",
    "fid_per_range",
]

_CHUNK_BYTES = 1 << 27  # ~128 MiB of float64 per chunk of resamples (2048-d features: a few at a time)


@dataclass(frozen=True)
class RefSqrt:
    """The reference side, prepared once: mean, R = sqrt(S_r), Tr(S_r)."""

    mu: np.ndarray
    root: np.ndarray
    trace: float


def ref_sqrt(mu: np.ndarray, sigma: np.ndarray) -> RefSqrt:
    s = np.asarray(sigma, np.float64)
    w, v = np.linalg.eigh((s + s.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return RefSqrt(np.asarray(mu, np.float64), root, float(np.trace(s)))


def _rows_per_chunk(n: int, d: int) -> int:
    """Resamples of ``n`` images of ``d`` features that fit ``_CHUNK_BYTES`` (at least one)."""
    return max(1, _CHUNK_BYTES // (8 * (2 * n * d + min(n, d) ** 2)))


def batched_fid(features: np.ndarray, idx: np.ndarray, ref: RefSqrt, z: np.ndarray | None = None) -> np.ndarray:
    """FID of `features[idx[b]]` against `ref` for every row b of the (B, n) index matrix -> (B,).

    With Z = X R, R S R is the covariance of Z's rows, so each resample needs the eigenvalues of
    Zc^T Zc / (n - 1) (D x D) or, when n < D, of the Gram matrix Zc Zc^T / (n - 1) (n x n), which has
    the same non-zero eigenvalues: O(min(n, D)^3) per resample instead of a D x D `sqrtm`. ``z``:
    ``features @ ref.root`` when the caller already has it (one product for every chunk of resamples)."""
    f = np.asarray(features, np.float64)
    idx = np.atleast_2d(idx)
    n, d = idx.shape[1], f.shape[1]
    if n < 2:
        raise ValueError("batched_fid: need at least 2 images per resample")
    z = f @ ref.root if z is None else z
    per = _rows_per_chunk(n, d)
    out = np.empty(idx.shape[0])
    for s in range(0, idx.shape[0], per):
        x, zz = f[idx[s : s + per]], z[idx[s : s + per]]  # (b, n, D)
        mu = x.mean(1)
        xc = x - mu[:, None, :]
        zc = zz - zz.mean(1, keepdims=True)
        gram = zc @ np.swapaxes(zc, 1, 2) if n < d else np.swapaxes(zc, 1, 2) @ zc
        ev = np.linalg.eigvalsh(gram / (n - 1))
        tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum(-1)
        tr_s = np.einsum("bnd,bnd->b", xc, xc) / (n - 1)
        dm = mu - ref.mu
        out[s : s + per] = (dm * dm).sum(-1) + tr_s + ref.trace - 2.0 * tr_sqrt
    return out


def fid_exact(features: np.ndarray, ref: RefSqrt, start: int = 0, end: int | None = None) -> float:
    """FID of one range of images, through the same eigen path (no resampling)."""
    end = len(features) if end is None else end
    return float(batched_fid(features, np.arange(start, end)[None, :], ref)[0])


def _check_resamples(resamples: int) -> None:
    if resamples < 1:
        raise ValueError(f"metrics.bootstrap={resamples} must be >= 1 (e.g. metrics.bootstrap=500)")


def bootstrap_indices(ranges: Sequence[tuple[int, int]], resamples: int, seed: int) -> list[np.ndarray]:
    """One (resamples, end - start) index matrix per seed range, drawn with replacement within the
    range from `np.random.default_rng(seed)`: the same for every sample set of the same size."""
    _check_resamples(resamples)
    rng = np.random.default_rng(seed)
    return [rng.integers(a, b, size=(resamples, b - a)) for a, b in ranges]


def iter_bootstrap_indices(
    ranges: Sequence[tuple[int, int]], resamples: int, seed: int, rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``bootstrap_indices`` in chunks of at most ``rows`` resamples: (range number, (b, end - start)
    matrix), range by range. The generator hands out the same stream whether one call draws the
    whole matrix or several draw its rows in order (numpy's bounded integers keep no per-call state:
    tests/test_bootstrap.py checks it), so the draws are those of ``bootstrap_indices`` while only
    one chunk is in memory (200 x 50,000 indices are 80 MB)."""
    _check_resamples(resamples)
    rng = np.random.default_rng(seed)
    for r, (a, b) in enumerate(ranges):
        for s in range(0, resamples, rows):
            yield r, rng.integers(a, b, size=(min(rows, resamples - s), b - a))


def bootstrap_fid_draws(
    features: np.ndarray, ref: RefSqrt, ranges: Sequence[tuple[int, int]], resamples: int, seed: int
) -> np.ndarray:
    """(resamples,) draws of the mean-over-seed-ranges FID. Memory: the features (float64, and their
    product with R) and one chunk of resamples, whatever ``resamples`` and the image count."""
    f = np.asarray(features, np.float64)
    z = f @ ref.root
    rows = _rows_per_chunk(max(b - a for a, b in ranges), f.shape[1])
    per_range: list[list[np.ndarray]] = [[] for _ in ranges]
    for r, idx in iter_bootstrap_indices(ranges, resamples, seed, rows):
        per_range[r].append(batched_fid(f, idx, ref, z))
    return np.mean([np.concatenate(p) for p in per_range], axis=0)


def fid_per_range(features: np.ndarray, ref: RefSqrt, ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    return np.array([fid_exact(features, ref, a, b) for a, b in ranges])


def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(draws, np.float64), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of a few values (seed ranges, training seeds); None for < 2."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


@dataclass(frozen=True)
class PairedDiff:
    """FID of a treatment and its baseline (means over seed ranges) and their difference
    (treatment - baseline: negative means the treatment is better), each with a percentile
    interval over `resamples` paired bootstrap draws; per-range values and a t-interval over
    ranges when there are several."""

    fid_base: float
    fid_treat: float
    diff: float
    ci_base: tuple[float, float]
    ci_treat: tuple[float, float]
    ci_diff: tuple[float, float]
    range_diffs: tuple[float, ...]
    range_ci_diff: tuple[float, float] | None
    resamples: int
    seed: int


def debias(draws: np.ndarray, point: float) -> np.ndarray:
    """Resampling with replacement repeats images, which biases bootstrap FID upwards; shift the
    draws so their mean is the point estimate (the spread is what the interval is for)."""
    return draws - (draws.mean() - point)


def paired_difference(
    base: np.ndarray,
    treat: np.ndarray,
    ref_base: RefSqrt,
    ref_treat: RefSqrt | None = None,
    *,
    ranges: Sequence[tuple[int, int]],
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> PairedDiff:
    """Paired bootstrap of FID(treat) - FID(base): image i of both sets is drawn together."""
    ref_treat = ref_treat or ref_base
    if len(base) != len(treat):
        raise ValueError(
            f"paired_difference: the sets hold {len(base)} and {len(treat)} images; pairing needs "
            "the same sample.num_images and sample.seed"
        )
    pb, pt = fid_per_range(base, ref_base, ranges), fid_per_range(treat, ref_treat, ranges)
    db = debias(bootstrap_fid_draws(base, ref_base, ranges, resamples, seed), float(pb.mean()))
    dt = debias(bootstrap_fid_draws(treat, ref_treat, ranges, resamples, seed), float(pt.mean()))
    return PairedDiff(
        float(pb.mean()),
        float(pt.mean()),
        float(pt.mean() - pb.mean()),
        percentile_ci(db, level),
        percentile_ci(dt, level),
        percentile_ci(dt - db, level),
        tuple(map(float, pt - pb)),
        t_interval(pt - pb, level),
        resamples,
        seed,
    )
