"""Seaborn figures for the report (paper Fig. 4, 6, 7 analogues plus compute and Optuna views).

Registry: ``register_figure(name, required, ...)`` adds ``fn(data, rows) -> Figure | None``.
``rows`` are the ok jobs of one FID protocol for figures that plot FID (never two protocols on
one axis), else all ok jobs. Figures are drawn on ``matplotlib.figure.Figure`` objects with the
Agg canvas (no pyplot, no global backend) and saved with fixed dpi and no PNG metadata, so two
builds from the same records give byte-identical PNGs; the SVG and PDF copies (for papers) are
saved without dates or tool versions and with a fixed SVG id salt, so they are byte-identical too. Record strings reach matplotlib only through
``mtext`` (``$`` escaped), so a value such as ``$\\frac$`` is shown literally and never parsed as math
text (which could fail to render); log-axis tick labels still use math text.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from baselines.registry import Registry
from reports.accounting import accounting_note, budget_axis_label, budget_title, single_match
from reports.collect import SweepData, setting_axes
from reports.searched import schedule_label
from reports.tables import (
    TIME_METRICS,
    TRAIN_MEMORY_TOTALS,
    aggregate_seeds,
    best_per_cell,
    context,
    present,
    row_keys,
    sort_frame,
    value_label,
    varies,
)

DPI = 100
_RC = {
    "font.family": "DejaVu Sans",
    "svg.hashsalt": "fpdm-bench",
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
}
MIB = 2.0**20


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    caption: str
    required: tuple[str, ...]  # job columns that must hold values
    fn: Callable[[SweepData, pd.DataFrame], Figure | None]
    per_protocol: bool = True  # plots FID: drawn once per protocol label
    by_budget: bool = False  # keyed by budget: the caption names the accounting (reports.accounting)


@dataclass
class FigureResult:
    name: str
    title: str
    caption: str
    filename: str
    png: bytes
    protocol: str | None = None
    vector: dict[str, bytes] = field(default_factory=dict)  # "svg" / "pdf" -> bytes

    @property
    def stem(self) -> str:
        return self.filename.rsplit(".", 1)[0]


FIGURES: Registry[FigureSpec] = Registry("figure", sort=False)  # report order


def register_figure(
    name: str,
    required: tuple[str, ...] | list[str] = (),
    *,
    title: str,
    caption: str = "",
    per_protocol: bool = True,
    by_budget: bool = False,
) -> Callable[[Callable], Callable]:
    def deco(fn):
        FIGURES.register(name, FigureSpec(name, title, caption, tuple(required), fn, per_protocol, by_budget))
        return fn

    return deco


get_figure, list_figures = FIGURES.get, FIGURES.list


def new_figure(ncols: int = 1, width: float = 5.2, height: float = 3.6) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0].tolist()
    return fig, axes


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # metadata None drops the Software tag: nothing in the file depends on the build environment.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


# metadata None drops the key: no creation date, no matplotlib version in the file
VECTOR_METADATA = {
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "Creator": None, "Producer": None},
}


def vector_bytes(fig: Figure) -> dict[str, bytes]:
    """The figure as SVG and PDF (the rc context of ``build_figures`` fixes ``svg.hashsalt``)."""
    out = {}
    for fmt, metadata in VECTOR_METADATA.items():
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=metadata)
        out[fmt] = buf.getvalue()
    return out


def fid_axis_label(rows: pd.DataFrame) -> str:
    """A short FID axis label, "FID (digits-cnn, 1k)": the feature network and the images per FID
    of the records' protocol (the full protocol is stated once at the top of the report; a long
    label was clipped off the figure); plain "FID" when the rows do not share one."""
    ext, n = (_single(rows, f"protocol_{k}") for k in ("extractor", "num_samples"))
    if ext is None:
        return "FID"
    return mtext(f"FID ({ext}, {_count(n)})" if n is not None else f"FID ({ext})")


def _single(rows: pd.DataFrame, col: str) -> Any:
    vals = rows[col].dropna().unique() if col in rows else []
    return vals[0] if len(vals) == 1 else None


def _count(n: Any) -> str:
    """1000 -> '1k', 50000 -> '50k', 1500 -> '1.5k', 64 -> '64'."""
    n = int(n)
    return f"{n / 1000:g}k" if n >= 1000 and n % 100 == 0 else str(n)


CI_COLUMNS = ("fid_ci_low", "fid_ci_high")  # the 95% bootstrap interval each record carries


def draw_intervals(
    ax: Any, pts: pd.DataFrame, x: str, hue: str | None, palette: dict | None, style: str | None = None
) -> bool:
    """Shade each line's (hue x style) 95% bootstrap interval over images (the records'
    ``fid_ci_low`` / ``fid_ci_high``, mean over seeds per x), in the line's colour; each band is an
    SVG group ``fid-interval-<i>``. -> whether any band was drawn."""
    if not all(present(pts, c) for c in CI_COLUMNS):
        return False
    pts = _numeric(pts, x, *CI_COLUMNS)
    keys = [k for k in (hue, style) if k]
    lines = list(pts.groupby(keys, sort=True)) if keys else [((None,), pts)]
    for i, (name, part) in enumerate(lines):
        band = part.groupby(x, sort=True)[list(CI_COLUMNS)].mean()
        color = palette.get(name[0], "C0") if palette and hue else "C0"
        label = "95% interval over images" if i == 0 else "_nolegend_"
        poly = ax.fill_between(band.index, band[CI_COLUMNS[0]], band[CI_COLUMNS[1]], color=color, alpha=0.2, lw=0)
        poly.set_label(label)
        poly.set_gid(f"fid-interval-{i}")
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.legend(handles, labels, fontsize=8)
    return bool(lines)


def _palette(values: list) -> dict:
    return dict(zip(values, sns.color_palette(n_colors=len(values))))


def best_setting_rows(rows: pd.DataFrame, cell: list[str], metric: str = "fid") -> pd.DataFrame:
    """The seed-level rows of the best setting per cell (so seaborn can draw mean +/- std)."""
    best = best_per_cell(rows, cell, metric)
    if best.empty:
        return rows.iloc[0:0]
    keys = setting_axes(rows)
    return rows[row_keys(rows, keys).isin(set(row_keys(best, keys)))]


def mtext(v: Any) -> str:
    """Record text for matplotlib: ``$`` escaped so math text never parses it."""
    return str(v).replace("$", r"\$")


def _hue(rows: pd.DataFrame, prefs: tuple[str, ...]) -> str | None:
    return next((h for h in prefs if varies(rows, h)), None)


def _labelled(rows: pd.DataFrame, cols: list[str | None]) -> pd.DataFrame:
    """Axis values as text for hue/style (bools read on/off); numeric x/y columns as floats."""
    out = rows.copy()
    for c in cols:
        if c:
            out[c] = out[c].map(
                lambda v: "n/a" if v is None or (not isinstance(v, str) and pd.isna(v)) else mtext(value_label(v))
            )
    return out


def _numeric(rows: pd.DataFrame, *cols: str) -> pd.DataFrame:
    out = rows.copy()
    for c in cols:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    return out.dropna(subset=list(cols))


# ---------------------------------------------------------------------------------------------
# FID figures


@register_figure(
    "fid_vs_budget",
    ("model", "budget_blocks", "fid"),
    title="FID vs budget",
    caption="Best setting per model and budget (paper Table 1); line = mean over seeds; shaded band = 95% "
    "bootstrap interval over images where the records carry one (bars: +/- 1 std over seeds), else +/- 1 std "
    "over seeds.",
    by_budget=True,
)
def fid_vs_budget(data: SweepData, rows: pd.DataFrame) -> Figure | None:
    panels = context(rows, ("model", "budget_blocks", "sampler"))
    style = "sampler" if varies(rows, "sampler") else None
    pts = best_setting_rows(rows, [*panels, "model", "budget_blocks", *([style] if style else [])])
    pts = _labelled(_numeric(pts, "budget_blocks", "fid"), ["model", style, *panels])
    groups = [("", pts)] if not panels else list(pts.groupby(panels[0], sort=True))
    fig, axes = new_figure(len(groups))
    palette = _palette(sorted(pts["model"].unique()))
    banded = all(present(pts, c) for c in CI_COLUMNS)
    for ax, (name, part) in zip(axes, groups):
        sns.lineplot(
            data=part,
            x="budget_blocks",
            y="fid",
            hue="model",
            style=style,
            errorbar="sd",
            err_style="bars" if banded else "band",  # the band is the interval; seeds' std as bars
            marker="o",
            ax=ax,
            hue_order=list(palette),
            palette=palette,
        )
        draw_intervals(ax, part, "budget_blocks", "model", palette, style)
        ax.set(
            xlabel=budget_axis_label(rows),
            ylabel=fid_axis_label(rows),
            title=mtext(f"{panels[0]}={name}") if panels else "",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


@register_figure(
    "fid_vs_iters",
    ("iters_per_step", "fid"),
    title="FID vs iterations per step at a fixed budget",
    caption="One panel per budget; more iterations per step means fewer sampling steps (paper Fig. 4, "
    "smoothing). Shaded: 95% bootstrap intervals over images where the records carry them.",
    by_budget=True,
)
def fid_vs_iters(data: SweepData, rows: pd.DataFrame) -> Figure | None:
    rows = rows[rows["iters_per_step"].notna()]
    if not varies(rows, "iters_per_step"):
        return None
    budget = "budget_blocks" if present(rows, "budget_blocks") else None
    hue = _hue(rows, ("reuse", "schedule", "model", "solver"))
    cell = [*([budget] if budget else []), "iters_per_step", *([hue] if hue else [])]
    pts = _labelled(_numeric(best_setting_rows(rows, cell), "iters_per_step", "fid"), [hue])
    if budget:
        # Budgets with the most distinct iteration counts first; at most four panels.
        counts = pts.groupby(budget)["iters_per_step"].nunique()
        keep = sorted(counts[counts >= 2].sort_values(ascending=False, kind="mergesort").index[:4])
        groups = [(b, pts[pts[budget] == b]) for b in keep]
    else:
        groups = [(None, pts)]
    if not groups:
        return None
    fig, axes = new_figure(len(groups))
    palette = _palette(sorted(pts[hue].unique())) if hue else None
    banded = all(present(pts, c) for c in CI_COLUMNS)
    for ax, (b, part) in zip(axes, groups):
        sns.lineplot(
            data=part,
            x="iters_per_step",
            y="fid",
            hue=hue,
            errorbar="sd",
            err_style="bars" if banded else "band",
            marker="o",
            ax=ax,
            hue_order=list(palette) if palette else None,
            palette=palette,
        )
        draw_intervals(ax, part, "iters_per_step", hue, palette)
        ax.set(
            xlabel="iterations per step",
            ylabel=fid_axis_label(rows),
            title=budget_title(b, single_match(rows)) if b is not None else "",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Non-dominated points when both ``x`` (cost) and ``y`` (FID) are minimised, sorted by ``x``."""
    pts = sort_frame(points.dropna(subset=[x, y]), [x, y])
    keep, best = [], np.inf
    for i, v in zip(pts.index, pts[y]):
        if v < best:
            keep.append(i)
            best = v
    return pts.loc[keep]


