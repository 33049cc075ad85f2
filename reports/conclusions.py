"""Paired comparisons -> CSV tables, an HTML section and one computed sentence per table.

A sentence is assembled from the verdicts (never written in advance) and names the budget
accounting it ran under (reports.accounting). A verdict is the family's decision: Holm-corrected
over the table's comparisons under one ruler (reports.multiplicity); a difference the correction
keeps under every ruler is a win, one it does not is a tie, and one the rulers disagree on is
reported as such (a claim stands only where the rulers agree). Rank agreement between rulers is
Kendall's tau over the FIDs of the distinct compared settings (a baseline shared by several rows
counts once).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness.metrics.noise_floor import FLOOR_KEYS
from reports.accounting import COST_COLUMNS, FLOP_TOLERANCE, accounting_label, budget_text, budgets_text, match_of
from reports.multiplicity import ALPHA, too_few_resamples
from reports.render import fmt_interval, fmt_std
from reports.significance import COMPARISONS, ComparisonResult, compare, job_evidence
from reports.tables import best_per_cell, present, protocol_groups, value_label, varies

if TYPE_CHECKING:
    from reports.collect import SweepData

FLOOR_COLUMNS = FLOOR_KEYS  # the real-vs-real figures each record carries (harness.metrics.noise_floor)


@dataclass
class Significance:
    results: list[ComparisonResult]
    floors: list[tuple[str, dict]]  # protocol label -> real-vs-real FID values


def _floor(rows: pd.DataFrame) -> dict:
    return {
        c: float(pd.to_numeric(rows[c], errors="coerce").mean())
        for c in FLOOR_COLUMNS
        if c in rows and pd.to_numeric(rows[c], errors="coerce").notna().any()
    }


def build_significance(data: SweepData) -> Significance:
    """Every comparison per FID protocol and per budget accounting (never two in one table)."""
    ok = data.jobs[data.jobs["status"] == "ok"].copy()
    ok.attrs = dict(data.jobs.attrs)
    ev = job_evidence(data)
    results, floors = [], []
    for info, rows in protocol_groups(ok):
        floor = _floor(rows)
        if floor:
            floors.append((info.get("label") or "", floor))
        matches = match_of(rows)
        for match in sorted(set(matches)):
            part = rows[matches == match]
            for cmp in COMPARISONS:
                res = compare(cmp, part, ev, info)
                if res is not None:
                    results.append(res)
    return Significance(results, floors)


def claim(row: dict, rulers: list[str]) -> str:
    """better / worse / tie when every ruler says so; 'disputed' when they disagree."""
    verdicts = {row[r]["verdict"] for r in rulers if r in row}
    return verdicts.pop() if len(verdicts) == 1 else "disputed"


def cell_text(cell: dict, match: str = "blocks") -> str:
    parts = [budget_text(v, match) if k == "budget_blocks" else f"{k}={value_label(v)}" for k, v in cell.items()]
    return ", ".join(parts)


def cells_text(cells: list[dict], match: str = "blocks") -> str:
    """'60 and 120 blocks' when the cells differ in budget only, else the cells joined."""
    if cells and all(list(c) == ["budget_blocks"] for c in cells):
        return budgets_text([c["budget_blocks"] for c in cells], match)
    return _join([cell_text(c, match) for c in cells])


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def conclusion(res: ComparisonResult) -> str:
    """One sentence from the numbers, e.g. 'Block-matched (the paper's accounting, Sec. 4.2): FPDM
    beats DiT at 60 and 120 blocks; FPDM ties DiT at 240 blocks.'"""
    clauses = []
    for label in dict.fromkeys(r["label"] for r in res.rows):
        rows = [r for r in res.rows if r["label"] == label]
        by: dict[str, list[dict]] = {}
        for r in rows:
            by.setdefault(claim(r, res.rulers), []).append(r["cell"])
        where = {k: (" at " + cells_text(v, res.match) if any(v) else "") for k, v in by.items()}
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
                + (" at " + cells_text(flips, res.match) if any(flips) else "")
            )
    acc = accounting_label(res.match)
    return f"{acc[:1].upper() + acc[1:]}: " + "; ".join(clauses) + "."


