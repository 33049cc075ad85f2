"""One self-contained HTML report (and small console tables) from tables, figures and records.

The page needs no network and no JavaScript: figures are base64 ``data:`` URIs, the CSS is inline,
and every string that comes from a config or record passes through ``html.escape`` (tables through
``DataFrame.to_html(escape=True)``). Nothing time-dependent is written, so the bytes depend on the
records alone.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from reports.collect import setting_axes
from reports.figures import FigureResult
from reports.tables import TableResult, varies

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:2em}
h3{margin:1.4em 0 .3em;font-size:1.08em}
.muted{color:#5b6773;font-size:.9em}.protocol{font-size:.88em;color:#34495e;background:#eef3f8;
display:inline-block;padding:2px 8px;border-radius:4px;margin:2px 0 6px}
nav.toc{background:#f2f5f8;border:1px solid #dde3ea;border-radius:6px;padding:8px 18px;margin:14px 0}
nav.toc ul{margin:4px 0;padding-left:18px}nav.toc li{margin:2px 0}
a{color:#1f5fa8;text-decoration:none}a:hover{text-decoration:underline}
table.tbl{border-collapse:collapse;font-size:.86em;margin:6px 0 4px;font-variant-numeric:tabular-nums}
table.tbl th,table.tbl td{border:1px solid #d5dbe2;padding:3px 8px;text-align:left;vertical-align:top}
table.tbl td.num{text-align:right;white-space:nowrap}
table.tbl th{background:#eef1f5;text-align:center}table.tbl tr:nth-child(even) td{background:#fafbfc}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:10px 0}.card{border:1px solid #dde3ea;border-radius:6px;
padding:6px 14px;min-width:90px}.card b{font-size:1.4em;display:block}
.ok b{color:#1e7d32}.failed b{color:#b3261e}.missing b{color:#8a6d00}
figure{margin:10px 0 24px}figure img{display:block;max-width:100%;border:1px solid #e3e7ec;margin:4px 0}
figcaption{font-size:.86em;color:#5b6773}
.grids{display:flex;flex-wrap:wrap;gap:14px}.grids figure{width:250px}.grids img{width:100%;image-rendering:pixelated}
pre{background:#f4f6f8;padding:6px 8px;overflow:auto;font-size:.8em;max-height:18em}
.scroll{overflow-x:auto}
.headline{font-size:1.08em;background:#eaf4ea;border-left:4px solid #1e7d32;padding:8px 12px;margin:10px 0}
.protocol-once{font-size:.9em;color:#34495e;background:#eef3f8;padding:6px 10px;border-radius:4px}
.protocol-once ul{margin:4px 0}ul.reading li{margin:4px 0}code{font-size:.92em}
"""


@dataclass
class Grid:
    job_id: str
    setting: str
    png: bytes