@register_figure(
    "pareto",
    ("fid",),
    title="Pareto frontier: FID vs FLOPs and vs wall time",
    caption="Each point is one setting (mean over seeds); the line joins the settings no other "
    "setting beats on both cost and FID.",
)
def pareto(data: SweepData, rows: pd.DataFrame) -> Figure | None:
    time_col = next((c for c in TIME_METRICS if present(rows, c)), None)
    xs = [
        (c, lab)
        for c, lab in (("flops_per_image", "FLOPs per image"), (time_col, "wall time per image (s)"))
        if c and present(rows, c)
    ]
    if not xs:
        return None
    settings = aggregate_seeds(rows)
    hue = "model" if present(settings, "model") else None
    settings = _labelled(settings, [hue])
    fig, axes = new_figure(len(xs))
    for ax, (col, lab) in zip(axes, xs):
        pts = _numeric(settings, col, "fid")
        sns.scatterplot(data=pts, x=col, y="fid", hue=hue, ax=ax, hue_order=sorted(pts[hue].unique()) if hue else None)
        front = pareto_front(pts, col, "fid")
        ax.plot(front[col], front["fid"], color="0.2", lw=1.2, ls="--", label="Pareto frontier", drawstyle="steps-post")
        span = pts[col].max() / pts[col].min() if len(pts) and pts[col].min() > 0 else 1.0
        # Log only when costs span decades; inside one decade log ticks just crowd the axis.
        ax.set(xlabel=lab, ylabel=fid_axis_label(rows), xscale="log" if span > 20 else "linear")
        ax.legend(fontsize=8, title=hue)
    return fig


