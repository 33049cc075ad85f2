"""Time per bootstrap resample of FID (harness.metrics.bootstrap) for 64-d (digits) and 2048-d
(Inception) features: `python benchmarks/bench_bootstrap.py [--cases DxNxRESAMPLES,...]` (the
BLAS threads come from the environment, e.g. `OMP_NUM_THREADS=2`)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from harness.metrics.bootstrap import bootstrap_fid_draws, ref_sqrt
from harness.metrics.fid_stats import features_to_stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="64x1000x200,2048x1000x5,2048x5000x2", help="DxNxRESAMPLES,...")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for case in args.cases.split(","):
        d, n, b = map(int, case.split("x"))
        mu, s = features_to_stats(rng.normal(size=(max(2 * d, 2000), d)))
        ref = ref_sqrt(mu, s)
        f = rng.normal(size=(n, d)).astype(np.float32)
        t = time.perf_counter()
        bootstrap_fid_draws(f, ref, [(0, n)], b, 0)
        dt = time.perf_counter() - t
        print(f"D={d} n={n}: {1000 * dt / b:.1f} ms per resample ({b} resamples)")


if __name__ == "__main__":
    main()
