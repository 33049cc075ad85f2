"""Choosing one of several settings on held-out images, never on the images it is scored on.

Where a comparison pairs the baseline with one setting per cell out of several (FPDM vs DiT at a
budget, whose FPDM jobs may differ in schedule, iterations per step, reuse, ...:
``match_context_only`` in reports/significance.py), taking the setting with the lowest evaluation FID
and then reporting that FID and its paired difference favours it by the luck of the evaluated
images: the lowest of several noisy scores is biased low (a winner's curse). Here the choice is made
on the held-out selection set every job scores (``selection.images``, harness/stages/selection.py:
``metrics.selection_fid``, its seeds in ``protocol.selection.seeds``), and the chosen setting is then
scored on the evaluated images (``protocol.eval_seeds``), which the choice never saw; the table's
note names both seed ranges and the setting chosen in each cell.

A group whose settings cannot be chosen that way (a record without a selection FID, settings scored
on different selection sets, a selection set overlapping the evaluated images) is never chosen on
the evaluated images instead: each of its settings is shown as its own row and the note says why;
where the baseline itself has several such settings the cell is left out, and the note says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from reports.collect import setting_axes
from reports.tables import row_keys, sort_frame, value_label, varies

FIX = "run the jobs with selection.images > 0"


@dataclass(frozen=True)
class HeldOut:
    """What one record says about the images it was chosen on and scored on."""

    fid: float | None  # metrics.selection_fid
    seeds: tuple[int, int] | None  # protocol.selection.seeds, [start, end)
    extractor: str | None  # the selection FID's feature network
    eval_seeds: tuple[int, int] | None  # protocol.eval_seeds, [start, end)


def _range(v: Any) -> tuple[int, int] | None:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) and len(v) == 2 else None


def held_out(rec: dict) -> HeldOut:
    """The ``HeldOut`` of a ``record.json`` (docs/architecture.md, "Job record"); fields a record
    written before the selection set existed lacks are None."""
    proto = rec.get("protocol") or {}
    sel = proto.get("selection") or {}
    fid = (rec.get("metrics") or {}).get("selection_fid")
    return HeldOut(
        None if fid is None else float(fid),
        _range(sel.get("seeds")),
        sel.get("extractor"),
        _range(proto.get("eval_seeds")),
    )


def seeds_text(r: tuple[int, int]) -> str:
    return f"[{r[0]}, {r[1]})"


def _unselectable(jobs: list[str], info: Mapping[str, HeldOut]) -> str | None:
    """Why the settings of these jobs cannot be chosen on held-out images (None: they can)."""
    hs = [info.get(j) for j in jobs]
    if any(h is None or h.fid is None or h.seeds is None for h in hs):
        return f"a record has no selection FID ({FIX})"
    if len({(h.seeds, h.extractor) for h in hs}) > 1:
        return "its settings were scored on different selection sets (selection.seed, selection.images)"
    for h in hs:
        if h.eval_seeds is None:
            return "a record does not name its evaluated seeds (protocol.eval_seeds)"
        if h.seeds[0] < h.eval_seeds[1] and h.eval_seeds[0] < h.seeds[1]:
            return f"the selection seeds {seeds_text(h.seeds)} overlap the evaluated {seeds_text(h.eval_seeds)}"
    return None


def _cell_text(first: pd.Series, cells: list[str]) -> str:
    """How a cell reads in the note ('60 blocks', 'sampler=ddim, 60 blocks'); '' for the only cell."""
    parts = [
        f"{value_label(first[c])} blocks" if c == "budget_blocks" else f"{c}={value_label(first[c])}"
        for c in cells
        if pd.notna(first[c])
    ]
    return ", ".join(parts)


def _setting_texts(part: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Per row, the axes that tell the group's settings apart (``schedule=increasing, reuse=on``)."""
    differ = [a for a in keys if part[a].astype(str).nunique(dropna=False) > 1]
    return part.apply(lambda r: ", ".join(f"{a}={value_label(r[a])}" for a in differ if pd.notna(r[a])), axis=1)


def _choose(part: pd.DataFrame, keys: list[str], info: Mapping[str, HeldOut]) -> pd.DataFrame:
    """The rows of the setting with the lowest mean selection FID (ties: the first in sorted order)."""
    scored = part.assign(_sel=[info[j].fid for j in part["job_id"]], _skey=row_keys(part, keys).values)
    means = scored.groupby("_skey", sort=False)["_sel"].mean()
    firsts = scored.drop_duplicates("_skey").assign(_sel=lambda f: f["_skey"].map(means))
    best = sort_frame(firsts, ["_sel", *keys]).iloc[0]["_skey"]
    return part[scored["_skey"].values == best]


@dataclass
class _Notes:
    chosen: dict[tuple[str, str, str], list[str]]  # (label, selection seeds, eval seeds) -> "cell: setting"
    shown: list[str]
    dropped: list[str]

    def text(self) -> str:
        out = [
            f"{label} setting chosen by FID on held-out seeds {sel}, scored on seeds {ev}: " + "; ".join(items)
            for (label, sel, ev), items in self.chosen.items()
        ]
        out += self.shown + self.dropped
        return "; ".join(out)


def choose_on_held_out(
    rows: pd.DataFrame, cells: list[str], info: Mapping[str, HeldOut], base_text: str
) -> tuple[pd.DataFrame, str]:
    """One setting per (cell, compared value) where there are several, chosen on held-out images.

    ``rows``: the comparison's jobs with ``_vtext`` (the compared value as text) and ``_label`` (how
    it reads). Returns the rows kept (a group that cannot be chosen keeps every setting, its ``_vtext``
    and ``_label`` naming the setting) and the note for the table ('' when nothing had to be chosen)."""
    keys = [a for a in setting_axes(rows) if a not in cells]
    rows = sort_frame(rows, cells)
    shown = [c for c in cells if varies(rows, c)]
    group = row_keys(rows, cells + ["_vtext"])
    cell_of = row_keys(rows, cells)
    notes, keep, dropped_cells = _Notes({}, [], []), [], set()
    for g in dict.fromkeys(group):
        part = rows[group == g]
        if row_keys(part, keys).nunique() < 2:
            keep.append(part)
            continue
        where, label = _cell_text(part.iloc[0], shown), str(part["_label"].iloc[0])
        reason = _unselectable(list(part["job_id"]), info)
        if reason is None:
            chosen = _choose(part, keys, info)
            h = info[chosen["job_id"].iloc[0]]
            evs = " and ".join(dict.fromkeys(seeds_text(info[j].eval_seeds) for j in chosen["job_id"]))
            text = _setting_texts(part, keys).loc[chosen.index[0]]
            notes.chosen.setdefault((label, seeds_text(h.seeds), evs), []).append(f"{where}: {text}" if where else text)
            keep.append(chosen)
        elif part["_vtext"].iloc[0] == base_text:
            dropped_cells.add(cell_of[part.index[0]])
            notes.dropped.append(
                f"not compared{' at ' + where if where else ''}: several {label} settings and {reason}"
            )
        else:
            suffix = " (" + _setting_texts(part, keys) + ")"
            keep.append(part.assign(_vtext=part["_vtext"] + suffix, _label=part["_label"] + suffix))
            notes.shown.append(f"every {label} setting shown{' at ' + where if where else ''}, none chosen: {reason}")
    kept = pd.concat(keep) if keep else rows.iloc[0:0]
    kept = kept[~row_keys(kept, cells).isin(dropped_cells)].sort_index()
    kept.attrs = dict(rows.attrs)
    return kept, notes.text()