# ---------------------------------------------------------------------------------------------
# figures that do not plot FID


@register_figure(
    "residual_per_timestep",
    (),
    title="Fixed point residual per timestep, with and without reuse",
    caption="Final relative residual of each sampling step's solve (paper Fig. 6b/c: delta_t); "
    "line = mean over jobs, band = +/- 1 std.",
    per_protocol=False,
)
def residual_per_timestep(data: SweepData, rows: pd.DataFrame) -> Figure | None:
    tr = data.traces[data.traces["job_id"].isin(set(rows["job_id"]))]
    if tr.empty:
        return None
    hue = _hue(rows, ("reuse", "solver", "schedule"))
    style = _hue(rows, tuple(h for h in ("solver", "iters_per_step") if h != hue))
    cols = ["job_id", *[c for c in (hue, style) if c]]
    tr = _labelled(tr.merge(rows[cols], on="job_id", how="left"), [hue, style])
    x = "timestep" if tr["timestep"].notna().all() else "step"
    tr = _numeric(tr, x, "residual")
    tr = tr[tr["residual"] > 0]
    if tr.empty:
        return None
    fig, (ax,) = new_figure(1, width=6.4)
    sns.lineplot(
        data=tr,
        x=x,
        y="residual",
        hue=hue,
        style=style,
        errorbar="sd",
        ax=ax,
        hue_order=sorted(tr[hue].unique()) if hue else None,
    )
    ax.set(
        yscale="log",
        xlabel="timestep (sampling runs right to left)" if x == "timestep" else "sampling step",
        ylabel="relative residual",
    )
    if x == "timestep":
        ax.invert_xaxis()
    return fig


