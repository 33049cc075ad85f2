"""Which compute accounting a comparison ran under, and what each side spent.

``sample.match=blocks`` is the paper's accounting (Sec. 4.2, docs/paper-notes.md §4.1): FPDM and DiT
get the same number of transformer-block passes per image. It does not count FPDM's injection MLP
(about 0.48 of a block per fixed point iteration, docs/paper-notes.md §8.4), so a block-matched FPDM
spends more FLOPs than the DiT it is compared with: the same block budget, not the same compute.
``sample.match=flops`` gives FPDM the FLOPs DiT spends on ``sample.budget`` blocks
(harness.compute.plan), so FPDM spends fewer block passes than DiT.

Either way the matched quantity is the budget the user asked for, ``sample.budget``; a report keys
its cells by it (never by the passes each side happened to spend) and shows each side's measured
FLOPs and block passes per image beside every comparison, flagging a pair whose FLOPs differ by
more than ``FLOP_TOLERANCE``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

DEFAULT_MATCH = "blocks"  # sample.match's default; records without the key predate FLOP matching
MATCH_LABELS = {
    "blocks": "block-matched (the paper's accounting, Sec. 4.2)",
    "flops": "FLOP-matched",
}
FLOP_TOLERANCE = 0.02  # |FLOPs(setting) / FLOPs(baseline) - 1| above this: the cell is flagged
COST_COLUMNS = (("flops_per_image", "FLOPs/image"), ("block_passes_per_image", "block passes/image"))


def match_of(rows: pd.DataFrame) -> pd.Series:
    """Each row's ``sample.match`` (the default where a record predates the key)."""
    if "match" not in rows:
        return pd.Series(DEFAULT_MATCH, index=rows.index, dtype=object)
    return rows["match"].map(lambda v: DEFAULT_MATCH if v is None or v is pd.NA or v != v else str(v))


def accounting_label(match: str) -> str:
    return MATCH_LABELS.get(match, f"sample.match={match}")


def budget_text(value: Any, match: str) -> str:
    """How a budget cell reads in a sentence: '60 blocks', or under FLOP matching 'the FLOPs of 60
    DiT blocks' (FPDM spends those FLOPs on fewer block passes)."""
    return f"the FLOPs of {_number(value)} DiT blocks" if match == "flops" else f"{_number(value)} blocks"


def budget_title(value: Any, match: str | None) -> str:
    """A figure panel's title: 'budget 60 blocks' / 'budget: FLOPs of 60 DiT blocks'."""
    return f"budget: FLOPs of {_number(value)} DiT blocks" if match == "flops" else f"budget {_number(value)} blocks"


def single_match(rows: pd.DataFrame) -> str | None:
    """The one accounting the rows ran under, or None when they mix several."""
    matches = set(match_of(rows))
    return matches.pop() if len(matches) == 1 else None


def budget_axis_label(rows: pd.DataFrame) -> str:
    """The budget axis of a figure says what its numbers count and which accounting ran."""
    match = single_match(rows)
    if match == "flops":
        return "budget: FLOPs of this many DiT blocks (FLOP-matched)"
    if match == "blocks":
        return "block budget per image (block-matched, paper Sec. 4.2)"
    return "budget asked for (sample.budget; accountings mixed)"


def budgets_text(values: list, match: str) -> str:
    """Several budgets in one phrase: '60 and 120 blocks' / 'the FLOPs of 60 and 120 DiT blocks'."""
    items = [_number(v) for v in values]
    joined = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return budget_text(joined, match)


def flop_gap(flops_setting: float | None, flops_baseline: float | None) -> float | None:
    """FLOPs(setting) / FLOPs(baseline) - 1, or None where either side did not record its FLOPs."""
    if not _finite(flops_setting) or not _finite(flops_baseline) or flops_baseline <= 0:
        return None
    return float(flops_setting) / float(flops_baseline) - 1.0


def flops_matched(gap: float | None) -> bool | None:
    return None if gap is None else abs(gap) <= FLOP_TOLERANCE


def side_costs(rows: pd.DataFrame, job_ids: list[str]) -> dict[str, float | None]:
    """Mean measured FLOPs and block passes per image of the given jobs (None where not recorded)."""
    part = rows[rows["job_id"].isin(set(job_ids))]
    out: dict[str, float | None] = {}
    for col, _ in COST_COLUMNS:
        vals = pd.to_numeric(part[col], errors="coerce").dropna() if col in part else pd.Series(dtype=float)
        out[col] = float(vals.mean()) if len(vals) else None
    return out


def accounting_note(rows: pd.DataFrame) -> str | None:
    """One line naming the accounting of rows keyed by budget (None where no row has a budget)."""
    if "budget_blocks" not in rows or not rows["budget_blocks"].notna().any():
        return None
    matches = sorted(set(match_of(rows[rows["budget_blocks"].notna()])))
    what = {
        "blocks": "the same transformer-block passes per image on both sides, not the same FLOPs "
        "(FPDM's injection is not counted)",
        "flops": "FPDM spends the FLOPs DiT spends on the budget's blocks, in fewer block passes",
    }
    return (
        "Budget accounting: "
        + "; ".join(f"{accounting_label(m)}: {what.get(m, 'as the records say')}" for m in matches)
        + ". Rows are keyed by the budget asked for (sample.budget)."
    )


def _number(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
