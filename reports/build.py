"""``python -m reports.build DIR [DIR ...] [--out OUTDIR]``: records -> tables/*.csv (each paper table
also as .md and .tex), figures/*.png (also .svg and .pdf), report.html (docs/design.md "multirun end"; the Hydra app runs the same builder in its multirun
callback, ``ReportCallback``).

Reproducible by construction: rows sorted by job id, fixed float format in CSVs, PNGs without
metadata, no build time in the HTML, and only paths relative to each sweep directory, so building
twice gives identical bytes and a moved sweep directory still builds. Every write is atomic.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from harness.runtime.io import atomic_write
from reports.collect import SweepData, load_sweeps, setting_axes
from reports.export import latex_table, markdown_table
from reports.figures import build_figures
from reports.render import Grid, ReportContent, render_html, summary_markdown
from reports.tables import build_tables, protocol_groups, sort_frame, value_label, varies

log = logging.getLogger(__name__)
FLOAT_FORMAT = "%.6g"
MAX_GRIDS = 64
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


def _table_csvs(tables) -> dict[str, pd.DataFrame]:
    """One CSV per table; a table built for several protocols gets a leading ``protocol`` column."""
    by_name: dict[str, list] = {}
    for t in tables:
        by_name.setdefault(t.name, []).append(t)
    out = {}
    for name, ts in by_name.items():
        if len(ts) == 1:
            out[name] = ts[0].frame
        else:
            out[name] = pd.concat(
                [t.frame.assign(protocol=t.protocol.get("label") or "")[["protocol", *t.frame.columns]] for t in ts],
                ignore_index=True,
            )
    return out


def _caption(tables, name: str) -> str:
    """Title, the paper's table it mirrors and, when all its rows share one, the FID protocol."""
    ts = [t for t in tables if t.name == name]
    labels = {t.protocol.get("label") for t in ts} - {None}
    paper = f" (paper: {ts[0].paper})" if ts[0].paper else ""
    return f"{ts[0].title}{paper}" + (f". {labels.pop()}." if len(labels) == 1 else ".")


def sample_grids(data: SweepData, limit: int = MAX_GRIDS) -> list[Grid]:
    """One sample grid per setting: the grid PNG of the setting's first ok job (by job id)."""
    jobs = data.jobs
    if "grid_path" not in jobs:
        return []
    axes = setting_axes(jobs)
    shown = [a for a in axes if varies(jobs[jobs["status"] == "ok"], a)]
    ok = sort_frame(jobs[(jobs["status"] == "ok") & jobs["grid_path"].notna()], [*shown, "job_id"])
    grids, seen = [], set()
    for _, r in ok.iterrows():
        key = tuple(str(r[a]) for a in axes)
        if key in seen:
            continue
        root = data.roots[r["sweep"]].resolve()
        path = (root / r["grid_path"]).resolve()
        # Only files inside the sweep directory, and only real PNGs, are embedded.
        if not path.is_relative_to(root) or not path.is_file():
            continue
        png = path.read_bytes()
        if not png.startswith(_PNG_MAGIC):
            continue
        seen.add(key)
        desc = ", ".join(f"{a}={value_label(r[a])}" for a in shown if r[a] is not None and r[a] is not pd.NA)
        grids.append(Grid(str(r["job_id"]), desc or "single setting", png))
        if len(grids) >= limit:
            break
    return grids


def build_report(
    dirs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    title: str = "fpdm-bench report",
    figures: bool = True,
) -> Path:
    """Build tables/, figures/ and report.html under ``out_dir`` (default: the first dir); -> HTML path.

    ``figures=False`` skips the seaborn figures (tables and HTML only, much faster)."""
    return _build([Path(d) for d in dirs], out_dir, title, figures)[0]


def _build(dirs: list[Path], out_dir, title: str, with_figures: bool) -> tuple[Path, SweepData]:
    data = load_sweeps(dirs)
    out = Path(out_dir) if out_dir is not None else dirs[0]
    jobs = data.jobs
    from reports.merge import merge_same_artifact

    ok = jobs[jobs["status"] == "ok"].copy()
    ok.attrs = dict(jobs.attrs)
    ok = merge_same_artifact(ok)
    tables = build_tables(jobs)
    figures = build_figures(data, protocol_groups(ok)) if with_figures else []
    grids = sample_grids(data)
    from reports.conclusions import build_significance, csv_frames, headline, section_html

    significance = build_significance(data)  # paired bootstrap from the features beside the records

    atomic_write(out / "tables" / "jobs.csv", csv_text(jobs))
    if not data.traces.empty:
        atomic_write(out / "tables" / "solver_traces.csv", csv_text(data.traces))
    for name, frame in _table_csvs(tables).items():
        atomic_write(out / "tables" / f"{name}.csv", csv_text(frame))
        atomic_write(out / "tables" / f"{name}.md", markdown_table(frame))
        atomic_write(out / "tables" / f"{name}.tex", latex_table(frame, _caption(tables, name), f"tab:{name}"))
    for name, frame in csv_frames(significance).items():
        atomic_write(out / "tables" / f"{name}.csv", csv_text(frame))
    for sweep, study in sorted(data.studies.items()):
        atomic_write(
            out / "tables" / f"optuna_trials__{Path(sweep).name.replace('#', '_')}.csv", csv_text(study["trials"])
        )
    for f in figures:
        atomic_write(out / "figures" / f.filename, f.png)
        for fmt, blob in sorted(f.vector.items()):
            atomic_write(out / "figures" / f"{f.stem}.{fmt}", blob)
    notes = []
    if len(grids) >= MAX_GRIDS:
        notes.append(f"Sample grids: showing the first {MAX_GRIDS} settings.")
    content = ReportContent(
        jobs=jobs,
        tables=tables,
        figures=figures,
        grids=grids,
        tracebacks=data.tracebacks,
        sweeps=list(data.roots),
        notes=notes,
        extra_sections=[("significance", "Differences you can believe", section_html(significance))],
        headline=headline(significance, ok),  # the first sentence, computed from the comparison below it
    )
    html_path = out / "report.html"
    atomic_write(html_path, render_html(content, title=title))
    return html_path, data


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="sweep directories (records are found anywhere below them)")
    ap.add_argument("--out", default=None, help="output directory (default: the first sweep directory)")
    ap.add_argument("--title", default="fpdm-bench report")
    ap.add_argument("--no-figures", action="store_true", help="tables and HTML only (fast)")
    ap.add_argument("--quiet", action="store_true", help="do not print the job summary")
    args = ap.parse_args(argv)
    try:
        path, data = _build([Path(d) for d in args.dirs], args.out, args.title, not args.no_figures)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(summary_markdown(data.jobs))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