@register_figure(
    "schedule_shapes",
    ("schedule",),
    title="Schedule shapes: iterations per step vs timestep",
    caption="Mean fixed point evaluations per image at each sampling step, as spent (adaptive: "
    "the per-sample tolerance; greedy: the water-filling plan; density: a searched member, named "
    "with the study trial it came from and that trial's objective). "
    "One panel per budget.",
    per_protocol=False,
    by_budget=True,
)
def schedule_shapes(data: SweepData, rows: pd.DataFrame) -> Figure | None:
    rows = rows[rows["schedule"].notna()] if "schedule" in rows else rows.iloc[:0]
    tr = data.traces[data.traces["job_id"].isin(set(rows["job_id"]))]
    if tr.empty or rows["schedule"].nunique() < 2:
        return None
    # the density member is named with the study trial it came from (reports.searched)
    rows = rows.assign(schedule=schedule_label(rows))
    tr = _numeric(tr.merge(rows[["job_id", "schedule", "budget_blocks"]], on="job_id", how="left"), "iters")
    x = "timestep" if tr["timestep"].notna().all() else "step"
    budgets = sorted(tr["budget_blocks"].dropna().unique())
    fig, axes = new_figure(max(len(budgets), 1), width=5.2 * max(len(budgets), 1))
    order = sorted(tr["schedule"].dropna().unique())  # the same colour per schedule in every panel
    for ax, budget in zip(axes, budgets):
        sub = tr[tr["budget_blocks"] == budget]
        sns.lineplot(
            data=sub,
            x=x,
            y="iters",
            hue="schedule",
            errorbar=None,
            marker="o",
            ax=ax,
            hue_order=order,
        )
        ax.set(
            title=mtext(budget_title(budget, single_match(rows))),
            ylabel="iterations per step",
            xlabel="timestep (sampling runs right to left)" if x == "timestep" else "sampling step",
        )
        if x == "timestep":
            ax.invert_xaxis()
    # one legend, beside the last panel: inside, it covered the lines of eight schedules
    for ax in axes[:-1]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig


