"""Paired comparisons -> CSV tables, an HTML section and one computed sentence per table.

A sentence is assembled from the verdicts (never written in advance): a difference whose 95%
interval excludes 0 under every ruler is a win, one whose interval contains 0 is a tie, and one the
rulers disagree on is reported as such (a claim stands only where the rulers agree). Rank
agreement between rulers is Kendall's tau over the FIDs of every compared setting.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from reports.significance import COMPARISONS, ComparisonResult, compare, job_evidence
from reports.tables import protocol_groups, value_label

if TYPE_CHECKING:
    from reports.collect import SweepData


@dataclass
class Significance:
    results: list[ComparisonResult]
    floors: list[tuple[str, dict]]  # protocol label -> noise floor values


def build_significance(data: SweepData) -> Significance:
    ok = data.jobs[data.jobs["status"] == "ok"].copy()
    ok.attrs = dict(data.jobs.attrs)
    ev = job_evidence(data)
    results, floors = [], []
    for info, rows in protocol_groups(ok):
        floor = {
            c: float(pd.to_numeric(rows[c], errors="coerce").mean())
            for c in ("noise_floor_halves", "noise_floor_halves_std", "noise_floor_subset", "noise_floor_subset_std")
            if c in rows and pd.to_numeric(rows[c], errors="coerce").notna().any()
        }
        if floor:
            floors.append((info.get("label") or "", floor))
        for cmp in COMPARISONS:
            res = compare(cmp, rows, ev, info)
            if res is not None:
                results.append(res)
    return Significance(results, floors)


def claim(row: dict, rulers: list[str]) -> str:
    """better / worse / tie when every ruler says so; 'disputed' when they disagree."""
    verdicts = {row[r]["verdict"] for r in rulers if r in row}
    return verdicts.pop() if len(verdicts) == 1 else "disputed"


def cell_text(cell: dict) -> str:
    parts = [f"{value_label(v)} blocks" if k == "budget_blocks" else f"{k}={value_label(v)}" for k, v in cell.items()]
    return ", ".join(parts)


def cells_text(cells: list[dict]) -> str:
    """'60 and 120 blocks' when the cells differ in budget only, else the cells joined."""
    if cells and all(list(c) == ["budget_blocks"] for c in cells):
        return _join([value_label(c["budget_blocks"]) for c in cells]) + " blocks"
    return _join([cell_text(c) for c in cells])


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def conclusion(res: ComparisonResult) -> str:
    """One sentence from the numbers, e.g. 'FPDM beats DiT at 60 and 120 blocks; tie at 240 blocks.'"""
    clauses = []
    for label in dict.fromkeys(r["label"] for r in res.rows):
        rows = [r for r in res.rows if r["label"] == label]
        by: dict[str, list[dict]] = {}
        for r in rows:
            by.setdefault(claim(r, res.rulers), []).append(r["cell"])
        where = {k: (" at " + cells_text(v) if any(v) else "") for k, v in by.items()}
        for verdict, text in (
            ("better", f"{label} beats {res.baseline}"),
            ("worse", f"{res.baseline} beats {label}"),
            ("tie", f"{label} ties {res.baseline}"),
            ("disputed", f"the rulers disagree on {label} vs {res.baseline}"),
        ):
            if verdict in by:
                clauses.append(text + where[verdict])
        flips = [r["cell"] for r in rows if any(r[x].get("flips") for x in res.rulers if x in r)]
        if flips:
            clauses.append(
                f"{label} vs {res.baseline} flips between training seeds"
                + (" at " + cells_text(flips) if any(flips) else "")
            )
    s = "; ".join(clauses)
    return s[:1].upper() + s[1:] + "."


def rank_agreement(res: ComparisonResult) -> tuple[int, int, float | None]:
    """(orderings both rulers call the same way, orderings, Kendall tau of all compared FIDs)."""
    from scipy.stats import kendalltau

    if len(res.rulers) < 2:
        return 0, 0, None
    a, b = res.rulers[:2]
    rows = [r for r in res.rows if a in r and b in r]
    same = sum(np.sign(r[a]["diff"]) == np.sign(r[b]["diff"]) for r in rows)
    xa = [v for r in rows for v in (r[a]["fid_base"], r[a]["fid"])]
    xb = [v for r in rows for v in (r[b]["fid_base"], r[b]["fid"])]
    tau = kendalltau(xa, xb).statistic if len(xa) >= 3 else None
    return int(same), len(rows), (None if tau is None or np.isnan(tau) else float(tau))


def frame(res: ComparisonResult) -> pd.DataFrame:
    """Numbers for the CSV: per row the FIDs, the difference and its intervals under each ruler."""
    recs = []
    for r in res.rows:
        out = {
            **{k: v for k, v in r["cell"].items()},
            "baseline": res.baseline,
            "setting": r["label"],
            "pairs": r["pairs"],
        }
        for i, ruler in enumerate(res.rulers):
            if ruler not in r:
                continue
            s, p = r[ruler], ("" if i == 0 else f"{ruler} ")
            out.update(
                {
                    f"{p}FID baseline": s["fid_base"],
                    f"{p}FID baseline lo": s["ci_base"][0],
                    f"{p}FID baseline hi": s["ci_base"][1],
                    f"{p}FID": s["fid"],
                    f"{p}FID lo": s["ci"][0],
                    f"{p}FID hi": s["ci"][1],
                    f"{p}dFID": s["diff"],
                    f"{p}dFID lo": s["ci_diff"][0],
                    f"{p}dFID hi": s["ci_diff"][1],
                    f"{p}verdict": s["verdict"],
                }
            )
            for key, name in (("ci_ranges", "over seed ranges"), ("ci_train_seeds", "over train seeds")):
                if s[key] is not None:
                    out.update({f"{p}dFID {name} lo": s[key][0], f"{p}dFID {name} hi": s[key][1]})
        out["claim"] = claim(r, res.rulers)
        recs.append(out)
    return pd.DataFrame(recs)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _ci(x: float, ci) -> str:
    return f"{_fmt(x)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _html_rows(res: ComparisonResult) -> str:
    p = res.rulers[0]
    head = [
        *res.cells,
        "setting",
        f"FID {res.baseline}",
        "FID setting",
        "ΔFID (95% CI)",
        "verdict",
        *[f"ΔFID {r}" for r in res.rulers[1:]],
        "claim",
    ]
    body = []
    for r in res.rows:
        s = r[p]
        cells = [value_label(v) for v in r["cell"].values()] + [
            r["label"],
            _ci(s["fid_base"], s["ci_base"]),
            _ci(s["fid"], s["ci"]),
            _ci(s["diff"], s["ci_diff"]),
        ]
        verdict = (
            s["verdict"]
            + ("" if s["ci_ranges"] is None else f"; ranges [{_fmt(s['ci_ranges'][0])}, {_fmt(s['ci_ranges'][1])}]")
            + (
                ""
                if s["ci_train_seeds"] is None
                else f"; train seeds [{_fmt(s['ci_train_seeds'][0])}, {_fmt(s['ci_train_seeds'][1])}]"
                + (" (flips)" if s["flips"] else "")
            )
        )
        cells += (
            [verdict]
            + [(_ci(r[x]["diff"], r[x]["ci_diff"]) + f" {r[x]['verdict']}") if x in r else "—" for x in res.rulers[1:]]
            + [claim(r, res.rulers)]
        )
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<div class="scroll"><table class="tbl"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def section_html(sig: Significance) -> str:
    parts = []
    for label, f in sig.floors:
        txt = "; ".join(
            f"{name} {_fmt(f[k])}" + (f" ± {_fmt(f[k + '_std'])}" if k + "_std" in f else "")
            for k, name in (
                ("noise_floor_halves", "reference halves"),
                ("noise_floor_subset", "real subset of the generated size"),
            )
            if k in f
        )
        parts.append(
            f"<p><b>Noise floor</b> (real vs real, {html.escape(label)}): {html.escape(txt)}. "
            "Differences below it are not resolved by this protocol.</p>"
        )
    for res in sig.results:
        same, total, tau = rank_agreement(res)
        agree = (
            f"Rulers {html.escape(' and '.join(res.rulers[:2]))} agree on {same} of {total} orderings"
            + (f" (Kendall tau {tau:.2f})" if tau is not None else "")
            + "."
            if total
            else "One ruler only: no rank agreement to show."
        )
        n = res.rows[0][res.rulers[0]]["resamples"]
        parts.append(
            f'<h3 id="s-{res.comparison.name}">{html.escape(res.comparison.title)}</h3>'
            f'<div class="protocol">{html.escape(res.protocol.get("label") or "")}</div>'
            f'<p class="conclusion"><b>{html.escape(conclusion(res))}</b></p>'
            f'<p class="muted">{agree} Paired bootstrap over images, {n} resamples, 95% percentile '
            f"intervals; ΔFID = setting - baseline (negative: the setting is better); a tie is an "
            f"interval containing 0.</p>{_html_rows(res)}"
        )
    return "\n".join(parts) or (
        "<p class='muted'>No paired comparison: the records keep no features "
        "(re-run the evaluate stage) or no baseline is in the sweep.</p>"
    )


def csv_frames(sig: Significance) -> dict[str, pd.DataFrame]:
    by: dict[str, list[pd.DataFrame]] = {}
    for res in sig.results:
        by.setdefault(f"significance_{res.comparison.name}", []).append(
            frame(res).assign(protocol=res.protocol.get("label") or "")
        )
    return {k: pd.concat(v, ignore_index=True) for k, v in by.items()}