@dataclass
class ReportContent:
    jobs: pd.DataFrame
    tables: list[TableResult]
    figures: list[FigureResult]
    grids: list[Grid] = field(default_factory=list)
    tracebacks: dict[str, str] = field(default_factory=dict)
    sweeps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, title, trusted HTML)
    headline: list[str] = field(default_factory=list)  # the report's first sentences (reports.conclusions.headline)


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def fmt_number(v: Any) -> str:
    """Fixed, locale-free number text: ints exact, large values with separators, else 4 significant."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, int) or (hasattr(v, "is_integer") and abs(v) < 1e15 and float(v).is_integer()):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 10000 else f"{v:.4g}"
    return str(v)


def _finite(*vs: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vs)


def interval_decimals(lo: float, hi: float) -> int | None:
    """Decimal places that write an interval's half-width ``(hi - lo) / 2`` to the Particle Data
    Group's rounding rule (Review of Particle Physics, Introduction, "Rounding"): when its three
    leading digits are 100-354 it keeps two significant digits, 355-949 one, and 950-999 round up
    to 1000 with two. A value and its interval are written to these places, so no digit is shown
    that the interval says is noise. Negative: round to tens, hundreds, ...; None: no width to go by."""
    if not _finite(lo, hi) or hi <= lo:
        return None
    mantissa, exponent = f"{(hi - lo) / 2:.2e}".split("e")  # e.g. "1.65", "-01": 3 digits, rounded
    lead, exp = int(mantissa.replace(".", "")), int(exponent)
    if lead >= 950:
        return 1 - (exp + 1)  # 0.97 -> 1.0: two digits of the next decade
    return (2 if lead <= 354 else 1) - 1 - exp


def fmt_fixed(v: float, decimals: int, signed: bool = False) -> str:
    """``v`` rounded to ``decimals`` places (negative: to tens, hundreds, ...); no minus zero."""
    sign = "+" if signed else ""
    x = round(float(v), decimals)
    x = 0.0 if x == 0 else x
    return f"{x:{sign},.{max(decimals, 0)}f}" if abs(x) >= 10000 else f"{x:{sign}.{max(decimals, 0)}f}"


def fmt_interval(v: float, lo: float, hi: float, signed: bool = False) -> str:
    """'+0.40 [+0.24, +0.57]': the value and its interval to the interval's precision
    (``interval_decimals``); a zero-width or missing interval falls back to ``fmt_number``."""
    d = interval_decimals(lo, hi)
    if d is None or not _finite(v):
        return f"{fmt_number(v)} [{fmt_number(lo)}, {fmt_number(hi)}]"
    return f"{fmt_fixed(v, d, signed)} [{fmt_fixed(lo, d, signed)}, {fmt_fixed(hi, d, signed)}]"


def fmt_std(v: float, std: float) -> str:
    """'200.5 ± 0.7': a mean and its spread, both to the spread's precision (``interval_decimals``
    of mean - std .. mean + std); without a usable spread, ``fmt_number`` of each."""
    d = interval_decimals(v - std, v + std) if _finite(v, std) else None
    if d is None:
        return fmt_number(v) + (f" ± {fmt_number(std)}" if fmt_number(std) and fmt_number(v) else "")
    return f"{fmt_fixed(v, d)} ± {fmt_fixed(std, d)}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or hasattr(v, "dtype") and v.dtype.kind in "iuf"


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _cell(v: Any, lo: Any = None, hi: Any = None, std: Any = None) -> str:
    """One shown cell: ``value [lo, hi]`` to the interval's precision (and the seeds' spread as
    ``sd``), else ``mean ± std`` to the spread's precision, else the plain number."""
    if _missing(v):
        return ""
    if not _missing(lo) and not _missing(hi):
        d = interval_decimals(lo, hi)
        sd = "" if _missing(std) else f", sd {fmt_number(std) if d is None else fmt_fixed(std, d)}"
        return fmt_interval(v, lo, hi) + sd
    return fmt_number(v) if _missing(std) else fmt_std(v, std)


def display_frame(frame: pd.DataFrame, labelled: bool = False) -> tuple[pd.DataFrame, list[bool]]:
    """Merge ``X`` / ``X lo`` / ``X hi`` / ``X std`` into one cell (``value [lo, hi]`` or ``mean ±
    std``, rounded to that interval or spread, ``_cell``) and format every cell as a string; also
    -> whether each shown column is numeric (right-aligned). ``labelled``: headers for readers
    (``column_label``), as the paper tables show them."""
    cols = set(map(str, frame.columns))
    out, numeric = {}, []
    for c in frame.columns:
        if str(c).endswith((" std", " lo", " hi")) and str(c).rsplit(" ", 1)[0] in cols:
            continue
        vals = frame[c].tolist()
        numeric.append(any(_is_number(v) for v in vals if not _missing(v)))
        extra = {
            k: frame[f"{c} {k}"].tolist() if f"{c} {k}" in cols else [None] * len(vals) for k in ("lo", "hi", "std")
        }
        out[column_label(str(c)) if labelled else c] = [
            _cell(v, lo, hi, sd) if _is_number(v) else fmt_number(v)
            for v, lo, hi, sd in zip(vals, extra["lo"], extra["hi"], extra["std"])
        ]
    return pd.DataFrame(out, columns=list(out)), numeric


# Headers for readers: a table's column names are the CSV's (stable for scripts); what a reader
# sees names the quantity and its unit.
COLUMN_LABELS = {
    "budget_blocks": "Budget (blocks / image)",
    "iters_per_step": "Iterations / step",
    "match": "Accounting",
    "tol": "Tolerance",
    "train_method": "Training method",
    "pre_depth": "Pre depth",
    "post_depth": "Post depth",
}
VALUE_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dit": "DiT", "fpdm": "FPDM"}
_PIVOTS = (  # the pivoted FID columns of reports.tables: "FID ddim" -> "FID (DDIM)"
    (re.compile(r"^FID @ iters (.+)$"), "FID ({} iterations / step)"),
    (re.compile(r"^FID @ blocks (.+)$"), "FID ({} blocks)"),
    (re.compile(r"^FID reuse (.+)$"), "FID (reuse {})"),
    (re.compile(r"^FID ([^ (]+)$"), "FID ({})"),
)