@register_figure(
    "memory_breakdown",
    (),
    title="Training memory breakdown",
    caption="Mean over jobs of each train_mem_*_bytes component, per model.",
    per_protocol=False,
)
def memory_breakdown(data: SweepData, rows: pd.DataFrame) -> Figure | None:
    comps = [
        m
        for m in data.metrics
        if m.startswith("train_mem_") and m.endswith("_bytes") and m not in TRAIN_MEMORY_TOTALS and present(rows, m)
    ]
    if not comps or not present(rows, "model"):
        return None
    by = ["model", *(["preset"] if varies(rows, "preset") else [])]
    work = _labelled(rows, by)
    work["who"] = work[by].agg(" ".join, axis=1)
    mib = work.groupby("who", sort=True)[comps].mean(numeric_only=False).apply(pd.to_numeric) / MIB
    long = mib.reset_index().melt(id_vars="who", var_name="component", value_name="MiB")
    long["component"] = long["component"].str.removeprefix("train_mem_").str.removesuffix("_bytes")
    fig, (ax,) = new_figure(1, width=6.4, height=0.9 + 0.5 * len(mib))
    left = np.zeros(len(mib))
    palette = sns.color_palette("deep", len(comps))
    for color, (comp, part) in zip(palette, long.groupby("component", sort=False)):
        vals = part["MiB"].fillna(0).to_numpy()
        ax.barh(part["who"], vals, left=left, color=color, label=comp)
        left += vals
    ax.set(xlabel="MiB", ylabel="")
    ax.legend(fontsize=8, loc="lower right")
    return fig


@register_figure(
    "training_curves",
    ("model",),
    title="Training loss",
    caption=(
        "Training loss (global-batch mean of the logged step, every train.log_every steps) of each "
        "distinct training the report compares, read from its train_log.jsonl; right: against the "
        "training compute spent, in forward-equivalents per image (forward 1, backward 2, recompute 1)."
    ),
    per_protocol=False,
)
def training_curves(data: SweepData, rows: pd.DataFrame) -> Figure | None:
    from reports.train_logs import training_curves as curves

    long = curves(data, rows)
    if long.empty:
        return None
    xs = [("step", "training step")]
    if "compute_fwd_equiv" in long and long["compute_fwd_equiv"].notna().any():
        xs.append(("compute_fwd_equiv", "training compute (forward-equivalents per image)"))
    long = long.assign(training=long["training"].map(mtext))
    fig, axes = new_figure(len(xs))
    for ax, (x, label) in zip(axes, xs):
        pts = _numeric(long, x, "loss")
        sns.lineplot(data=pts, x=x, y="loss", hue="training", estimator=None, sort=True, ax=ax, linewidth=1.2)
        if (pts["loss"] > 0).all():
            ax.set_yscale("log")
        ax.set(xlabel=label, ylabel="training loss")
        if ax.get_legend() is not None and ax is not axes[-1]:
            ax.get_legend().remove()
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
    return fig


def _study_values(trials: pd.DataFrame) -> list[str]:
    return [c for c in trials.columns if c == "value" or c.startswith("values_")]


def _directions(study: dict, n: int) -> list[str]:
    d = study.get("directions") or ([study["direction"]] if study.get("direction") else [])
    d = [str(x).lower().split(".")[-1] for x in d]
    return (d + ["minimize"] * n)[:n]


def _complete(trials: pd.DataFrame) -> pd.DataFrame:
    if "state" not in trials:
        return trials
    return trials[trials["state"].astype(str).str.upper().str.endswith("COMPLETE")]


def optuna_history(study: dict[str, Any]) -> Figure | None:
    trials, meta = _complete(study["trials"]), study.get("study", {})
    vals = _study_values(trials)
    if trials.empty or not vals or "number" not in trials:
        return None
    names = meta.get("metric_names") or vals
    fig, axes = new_figure(len(vals))
    for ax, col, name, direction in zip(axes, vals, names, _directions(meta, len(vals))):
        pts = _numeric(trials, "number", col)
        sns.scatterplot(data=pts, x="number", y=col, ax=ax, label="trial", color="C0")
        if len(vals) == 1:  # best-so-far is only defined for one objective
            best = pts[col].cummin() if direction.startswith("min") else pts[col].cummax()
            ax.plot(pts["number"], best, color="C3", drawstyle="steps-post", label="best so far")
        ax.set(xlabel="trial", ylabel=mtext(name), title=mtext(direction))
        ax.legend(fontsize=8)
    return fig


