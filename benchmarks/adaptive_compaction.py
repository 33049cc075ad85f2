"""Wall time of an early-stopping solve with and without compaction.

FPDM's fixed point layer (the ``tiny`` or a given preset, random init) at batch B: the first half
of the batch starts at (near) its fixed point, so with a tolerance those samples stop after one
evaluation and, with compaction, every later evaluation runs the block on half the rows. Prints
the median wall time of both solves and their ratio (ideal ~ (1 + 0.5 (K-1)) / K).

    PYTHONPATH=$PWD python benchmarks/adaptive_compaction.py [--batch 256] [--iters 8] [--preset S/2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from baselines.presets import resolve_preset
from fpdm.model import FixedPointLayer
from fpdm.solvers import get_solver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    p = resolve_preset(a.preset)
    torch.manual_seed(0)
    layer = FixedPointLayer(p.hidden_size, p.num_heads, p.mlp_ratio).eval()
    x_inj, c = torch.randn(a.batch, a.tokens, p.hidden_size), torch.randn(a.batch, p.hidden_size)
    with torch.inference_mode():
        f = layer.bind(x_inj, c)
        z0 = torch.randn(a.batch, a.tokens, p.hidden_size)
        z = z0
        for _ in range(200):  # near the fixed point for the first half
            z = f(z)
        z0[: a.batch // 2] = z[: a.batch // 2]
        _, st = get_solver("picard")(f, z0, max_iter=a.iters, tol=0.0)
        tol = float(st.rel_residuals[0, : a.batch // 2].max()) * 1.01  # the first half stops at once

        def timed(g) -> float:
            out = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                get_solver("picard")(g, z0, max_iter=a.iters, tol=tol)
                out.append(time.perf_counter() - t0)
            return statistics.median(out)

        plain = layer.bind(x_inj, c)
        del plain.rows
        t_masked, t_compact = timed(plain), timed(f)
    ideal = (1 + 0.5 * (a.iters - 1)) / a.iters
    print(
        f"preset {a.preset} batch {a.batch} iters {a.iters}: masked {t_masked * 1e3:.1f} ms, "
        f"compacted {t_compact * 1e3:.1f} ms, ratio {t_compact / t_masked:.2f} (evaluations ratio {ideal:.2f})"
    )


if __name__ == "__main__":
    main()