def column_label(name: str) -> str:
    """'budget_blocks' -> 'Budget (blocks / image)', 'FID ddim' -> 'FID (DDIM)', 'best setting' ->
    'Best setting'; a header already written for readers ('Params (M)') is kept."""
    if name in COLUMN_LABELS:
        return COLUMN_LABELS[name]
    for pattern, text in _PIVOTS:
        if m := pattern.match(name):
            return text.format(VALUE_NAMES.get(m.group(1), m.group(1)))
    if name != name.lower():
        return name
    words = name.replace("_", " ")
    return words[:1].upper() + words[1:]


def html_table(frame: pd.DataFrame, labelled: bool = False) -> str:
    """An escaped HTML table; numeric columns get class ``num`` (right-aligned), empty cells a dash."""
    disp, numeric = display_frame(frame, labelled)
    head = "".join(f"<th>{esc(c)}</th>" for c in disp.columns)
    body = []
    for row in disp.itertuples(index=False):
        cells = "".join(
            f'<td class="num">{esc(v) or "—"}</td>' if n else f"<td>{esc(v) or '—'}</td>" for v, n in zip(row, numeric)
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table class="tbl"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def protocol_line(info: Mapping[str, Any]) -> str:
    bits = [f"{k}: {info[k]}" for k in ("num_samples", "extractor", "reference", "sampler") if info.get(k)]
    head = info.get("label") or "protocol not recorded"
    return f"{head}" + (f" ({'; '.join(bits)})" if bits else "")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _section(sid: str, title: str, body: str) -> tuple[str, str, str]:
    return sid, title, f'<section id="{sid}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def _summary(c: ReportContent) -> str:
    counts = c.jobs["status"].value_counts() if len(c.jobs) else pd.Series(dtype=int)
    cards = "".join(
        f'<div class="card {s}"><b>{int(counts.get(s, 0))}</b>{s}</div>' for s in ("ok", "failed", "missing")
    )
    sweeps = ", ".join(esc(s) for s in c.sweeps)
    notes = "".join(f"<p class='muted'>{esc(n)}</p>" for n in c.notes)
    return f'<p class="muted">Sweeps: {sweeps}. {len(c.jobs)} jobs.</p><div class="cards">{cards}</div>{notes}'


def _tag(tags: Mapping[str, str], label: Any) -> str:
    """The short protocol box of a table or figure: only when the report holds several protocols
    (with one, it is stated once at the top, ``_protocols``)."""
    tag = tags.get(label or "") if label is not None else None
    return f'<div class="protocol">{esc(tag)}</div>' if tag else ""


def _tables(c: ReportContent, tags: Mapping[str, str]) -> str:
    parts = []
    for t in c.tables:
        paper = f' <span class="muted">(paper: {esc(t.paper)})</span>' if t.paper else ""
        proto = _tag(tags, t.protocol.get("label")) if t.protocol else ""
        parts.append(
            f'<h3 id="t-{esc(t.name)}">{esc(t.title)}{paper}</h3>{proto}{html_table(t.frame, labelled=True)}'
            + "".join(f"<p class='muted'>{esc(n)}</p>" for n in t.notes)
            + _files(f"tables/{t.name}", (("csv", "CSV"), ("md", "Markdown"), ("tex", "LaTeX")))
        )
    return "\n".join(parts) or (
        "<p class='muted'>No table applies: the ok records hold no FID with the axes a table needs.</p>"
    )


def _files(stem: str, kinds) -> str:
    """Links to the files written beside the report (relative: the folder moves as a whole)."""
    links = " · ".join(f'<a href="{esc(stem)}.{ext}">{label}</a>' for ext, label in kinds)
    return f'<p class="muted files">Files: {links}</p>'


BAND_GID = b'id="fid-interval-'  # the SVG group of an interval band (reports.figures.draw_intervals)


def _figures(c: ReportContent, tags: Mapping[str, str]) -> str:
    parts = []
    for f in c.figures:
        proto = _tag(tags, f.protocol)
        kinds = (("png", "PNG"), *((k, k.upper()) for k in sorted(f.vector)))
        banded = BAND_GID in f.vector.get("svg", b"")
        alt = f.title + ("; shaded bands: 95% bootstrap intervals over images" if banded else "")
        parts.append(
            f'<figure id="f-{esc(f.filename)}"><h3>{esc(f.title)}</h3>{proto}{_img(f.png, alt)}'
            f"<figcaption>{esc(f.caption)}</figcaption>{_files(f'figures/{f.stem}', kinds)}</figure>"
        )
    return "\n".join(parts) or "<p class='muted'>No figure applies to these records.</p>"


def _grids(c: ReportContent) -> str:
    items = "".join(
        f"<figure>{_img(g.png, g.setting)}<figcaption>{esc(g.setting)}<br>"
        f"<span class='muted'>{esc(g.job_id)}</span></figcaption></figure>"
        for g in c.grids
    )
    return f'<div class="grids">{items}</div>'


def _problems(c: ReportContent) -> str:
    bad = c.jobs[c.jobs["status"] != "ok"]
    if bad.empty:
        return "<p class='muted'>None: every planned job has an ok record.</p>"
    rows = []
    for _, r in bad.iterrows():
        tb = c.tracebacks.get(r["job_id"])
        tb_html = f"<details><summary>traceback</summary><pre>{esc(tb)}</pre></details>" if tb else ""
        rows.append(
            f"<tr><td>{esc(r['job_id'])}</td><td>{esc(r['sweep'])}</td><td>{esc(r['status'])}</td>"
            f"<td>{esc(r['reason'])}{tb_html}</td>"
            f"<td>{esc(r['overrides'])}</td></tr>"
        )
    return (
        '<div class="scroll"><table class="tbl"><thead><tr><th>job</th><th>sweep</th><th>status</th>'
        f"<th>reason</th><th>overrides</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _counted(series: pd.Series) -> pd.DataFrame:
    s = series.dropna().map(str)
    vc = s.value_counts()
    return pd.DataFrame({"value": vc.index, "jobs": vc.values}).sort_values(
        ["jobs", "value"], ascending=[False, True], kind="mergesort"
    )


def _provenance(c: ReportContent) -> str:
    rec = c.jobs[c.jobs["status"] != "missing"]
    parts = []
    for col, title in (("git_sha", "Git SHA"), ("python", "Python"), ("hardware", "Hardware"), ("hostname", "Hosts")):
        if col in rec and rec[col].notna().any():
            parts.append(f"<h3>{title}</h3>{html_table(_counted(rec[col]))}")
    if "packages" in rec and rec["packages"].notna().any():
        pk = rec["packages"].dropna().map(lambda s: [p.split("=", 1) for p in s.split("; ") if "=" in p])
        pairs = pd.DataFrame([p for lst in pk for p in lst], columns=["package", "version"])
        ver = pairs.groupby("package", sort=True)["version"].agg(lambda v: ", ".join(sorted(set(v)))).reset_index()
        parts.append(f"<h3>Package versions</h3>{html_table(ver)}")
    cols = [x for x in ("job_id", "config_hash", "key_train", "key_sample", "key_eval") if x in rec]
    if len(rec):
        parts.append(f"<h3>Config hashes and cache keys</h3>{html_table(rec[cols])}")
    return "\n".join(parts) or "<p class='muted'>No provenance recorded.</p>"


def _runs(c: ReportContent) -> str:
    df = c.jobs
    axes = [a for a in setting_axes(df) if varies(df, a)]
    if "seed" in df.attrs.get("axes", []) and "seed" in df:
        axes.append("seed")
    cols = [
        "job_id",
        "status",
        *axes,
        *[
            m
            for m in ("fid", "kid_mean", "precision", "recall", "block_passes_per_image", "time_per_image_s")
            if m in df
        ],
    ]
    return html_table(df[cols])


def protocol_tags(jobs: pd.DataFrame) -> dict[str, str]:
    """Protocol label -> its short name in the boxes of tables and figures: 'protocol A: FID-1k,
    digits-cnn, vs train split' (the FID part of the label; the full label is stated once at the
    top), or nothing when the report holds one protocol."""
    labels = _protocol_infos(jobs)
    if len(labels) < 2:
        return {}
    return {
        info.get("label") or "": f"protocol {chr(65 + i)}: {(info.get('label') or 'not recorded').split('; ')[0]}"
        for i, info in enumerate(labels)
    }


def _protocol_infos(jobs: pd.DataFrame) -> list[dict]:
    from reports.tables import protocol_groups

    ok = jobs[jobs["status"] == "ok"] if "status" in jobs else jobs
    return [info for info, _ in protocol_groups(ok)]


def _protocols(c: ReportContent) -> str:
    """Every protocol once, in full, near the top of the page."""
    infos = _protocol_infos(c.jobs)
    if not infos:
        return ""
    if len(infos) == 1:
        return f'<p class="protocol-once"><b>Protocol</b> (every FID below): {esc(protocol_line(infos[0]))}</p>'
    items = "".join(f"<li><b>{chr(65 + i)}</b>: {esc(protocol_line(info))}</li>" for i, info in enumerate(infos))
    return f'<div class="protocol-once"><b>Protocols</b> (each table and figure names its own):<ul>{items}</ul></div>'


READING = (
    "<b>FID</b>: lower is better. <code>value [lo, hi]</code> is the FID with its 95% bootstrap "
    "interval over the evaluated images; <code>± s</code> or <code>sd s</code> is the spread over "
    "seeds (for KID: over subsets). Values are rounded to their interval: the half-width keeps two "
    "significant digits when they read 10-35, else one (the Particle Data Group's rule).",
    "<b>Budget</b>: transformer-block passes per image asked for (<code>sample.budget</code>), under the "
    "accounting each table names: block-matched (the paper's, Sec. 4.2) or FLOP-matched.",
    "<b>Differences you can believe</b>: each setting against its baseline on the same images and "
    "noise (paired bootstrap); ΔFID = setting − baseline, negative when the setting is better. A "
    "verdict is Holm-corrected over the comparisons of its table; a claim stands only where both "
    "feature networks (rulers) agree, and a tie means the data cannot tell the two apart.",
    "<b>Figures</b>: a shaded band around a line is its 95% interval; the grey band along the bottom "
    "is what two real sample sets of these sizes score (real-vs-real FID), about what a perfect "
    "generator would get here.",
    "<b>Best setting</b>: where a cell holds several settings the table shows the best, chosen on "
    "held-out images where the records have them (the cell says which images chose it).",
)


def _reading() -> str:
    return "<ul class='reading'>" + "".join(f"<li>{item}</li>" for item in READING) + "</ul>"


def _headline(c: ReportContent) -> str:
    return "".join(f'<p class="headline"><b>{esc(s)}</b></p>' for s in c.headline)


def _toc(sections: list[tuple[str, str, str]], tables: list[TableResult]) -> str:
    toc_items = []
    for sid, stitle, _ in sections:
        sub = ""
        if sid == "tables" and tables:
            named = dict((t.name, t) for t in tables).values()
            sub = "<ul>" + "".join(f'<li><a href="#t-{esc(t.name)}">{esc(t.title)}</a></li>' for t in named) + "</ul>"
        toc_items.append(f'<li><a href="#{sid}">{esc(stitle)}</a>{sub}</li>')
    return f'<nav class="toc"><b>Contents</b><ul>{"".join(toc_items)}</ul></nav>'


def render_html(content: ReportContent, title: str = "fpdm-bench report") -> str:
    """The page: the headline and the protocol first, then how to read it, then the sections."""
    tags = protocol_tags(content.jobs)
    sections = [
        _section("reading", "How to read this report", _reading()),
        _section("summary", "Summary", _summary(content)),
        _section("tables", "Tables", _tables(content, tags)),
        *(_section(sid, title, body) for sid, title, body in content.extra_sections),
        _section("figures", "Figures", _figures(content, tags)),
    ]
    if content.grids:
        sections.append(_section("samples", "Sample grids", _grids(content)))
    sections += [
        _section("runs", "All runs", _runs(content)),
        _section("problems", "Failed and missing runs", _problems(content)),
        _section("provenance", "Provenance", _provenance(content)),
    ]
    top = f"{_headline(content)}{_protocols(content)}"
    body = "\n".join(s[2] for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)}</title><link rel="icon" href="data:,"><style>{_CSS}</style></head>\n'
        f"<body><main><h1>{esc(title)}</h1>\n{top}\n{_toc(sections, content.tables)}\n{body}\n</main></body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# console


def _markdown(frame: pd.DataFrame) -> str:
    disp, _ = display_frame(frame)
    head = "| " + " | ".join(map(str, disp.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in disp.columns) + " |"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in disp.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def summary_markdown(df: pd.DataFrame, max_rows: int = 50) -> str:
    """Compact markdown table of the jobs (varying axes, status, main metrics) for the console."""
    axes = [a for a in setting_axes(df) if varies(df, a)]
    metrics = [
        m
        for m in ("fid", "fid_std", "block_passes_per_image", "params_total", "time_per_image_s")
        if m in df and df[m].notna().any()
    ]
    cols = ["job_id", "status", *axes, *metrics]
    frame = df[cols].head(max_rows)
    more = f"\n... and {len(df) - max_rows} more jobs" if len(df) > max_rows else ""
    return _markdown(frame) + more


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """A single run's metrics as a small two-column markdown table (sorted by name)."""
    items = sorted((str(k), v) for k, v in metrics.items())
    return _markdown(
        pd.DataFrame(
            {"metric": [k for k, _ in items], "value": [v if isinstance(v, (int, float)) else str(v) for _, v in items]}
        )
    )