def optuna_importances(study: dict[str, Any]) -> Figure | None:
    """fANOVA importances (Optuna's evaluator, fixed seed) for the first objective."""
    import optuna

    trials, meta = _complete(study["trials"]), study.get("study", {})
    vals = _study_values(trials)
    params = [c for c in trials.columns if c.startswith("params_") and trials[c].nunique(dropna=True) >= 2]
    if len(trials) < 3 or not vals or not params:
        return None
    dists: dict[str, Any] = {}
    for c in params:
        s = trials[c].dropna()
        if pd.api.types.is_integer_dtype(s) and not pd.api.types.is_bool_dtype(s):
            dists[c] = optuna.distributions.IntDistribution(int(s.min()), int(s.max()))
        elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            dists[c] = optuna.distributions.FloatDistribution(float(s.min()), float(s.max()))
        else:
            dists[c] = optuna.distributions.CategoricalDistribution(sorted(s.astype(str).unique()))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        st = optuna.create_study(directions=_directions(meta, len(vals)))
        for _, r in trials.iterrows():
            if r[params].isna().any() or pd.isna(r[vals[0]]):
                continue
            p = {
                c[len("params_") :]: (
                    str(r[c])
                    if isinstance(dists[c], optuna.distributions.CategoricalDistribution)
                    else dists[c].to_external_repr(r[c])
                )
                for c in params
            }
            d = {c[len("params_") :]: dists[c] for c in params}
            st.add_trial(optuna.trial.create_trial(params=p, distributions=d, values=[float(r[v]) for v in vals]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                st, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=lambda t: t.values[0]
            )
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not imp:
        return None
    frame = pd.DataFrame({"parameter": [mtext(p) for p in imp], "importance": list(imp.values())})
    fig, (ax,) = new_figure(1, width=6.0, height=0.9 + 0.35 * len(frame))
    sns.barplot(data=frame, y="parameter", x="importance", ax=ax, color="C0")
    ax.set(xlabel="fANOVA importance (objective 1)", ylabel="")
    return fig


# ---------------------------------------------------------------------------------------------
# running the registry


def _slug(text: str) -> str:
    import hashlib
    import re

    s = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "x"
    return f"{s}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def build_figures(data: SweepData, protocols: list[tuple[dict, pd.DataFrame]]) -> list[FigureResult]:
    """Draw every applicable registered figure (per protocol where it plots FID) and the Optuna views."""
    ok = data.jobs[data.jobs["status"] == "ok"].copy()
    ok.attrs = dict(data.jobs.attrs)
    out: list[FigureResult] = []
    several = len(protocols) > 1
    with matplotlib.rc_context(_RC), sns.axes_style("whitegrid"), sns.plotting_context("notebook", 0.85):
        matplotlib.rcParams.update(_RC)  # axes_style may reset fonts; ours win
        for spec in FIGURES.values():
            groups = protocols if spec.per_protocol else [({"label": None}, ok)]
            for info, rows in groups:
                if rows.empty or not all(present(rows, c) for c in spec.required):
                    continue
                fig = spec.fn(data, rows)
                if fig is None:
                    continue
                if spec.per_protocol:
                    from reports.noise_band import draw_noise_floor

                    draw_noise_floor(fig, rows)  # real-vs-real band on every FID axis
                label = info.get("label") if spec.per_protocol else None
                fname = (
                    f"{spec.name}__{_slug(label or 'unlabelled')}.png"
                    if several and spec.per_protocol
                    else f"{spec.name}.png"
                )
                note = accounting_note(rows) if spec.by_budget else None
                caption = f"{spec.caption} {note}" if note else spec.caption
                out.append(
                    FigureResult(spec.name, spec.title, caption, fname, png_bytes(fig), label, vector_bytes(fig))
                )
        for sweep in sorted(data.studies):
            study = data.studies[sweep]
            for name, title, fn in (
                ("optuna_history", "Optuna optimisation history", optuna_history),
                ("optuna_importance", "Optuna parameter importances", optuna_importances),
            ):
                fig = fn(study)
                if fig is not None:
                    out.append(
                        FigureResult(
                            name,
                            f"{title} ({sweep})",
                            "",
                            f"{name}__{_slug(sweep)}.png",
                            png_bytes(fig),
                            vector=vector_bytes(fig),
                        )
                    )
    return out