def rank_agreement(res: ComparisonResult) -> tuple[int, int, float | None]:
    """(orderings both rulers call the same way, orderings, Kendall tau of the compared settings'
    FIDs). Each distinct setting counts once: a baseline paired with several treatments in one
    cell (constant against every schedule) is one point, not one per row."""
    from scipy.stats import kendalltau

    if len(res.rulers) < 2:
        return 0, 0, None
    a, b = res.rulers[:2]
    rows = [r for r in res.rows if a in r and b in r]
    same = sum(np.sign(r[a]["diff"]) == np.sign(r[b]["diff"]) for r in rows)
    points: dict[tuple, tuple[float, float]] = {}
    for r in rows:
        cell = tuple((k, value_label(v)) for k, v in r["cell"].items())
        points.setdefault((cell, "baseline"), (r[a]["fid_base"], r[b]["fid_base"]))
        points.setdefault((cell, "setting", r["value"]), (r[a]["fid"], r[b]["fid"]))
    xa, xb = [p[0] for p in points.values()], [p[1] for p in points.values()]
    tau = kendalltau(xa, xb).statistic if len(xa) >= 3 else None
    return int(same), len(rows), (None if tau is None or np.isnan(tau) else float(tau))


def _cost_columns(costs: dict) -> dict:
    """Each side's measured FLOPs and block passes per image, the FLOP gap and its flag."""
    out = {}
    for col, name in COST_COLUMNS:
        out[f"{name} baseline"] = costs["baseline"][col]
        out[name] = costs["setting"][col]
    out["FLOP gap"] = costs["flop_gap"]  # FLOPs(setting) / FLOPs(baseline) - 1
    out["FLOPs matched"] = costs["flops_matched"]  # |gap| <= FLOP_TOLERANCE (None: not recorded)
    return out


def _ruler_columns(s: dict, p: str) -> dict:
    out = {
        f"{p}FID baseline": s["fid_base"],
        f"{p}FID baseline lo": s["ci_base"][0],
        f"{p}FID baseline hi": s["ci_base"][1],
        f"{p}FID": s["fid"],
        f"{p}FID lo": s["ci"][0],
        f"{p}FID hi": s["ci"][1],
        f"{p}dFID": s["diff"],
        f"{p}dFID lo": s["ci_diff"][0],
        f"{p}dFID hi": s["ci_diff"][1],
        f"{p}p": s["p"],
        f"{p}p Holm": s["p_holm"],
        f"{p}verdict": s["verdict"],
    }
    for key, name in (("ci_ranges", "over seed ranges"), ("ci_train_seeds", "over train seeds")):
        if s[key] is not None:
            out.update({f"{p}dFID {name} lo": s[key][0], f"{p}dFID {name} hi": s[key][1]})
    return out


def frame(res: ComparisonResult) -> pd.DataFrame:
    """Numbers for the CSV: per row each side's cost, the FIDs, the difference, its intervals, its
    p-value raw and Holm-adjusted, and the verdict under each ruler."""
    recs = []
    for r in res.rows:
        out = {
            **{k: v for k, v in r["cell"].items()},
            "accounting": accounting_label(res.match),
            "baseline": res.baseline,
            "setting": r["label"],
            "pairs": r["pairs"],
            **_cost_columns(r["costs"]),
        }
        for i, ruler in enumerate(res.rulers):
            if ruler in r:
                out.update(_ruler_columns(r[ruler], "" if i == 0 else f"{ruler} "))
        out["claim"] = claim(r, res.rulers)
        out["family"] = res.family
        recs.append(out)
    return pd.DataFrame(recs)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _ci(x: float, ci, signed: bool = False) -> str:
    """The value and its interval to the interval's precision (reports.render.fmt_interval)."""
    return fmt_interval(x, ci[0], ci[1], signed)


