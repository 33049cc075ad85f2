"""The real-vs-real noise floor drawn as a band on FID axes (issue 13): a reader sees at a glance
which differences are below what two real samples of the same protocol differ by."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def floor_top(rows: pd.DataFrame) -> float | None:
    """Upper edge: the larger real-vs-real estimate plus one std (harness.metrics.noise_floor)."""
    tops = []
    for k in ("noise_floor_halves", "noise_floor_subset"):
        if k in rows:
            v = pd.to_numeric(rows[k], errors="coerce")
            s = pd.to_numeric(rows.get(f"{k}_std", pd.Series(dtype=float)), errors="coerce").fillna(0)
            if v.notna().any():
                tops.append(float((v + s.reindex(v.index, fill_value=0)).max()))
    return max(tops) if tops else None


def draw_noise_floor(fig: Figure, rows: pd.DataFrame) -> None:
    top = floor_top(rows)
    if top is None:
        return
    for ax in fig.axes:
        if ax.get_ylabel() != "FID":
            continue
        ax.axhspan(0.0, top, color="0.55", alpha=0.18, lw=0, zorder=0, label="noise floor (real vs real)")
        handles, labels = ax.get_legend_handles_labels()
        if ax.get_legend() is not None or len(handles) > 1:
            ax.legend(handles, labels, fontsize=8)
