"""The real-vs-real FID drawn as a band on FID axes: a reader sees at a glance which FIDs are near
what two real sample sets of the protocol's sizes score (FID's small-sample bias,
harness.metrics.noise_floor); whether two settings differ is for the paired intervals to say."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

# The value at the FIDs' own sample sizes where the records carry it; older records only carry the
# estimates from reference halves and subsets (drawn as they were).
_PREFERRED = ("noise_floor_matched",)
_FALLBACK = ("noise_floor_halves", "noise_floor_subset")


def _tops(rows: pd.DataFrame, keys: tuple[str, ...]) -> list[float]:
    tops = []
    for k in keys:
        if k in rows:
            v = pd.to_numeric(rows[k], errors="coerce")
            s = pd.to_numeric(rows.get(f"{k}_std", pd.Series(dtype=float)), errors="coerce").fillna(0)
            if v.notna().any():
                tops.append(float((v + s.reindex(v.index, fill_value=0)).max()))
    return tops


def floor_top(rows: pd.DataFrame) -> float | None:
    """Upper edge: the real-vs-real FID at the FIDs' sizes plus one std; for records without it, the
    larger of the halves and subset estimates plus one std."""
    tops = _tops(rows, _PREFERRED) or _tops(rows, _FALLBACK)
    return max(tops) if tops else None


def draw_noise_floor(fig: Figure, rows: pd.DataFrame) -> None:
    top = floor_top(rows)
    if top is None:
        return
    for ax in fig.axes:
        if not ax.get_ylabel().startswith("FID"):  # "FID" or "FID-1k (digits-cnn, ...)" (figures.fid_axis_label)
            continue
        ax.axhspan(0.0, top, color="0.55", alpha=0.18, lw=0, zorder=0, label="real vs real FID at these sizes")
        handles, labels = ax.get_legend_handles_labels()
        if ax.get_legend() is not None or len(handles) > 1:
            ax.legend(handles, labels, fontsize=8)