def _sides(costs: dict, col: str) -> str:
    b, t = costs["baseline"][col], costs["setting"][col]
    return "—" if b is None and t is None else f"{'?' if b is None else _fmt(b)} → {'?' if t is None else _fmt(t)}"


def _flops_cell(costs: dict) -> str:
    text = _sides(costs, "flops_per_image")
    return text + (f" ⚠ {costs['flop_gap']:+.1%}" if costs["flops_matched"] is False else "")


def _verdict_cell(s: dict) -> str:
    return (
        s["verdict"]
        + ("" if s["ci_ranges"] is None else f"; ranges [{_fmt(s['ci_ranges'][0])}, {_fmt(s['ci_ranges'][1])}]")
        + (
            ""
            if s["ci_train_seeds"] is None
            else f"; train seeds [{_fmt(s['ci_train_seeds'][0])}, {_fmt(s['ci_train_seeds'][1])}]"
            + (" (flips)" if s["flips"] else "")
        )
    )


def _html_rows(res: ComparisonResult) -> str:
    p = res.rulers[0]
    head = [
        *res.cells,
        "setting",
        "FLOPs/image (baseline → setting)",
        "block passes/image (baseline → setting)",
        f"FID {res.baseline}",
        "FID setting",
        "ΔFID (95% CI)",
        "p (Holm)",
        "verdict",
        *[f"ΔFID {r}" for r in res.rulers[1:]],
        "claim",
    ]
    body = []
    for r in res.rows:
        s = r[p]
        cells = [value_label(v) for v in r["cell"].values()] + [
            r["label"],
            _flops_cell(r["costs"]),
            _sides(r["costs"], "block_passes_per_image"),
            _ci(s["fid_base"], s["ci_base"]),
            _ci(s["fid"], s["ci"]),
            _ci(s["diff"], s["ci_diff"], signed=True),
            f"{_fmt(s['p'])} ({_fmt(s['p_holm'])})",
            _verdict_cell(s),
        ]
        cells += [
            (_ci(r[x]["diff"], r[x]["ci_diff"], signed=True) + f" p {_fmt(r[x]['p_holm'])} {r[x]['verdict']}")
            if x in r
            else "—"
            for x in res.rulers[1:]
        ] + [claim(r, res.rulers)]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    ths = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<div class="scroll"><table class="tbl"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def floor_html(label: str, f: dict) -> str:
    """What two real sample sets give under the protocol, said as that (harness.metrics.noise_floor)."""

    def val(k: str) -> str:
        return _fmt(f[k]) + (f" ± {_fmt(f[k + '_std'])}" if k + "_std" in f else "")

    where = html.escape(fid_part(label))
    if "noise_floor_matched" in f and "noise_floor_n" in f and "noise_floor_ref_n" in f:
        n, big = int(round(f["noise_floor_n"])), int(round(f["noise_floor_ref_n"]))
        halves = (
            f" (two halves of the reference, {big // 2:,} images each, give {val('noise_floor_halves')})"
            if "noise_floor_halves" in f
            else ""
        )
        return (
            f"<p><b>Real-vs-real FID</b> ({where}): two independent real sample sets of {n:,} and {big:,} "
            f"images, the sizes these FIDs use, give {val('noise_floor_matched')}"
            f"{halves}. It is FID's small-sample bias, extrapolated "
            "in 1/n from disjoint splits of the reference (Chong &amp; Forsyth 2020): about what a "
            "perfect generator scores here, not a limit on the differences below, which the paired "
            "intervals judge.</p>"
        )
    if "noise_floor_halves" not in f:
        return ""
    return (
        f"<p><b>Real-vs-real FID</b> ({where}): two halves of the reference give "
        f"{val('noise_floor_halves')}. Each half holds half the reference, fewer images than these FIDs "
        "use, so FID's small-sample bias makes this larger than what two real sets of the FIDs' sizes "
        "give (re-run the evaluate stage for that value).</p>"
    )


