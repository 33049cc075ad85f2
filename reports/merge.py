"""Rows that are one artifact are one row: jobs whose evaluation cache key (``key_eval``) is the
same sampled the same images (their sample keys hash the integer plan, not the schedule's name,
``harness.compute.plan``), so the report shows them once, naming every setting that produced them, e.g.
schedule ``cosine = increasing`` when both expand to the same per-step iterations.

Also the schedule directions a report states beside any table over ``schedule`` (``fpdm.schedules``,
sampling order: step 0 is the noisiest step, t = T-1).
"""

from __future__ import annotations

import pandas as pd

SCHEDULE_DIRECTIONS = {
    "constant": "the same iterations at every step (extras to the earliest steps)",
    "increasing": "more iterations at later (less noisy) steps, linear in sampling order (paper Sec. 5.2 reading)",
    "decreasing": "more iterations at earlier (noisier) steps, linear in sampling order",
    "cosine": "the increasing direction with a cosine ease-in/ease-out shape",
    "official_increasing": (
        "the official code's 'increasing' as its sampler consumes it: more iterations at "
        "earlier (noisier) steps, with the official controller's rounding"
    ),
    "list": "explicit per-step counts (sample.schedule_values), in sampling order",
}


def merge_same_artifact(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ``key_eval``; axes that differ inside a group become ``a = b`` (sorted names)."""
    if df.empty or "key_eval" not in df.columns or not df["key_eval"].notna().any():
        return df
    axes = [a for a in df.attrs.get("axes", []) if a in df.columns]
    out = df.copy()  # dtypes kept: only merged axis cells change
    drop: list = []
    keyed = df[df["key_eval"].notna()].sort_values("job_id", kind="mergesort")
    for _, group in keyed.groupby("key_eval", sort=False):
        if len(group) < 2:
            continue
        first, rest = group.index[0], list(group.index[1:])
        drop += rest
        for a in axes:
            names = sorted({str(v) for v in group[a] if v is not None and not (isinstance(v, float) and pd.isna(v))})
            if len(names) > 1:
                if out[a].dtype != object:
                    out[a] = out[a].astype(object)
                out.at[first, a] = " = ".join(names)
    out = out.drop(index=drop).reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


def schedule_notes(df: pd.DataFrame) -> list[str]:
    """One line per schedule shown (merged names explained name by name)."""
    if "schedule" not in df.columns:
        return []
    shown = {str(v) for v in df["schedule"].dropna()}
    names = sorted({n for v in shown for n in v.split(" = ")})
    notes = [f"{n}: {SCHEDULE_DIRECTIONS[n]}." for n in names if n in SCHEDULE_DIRECTIONS]
    merged = sorted(v for v in shown if " = " in v)
    if merged:
        notes.append("Same integer plan, sampled once: " + "; ".join(merged) + ".")
    return notes