def _notes(res: ComparisonResult) -> str:
    """The family, the resample count's limit on it, and the rows whose FLOPs are not matched."""
    n = res.rows[0][res.rulers[0]]["resamples"]
    m = max(sum(1 for r in res.rows if x in r) for x in res.rulers)
    text = (
        f"Paired bootstrap over images, {n} resamples, 95% percentile intervals per comparison; "
        "ΔFID = setting - baseline (negative: the setting is better). p: two-sided bootstrap p-value, "
        f"in brackets Holm-adjusted ({html.escape(res.family)}); a verdict is better or worse where the "
        f"adjusted p is at most {ALPHA}, else a tie. FLOPs and block passes per image are measured, "
        f"each side's mean over the paired jobs ({html.escape(accounting_label(res.match))})."
    )
    if too_few_resamples(m, n):
        text += (
            f" With {n} resamples the smallest p is {_fmt(2 / (n + 1))}, above {_fmt(ALPHA / m)}, so Holm "
            f"over {m} comparisons cannot declare any difference: raise metrics.bootstrap to at least {40 * m - 1}."
        )
    flagged = [r for r in res.rows if r["costs"]["flops_matched"] is False]
    if flagged:
        why = (
            "block matching does not count FPDM's injection, so these rows compare the same block "
            "budget, not the same compute"
            if res.match == "blocks"
            else "these rows are not FLOP-matched"
        )
        text += (
            f" ⚠ In {len(flagged)} of {len(res.rows)} rows the two sides' measured FLOPs per image "
            f"differ by more than {FLOP_TOLERANCE:.0%}: {why}."
        )
    return f'<p class="muted">{text}</p>'


def fid_part(label: str) -> str:
    """'FID-1k, digits-cnn, vs train split' of a full protocol label (the diffusion protocol after
    '; ' is stated once at the top of the report)."""
    return (label or "").split("; ")[0]


def _protocol_box(res: ComparisonResult) -> str:
    """Which FID protocol (short: the full label is at the top) and how each cell's setting was chosen."""
    bits = [fid_part(res.protocol.get("label") or ""), res.protocol.get("selection") or ""]
    text = "; ".join(b for b in bits if b)
    return f'<div class="protocol">{html.escape(text)}</div>' if text else ""


def section_html(sig: Significance) -> str:
    parts = [floor_html(label, f) for label, f in sig.floors]
    for res in sig.results:
        same, total, tau = rank_agreement(res)
        agree = (
            f"Rulers {html.escape(' and '.join(res.rulers[:2]))} agree on {same} of {total} orderings"
            + (f" (Kendall tau {tau:.2f} over the distinct settings)" if tau is not None else "")
            + "."
            if total
            else "One ruler only: no rank agreement to show."
        )
        parts.append(
            f'<h3 id="s-{res.comparison.name}-{html.escape(res.match)}">{html.escape(res.comparison.title)}, '
            f"{html.escape(accounting_label(res.match))}</h3>"
            f"{_protocol_box(res)}"
            f'<p class="conclusion"><b>{html.escape(conclusion(res))}</b></p>'
            f'<p class="muted">{agree}</p>{_notes(res)}{_html_rows(res)}'
        )
    return "\n".join(p for p in parts if p) or (
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


# ---------------------------------------------------------------------------------------------
# the headline: the report's first sentence, computed from the numbers below it

HEADLINE = "fpdm_vs_dit"  # the comparison the benchmark exists for (paper Table 1)


def headline(sig: Significance, ok: pd.DataFrame) -> list[str]:
    """The report's opening: the FPDM-vs-DiT paired difference with its interval and verdict, one
    sentence per accounting and protocol; without that comparison, the best FID per model with its
    interval; without models, what the sweep varies."""
    main = [res for res in sig.results if res.comparison.name == HEADLINE]
    if main:
        return [comparison_headline(res, ok) for res in main]
    best = best_fid_headline(ok)
    if best:
        return [best]
    axes = [a for a in ok.attrs.get("axes", []) if varies(ok, a)]
    return [f"This sweep varies {', '.join(axes)}: no FID per model to headline."] if axes else []


def _where(cell: dict, ok: pd.DataFrame, match: str) -> str:
    """The row's budget (and any other matched axis that varies); a budget the sweep holds fixed is
    not in the row's cell, so it is read from the jobs."""
    if not cell and present(ok, "budget_blocks") and ok["budget_blocks"].dropna().nunique() == 1:
        cell = {"budget_blocks": ok["budget_blocks"].dropna().iloc[0]}
    return f" at {cell_text(cell, match)}" if cell else ""


def _verdict_words(row: dict, res: ComparisonResult) -> str:
    return {
        "better": f"{row['label']} better",
        "worse": f"{res.baseline} better",
        "tie": "a tie",
        "disputed": "the rulers disagree",
    }[claim(row, res.rulers)]


def comparison_headline(res: ComparisonResult, ok: pd.DataFrame) -> str:
    """E.g. 'FLOP-matched, FPDM − DiT FID (digits-cnn, 95% interval): +0.40 [+0.24, +0.57] at the
    FLOPs of 120 DiT blocks (DiT better, adjusted p 0.003); both rulers agree; Holm over the 3
    comparisons of this table, per ruler.'"""
    ruler = res.rulers[0]
    acc = accounting_label(res.match)
    parts = [
        f"{_ci(r[ruler]['diff'], r[ruler]['ci_diff'], signed=True)}{_where(r['cell'], ok, res.match)} "
        f"({_verdict_words(r, res)}, adjusted p {_fmt(r[ruler]['p_holm'])})"
        for r in res.rows
        if ruler in r
    ]
    labels = " / ".join(dict.fromkeys(r["label"] for r in res.rows))
    disputed = sum(claim(r, res.rulers) == "disputed" for r in res.rows)
    rulers = (
        "one ruler"
        if len(res.rulers) < 2
        else f"the rulers disagree in {disputed} of {len(res.rows)}"
        if disputed
        else ("both rulers agree" if len(res.rulers) == 2 else f"all {len(res.rulers)} rulers agree")
    )
    return (
        f"{acc[:1].upper() + acc[1:]}, {labels} − {res.baseline} FID ({ruler}, 95% interval): "
        + "; ".join(parts)
        + f"; {rulers}; {res.family}."
    )


def best_fid_headline(ok: pd.DataFrame) -> str:
    """'Best FID per model (FID-1k, digits-cnn, vs train split), not a paired comparison: DiT 22.3
    [19.6, 25.0] at 240 blocks; FPDM 53 [44, 64] at 60 blocks.' (first protocol only)."""
    groups = [(info, rows) for info, rows in protocol_groups(ok) if present(rows, "model") and present(rows, "fid")]
    if not groups:
        return ""
    info, rows = groups[0]
    best = best_per_cell(rows, ["model"])
    if best.empty:
        return ""
    match = str(rows["match"].dropna().iloc[0]) if present(rows, "match") else "blocks"
    items = []
    for _, b in best.iterrows():
        name = {"fpdm": "FPDM", "dit": "DiT"}.get(str(b["model"]), str(b["model"]))
        if present(best, "fid_ci_low") and present(best, "fid_ci_high"):
            value = fmt_interval(b["fid"], b["fid_ci_low"], b["fid_ci_high"])
        else:
            value = fmt_std(b["fid"], b.get("fid std"))
        budget = f" at {budget_text(b['budget_blocks'], match)}" if present(best, "budget_blocks") else ""
        items.append(f"{name} {value}{budget}")
    where = f" ({fid_part(info.get('label') or '')})" if info.get("label") else ""
    return f"Best FID per model{where}, not a paired comparison: " + "; ".join(items) + "."
