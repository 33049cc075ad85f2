"""Tables that mirror the paper (Bai & Melas-Kyriazi, CVPR 2024), built from the tidy job frame.

Registry: ``register_table(name, required_axes, ...)`` adds a pure function ``DataFrame ->
DataFrame``; ``build_tables(df)`` runs each one whose axes the records hold, once per FID
protocol (``protocol_label``), so FIDs of different protocols are never mixed in one table.

Conventions shared by every table:
- repetitions (the seed axes) are averaged: a value column ``X`` comes with ``X std`` (sample std
  over seeds; empty with one seed) and the render step shows them as ``mean +/- std``;
- a table cell may hold several settings (e.g. FPDM at 280 blocks with 4, 8 or 12 iterations per
  step); like the paper's "our best model" the cell reports the best (lowest FID) setting and the
  ``setting`` column names it;
- the context axes (accounting, data, model, budget, sampler) become extra row keys whenever they
  vary, so a table never averages over them silently;
- ``budget_blocks`` is the budget asked for (``sample.budget``, reports.collect), the quantity FPDM
  and DiT are matched on; a table keyed by it says which accounting ran (``sample.match``,
  reports.accounting) and the budget table shows the block passes and FLOPs each side spent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from baselines.registry import Registry
from reports.collect import setting_axes

CONTEXT_AXES = ("match", "data", "model", "budget_blocks", "sampler")  # match: the budget accounting
NFE_METRICS = ("solver_nfe_per_image", "solver_nfe", "nfe_per_image", "nfe", "trace_nfe")
RESIDUAL_METRICS = ("solver_final_residual", "final_residual", "solver_residual", "trace_residual_mean")
TIME_METRICS = ("time_per_image_s", "sample_time_per_image_s")
TRAIN_MEMORY_TOTALS = ("train_mem_peak_bytes", "train_mem_total_bytes")
MIB = 2.0**20
SPENT_COSTS = (("block_passes_per_image", "Block passes / image", 1.0), ("flops_per_image", "GFLOPs / image", 1e9))


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    paper: str  # which paper table / figure it mirrors
    required_axes: tuple[str, ...]
    vary: tuple[str, ...]  # at least one of these takes two or more values (empty: no condition)
    fn: Callable[[pd.DataFrame], pd.DataFrame]
    metric: str = "fid"
    per_protocol: bool = True  # reports FID: built once per protocol; else once over all ok jobs


@dataclass
class TableResult:
    name: str
    title: str
    paper: str
    protocol: dict[str, Any]
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


TABLES: Registry[TableSpec] = Registry("table", sort=False)  # report order


def register_table(
    name: str,
    required_axes: tuple[str, ...] | list[str],
    *,
    title: str,
    paper: str = "",
    vary: tuple[str, ...] | list[str] = (),
    metric: str = "fid",
    per_protocol: bool = True,
) -> Callable[[Callable[[pd.DataFrame], pd.DataFrame]], Callable[[pd.DataFrame], pd.DataFrame]]:
    """Decorator: register ``fn(ok_rows_of_one_protocol) -> table`` under ``name`` (with
    ``per_protocol=False``: ``fn(all_ok_rows)``, for tables without FID)."""

    def deco(fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[pd.DataFrame], pd.DataFrame]:
        TABLES.register(
            name, TableSpec(name, title, paper, tuple(required_axes), tuple(vary), fn, metric, per_protocol)
        )
        return fn

    return deco


get_table, list_tables = TABLES.get, TABLES.list


# ---------------------------------------------------------------------------------------------
# helpers (pure)


def present(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and bool(df[col].notna().any())


def varies(df: pd.DataFrame, col: str) -> bool:
    return present(df, col) and df[col].dropna().astype(str).nunique() >= 2


def first_present(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if present(df, n)), None)


def _text(v: Any) -> str:
    return (
        "<NA>"
        if v is None or (not isinstance(v, (str, bool)) and pd.isna(v))
        else repr(v)
        if isinstance(v, str)
        else str(v)
    )


def row_keys(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    """One hashable text key per row over ``cols`` (missing values included, types kept apart)."""
    if not cols:
        return pd.Series("", index=df.index, dtype=object)
    return pd.Series(
        ["\x1f".join(_text(v) for v in vals) for vals in df[cols].itertuples(index=False)], index=df.index, dtype=object
    )


def value_label(v: Any) -> str:
    """How an axis value reads in a column header (reuse True -> 'on')."""
    if isinstance(v, (bool, np.bool_)):
        return "on" if v else "off"
    if isinstance(v, (float, np.floating)):  # a derived mean (iterations per step) reads at 4 digits
        return str(int(v)) if float(v).is_integer() else f"{float(v):.4g}"
    return str(v)


def _sort_key(s: pd.Series) -> pd.Series:
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().sum() == s.notna().sum():
        return num
    return s.map(lambda v: "" if v is None or v is pd.NA else str(v))


def sort_frame(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Deterministic sort: numeric columns numerically, others by their text."""
    cols = [c for c in cols if c in df.columns]
    if not cols or df.empty:
        return df.reset_index(drop=True)
    return df.sort_values(cols, key=_sort_key, kind="mergesort", na_position="last").reset_index(drop=True)


def _numeric_metrics(df: pd.DataFrame) -> list[str]:
    ms = [m for m in df.attrs.get("metrics", []) if m in df.columns]
    return [m for m in ms if pd.api.types.is_numeric_dtype(df[m].dtype) and not pd.api.types.is_bool_dtype(df[m])]


def aggregate_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (all non-seed axes): ``m`` = mean, ``m std`` = std, ``n`` = repeats."""
    keys = setting_axes(df)
    metrics = _numeric_metrics(df)
    if df.empty:
        return pd.DataFrame(columns=[*keys, *metrics, *[f"{m} std" for m in metrics], "n"])
    # all metric columns converted at once: one by one, a wide frame fragments into a block per
    # column and every later insert warns (PerformanceWarning) in the user's console
    numeric = df[metrics].apply(pd.to_numeric, errors="coerce").astype("float64")
    work = pd.concat([df[keys], numeric], axis=1)
    if not keys:
        work["_all"] = 0
        keys_g = ["_all"]
    else:
        keys_g = keys
    g = work.groupby(keys_g, dropna=False, sort=False)
    mean = g[metrics].mean()
    std = g[metrics].std(ddof=1).add_suffix(" std")
    out = pd.concat([mean, std, g.size().rename("n")], axis=1).reset_index()
    if not keys:
        out = out.drop(columns=["_all"])
    out.attrs = dict(df.attrs)
    return out


SELECTION_METRIC = "selection_fid"  # FID on the held-out selection images (harness/stages/selection.py)


def best_per_cell(df: pd.DataFrame, cell: list[str], metric: str = "fid") -> pd.DataFrame:
    """Best setting per table cell, with a ``setting`` column naming it and ``chosen_on`` saying
    which images chose it: the held-out selection images (lowest mean ``selection_fid``) where every
    setting has them, else the evaluated images themselves (lowest mean ``metric``), which the
    ``setting`` text then says, since a best-of-several scored on its own images is biased low."""
    settings = aggregate_seeds(df)
    settings = settings[settings[metric].notna()] if metric in settings else settings.iloc[0:0]
    if settings.empty:
        return settings
    others = [a for a in setting_axes(df) if a not in cell and varies(settings, a)]
    settings = settings.assign(_key=row_keys(settings, cell).values)
    held_out = SELECTION_METRIC in settings and settings[SELECTION_METRIC].notna().all()
    # Ties go to the first setting in sorted order so the choice is deterministic.
    settings = sort_frame(settings, [SELECTION_METRIC if held_out else metric, *others])
    best = settings.groupby("_key", sort=False).head(1).copy()
    best["settings"] = best["_key"].map(settings["_key"].value_counts())
    best["chosen_on"] = [
        "" if n < 2 else "held-out images" if held_out else "the evaluated images" for n in best["settings"]
    ]
    best["setting"] = (
        best.apply(lambda r: ", ".join(f"{a}={value_label(r[a])}" for a in others if pd.notna(r[a])), axis=1)
        if others
        else ""
    )
    if others:  # say which images chose it
        best["setting"] = [f"{t} (chosen on {c})" if t and c else t for t, c in zip(best["setting"], best["chosen_on"])]
    best = best.drop(columns=["_key"])
    best.attrs = dict(df.attrs)
    return sort_frame(best, cell)


def context(df: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    return [a for a in CONTEXT_AXES if a not in exclude and varies(df, a)]


def _with_setting(out: pd.DataFrame, best: pd.DataFrame, rows: list[str], col: str | None = None) -> pd.DataFrame:
    """Append the ``best setting`` description when any cell had a choice; with a pivot column the
    description is given per column value (``ddpm: ... | ddim: ...``) unless all agree."""
    if (best["setting"] == "").all():
        return out

    def describe(part: pd.DataFrame) -> str:
        texts = dict.fromkeys(part["setting"])
        if col is None or len(texts) == 1:
            return " | ".join(t for t in texts if t)
        return " | ".join(f"{value_label(v)}: {t}" for v, t in zip(part[col], part["setting"]) if t)

    if not rows:
        out["best setting"] = describe(best)
        return out
    desc = [(k if isinstance(k, tuple) else (k,), describe(p)) for k, p in best.groupby(rows, dropna=False, sort=False)]
    frame = pd.DataFrame([(*k, d) for k, d in desc], columns=[*rows, "best setting"])
    for r in rows:  # merge keys must share dtypes with ``out``
        frame[r] = frame[r].astype(out[r].dtype) if r in out else frame[r]
    return out.merge(frame, on=rows, how="left")


def pivot_metric(best: pd.DataFrame, rows: list[str], col: str, metric: str, label: str) -> pd.DataFrame:
    """Rows x one column per value of ``col``: ``label v`` (mean) and ``label v std``."""
    frames = []
    values = sort_frame(best[[col]].drop_duplicates(), [col])[col].tolist()
    base = sort_frame(best[rows].drop_duplicates(), rows) if rows else pd.DataFrame(index=[0])
    for v in values:
        part = best[row_keys(best, [col]) == _text(v)]
        part = part[rows + [metric, f"{metric} std"]].rename(
            columns={metric: f"{label} {value_label(v)}", f"{metric} std": f"{label} {value_label(v)} std"}
        )
        frames.append(part)
    out = base
    for part in frames:
        out = (
            out.merge(part, on=rows, how="left")
            if rows
            else pd.concat([out.reset_index(drop=True), part.reset_index(drop=True)], axis=1)
        )
    return out.reset_index(drop=True)


def _mean_std(best: pd.DataFrame, src: str, dst: str, scale: float = 1.0) -> pd.DataFrame:
    out = pd.DataFrame({dst: best[src] / scale})
    if f"{src} std" in best:
        out[f"{dst} std"] = best[f"{src} std"] / scale
    return out


def train_memory_column(df: pd.DataFrame) -> str | None:
    """Total training memory: an explicit peak/total metric, else nothing (components are a figure)."""
    return first_present(df, TRAIN_MEMORY_TOTALS)


# ---------------------------------------------------------------------------------------------
# the tables


def _with_fid_interval(out: pd.DataFrame, best: pd.DataFrame, rows: list[str], col: str) -> pd.DataFrame:
    """``FID v lo`` / ``FID v hi`` after each ``FID v``: the 95% bootstrap interval over images that
    each record carries (``fid_ci_low``/``fid_ci_high``, harness.metrics.bootstrap; averaged over
    seeds, whose spread is the ``std`` column). Paired differences are in the significance tables."""
    if not (present(best, "fid_ci_low") and present(best, "fid_ci_high")):
        return out
    for src, end in (("fid_ci_low", "lo"), ("fid_ci_high", "hi")):
        part = pivot_metric(best, rows, col, src, "_")
        part = part[[c for c in part.columns if c in rows or not c.endswith(" std")]]
        names = {c: f"FID {c[2:]} {end}" for c in part.columns if c not in rows}
        out = out.merge(part.rename(columns=names), on=rows, how="left")
    order = list(rows)
    for c in out.columns:
        if c.startswith("FID ") and not c.endswith((" std", " lo", " hi")):
            order += [x for x in (c, f"{c} lo", f"{c} hi", f"{c} std") if x in out.columns]
    return out[order + [c for c in out.columns if c not in order]]


@register_table(
    "table1_budget",
    ("model", "budget_blocks"),
    title="FID by budget (as asked for), model and sampler, with the passes and FLOPs spent",
    paper="Table 1",
)
def table1_budget(df: pd.DataFrame) -> pd.DataFrame:
    rows = [*context(df, ("model", "budget_blocks", "sampler")), "budget_blocks", "model"]
    col = "sampler" if present(df, "sampler") else None
    best = best_per_cell(df, rows + ([col] if col else []))
    out = (
        pivot_metric(best, rows, col, "fid", "FID")
        if col
        else pd.concat(
            [best[rows].reset_index(drop=True), _mean_std(best, "fid", "FID").reset_index(drop=True)], axis=1
        )
    )
    if col:
        out = _with_fid_interval(out, best, rows, col)
    per_row = best.groupby(rows, dropna=False, sort=False)
    extra = pd.DataFrame(index=per_row.size().index)
    for src, dst, scale in SPENT_COSTS:  # what each side spent on the budget (reports.accounting)
        if present(best, src):
            extra[dst] = per_row[src].mean() / scale
    if present(best, "params_total"):
        extra["Params (M)"] = per_row["params_total"].mean() / 1e6
    mem = train_memory_column(best)
    if mem:
        extra["Train memory (MiB)"] = per_row[mem].mean() / MIB
    if len(extra.columns):
        out = out.merge(extra.reset_index(), on=rows, how="left")
    return sort_frame(_with_setting(out, best, rows, col), rows)


QUALITY = (  # (metric, its spread column or None: the std over seeds, shown name)
    ("kid_mean", "kid_std", "KID"),  # kid_std: torch-fidelity's std over KID subsets
    ("precision", None, "Precision"),
    ("recall", None, "Recall"),
)


@register_table(
    "quality",
    ("model",),
    title="Sample quality: FID with its interval, KID, precision and recall",
    paper="Table 1's FID; KID, precision and recall are not in the paper",
)
def quality(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and context cell (its best setting, as in Table 1): the FID with its bootstrap
    interval and the other torch-fidelity metrics the records carry (harness.metrics.fidelity)."""
    if not any(present(df, m) for m, *_ in QUALITY):
        return pd.DataFrame()
    rows = [*context(df, ("model",)), "model"]
    best = best_per_cell(df, rows).reset_index(drop=True)
    out = pd.concat([best[rows], _mean_std(best, "fid", "FID")], axis=1)
    if present(best, "fid_ci_low") and present(best, "fid_ci_high"):
        out.insert(len(rows) + 1, "FID lo", best["fid_ci_low"])
        out.insert(len(rows) + 2, "FID hi", best["fid_ci_high"])
    for src, spread, name in QUALITY:
        if present(best, src):
            out[name] = best[src]
            std = best[spread] if spread and present(best, spread) else best.get(f"{src} std")
            if std is not None:
                out[f"{name} std"] = std
    return sort_frame(_with_setting(out, best, rows), rows)


@register_table("table2_datasets", ("data", "model"), vary=("data",), title="Data sets side by side", paper="Table 2")
def table2_datasets(df: pd.DataFrame) -> pd.DataFrame:
    rows = [*context(df, ("data", "model")), "data"]
    best = best_per_cell(df, rows + ["model"])
    return sort_frame(_with_setting(pivot_metric(best, rows, "model", "fid", "FID"), best, rows, "model"), rows)


@register_table(
    "table34_training",
    ("train_method",),
    vary=("train_method",),
    title="Training methods (S-JFB vs JFB vs multi-step JFB)",
    paper="Tables 3-4",
)
def table34_training(df: pd.DataFrame) -> pd.DataFrame:
    train_axes = [
        a for a in df.attrs.get("axes", []) if a.startswith("train_") and a != "train_method" and varies(df, a)
    ]
    rows = [*context(df), "train_method", *train_axes]
    best = best_per_cell(df, rows)
    parts = [best[rows].reset_index(drop=True), _mean_std(best, "fid", "FID").reset_index(drop=True)]
    for src, dst in (("train_time_s", "Train time (s)"), ("train_images_per_s", "Train images/s")):
        if present(best, src):
            parts.append(_mean_std(best, src, dst).reset_index(drop=True))
    parts.append(best[["n"]].rename(columns={"n": "seeds"}).reset_index(drop=True))
    return sort_frame(_with_setting(pd.concat(parts, axis=1), best, rows), rows)


@register_table(
    "table5_schedule",
    ("schedule", "iters_per_step"),
    vary=("schedule", "iters_per_step"),
    title="Iteration schedule x iterations per step",
    paper="Table 5",
)
def table5_schedule(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["schedule"].notna() & df["iters_per_step"].notna()]
    rows = [*context(df), "schedule"]
    if not _iters_vary_within_a_cell(df, context(df)):
        # one iteration count per budget (a FLOP-matched plan derives it): a column per schedule's
        # FID, the iterations per step beside it, not a pivot whose columns each hold one budget
        best = best_per_cell(df, rows)
        parts = [best[rows].reset_index(drop=True), _mean_std(best, "fid", "FID").reset_index(drop=True)]
        parts.append(
            pd.DataFrame({"Iterations / step (mean)": best["iters_per_step"].map(value_label)}).reset_index(drop=True)
        )
        return sort_frame(_with_setting(pd.concat(parts, axis=1), best, rows), rows)
    best = best_per_cell(df, rows + ["iters_per_step"])
    return sort_frame(
        _with_setting(pivot_metric(best, rows, "iters_per_step", "fid", "FID @ iters"), best, rows, "iters_per_step"),
        rows,
    )


def _iters_vary_within_a_cell(df: pd.DataFrame, cell: list[str]) -> bool:
    """Whether some cell (a budget, say) holds several iteration counts per step (the paper's
    Table 5 columns); under FLOP matching each budget derives exactly one."""
    if not cell:
        return df["iters_per_step"].nunique() > 1
    return bool((df.groupby(cell, dropna=False)["iters_per_step"].nunique() > 1).any())


@register_table(
    "solvers",
    ("solver",),
    title="Fixed point solvers: FID, evaluations, residual, wall time",
    paper="Sec. 3.1, no table there",
)
def solvers(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["solver"].notna()]
    rows = [*context(df), "solver", *(["tol"] if varies(df, "tol") else [])]
    best = best_per_cell(df, rows)
    parts = [best[rows].reset_index(drop=True), _mean_std(best, "fid", "FID").reset_index(drop=True)]
    for names, dst in (
        (NFE_METRICS, "Evaluations / image"),
        (RESIDUAL_METRICS, "Final residual"),
        (TIME_METRICS, "Wall time / image (s)"),
    ):
        src = first_present(best, names)
        if src:
            parts.append(_mean_std(best, src, dst).reset_index(drop=True))
    return sort_frame(_with_setting(pd.concat(parts, axis=1), best, rows), rows)


@register_table(
    "depth",
    ("pre_depth", "post_depth"),
    vary=("pre_depth", "post_depth"),
    title="Explicit pre/post depth",
    paper="Fig. 7",
)
def depth(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["pre_depth"].notna() & df["post_depth"].notna()]
    rows = [*context(df, ("budget_blocks",)), "pre_depth", "post_depth"]
    col = "budget_blocks" if varies(df, "budget_blocks") else None
    if col:
        best = best_per_cell(df, rows + ["budget_blocks"])
        out = pivot_metric(best, rows, "budget_blocks", "fid", "FID @ blocks")
    else:
        best = best_per_cell(df, rows)
        out = pd.concat(
            [best[rows].reset_index(drop=True), _mean_std(best, "fid", "FID").reset_index(drop=True)], axis=1
        )
    return sort_frame(_with_setting(out, best, rows, col), rows)


@register_table("reuse", ("reuse",), vary=("reuse",), title="Solution reuse on/off", paper="Fig. 6a")
def reuse(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df["reuse"].notna()]
    rows = [*context(df), *(["iters_per_step"] if present(df, "iters_per_step") else [])]
    best = best_per_cell(df, rows + ["reuse"])
    return sort_frame(_with_setting(pivot_metric(best, rows, "reuse", "fid", "FID reuse"), best, rows, "reuse"), rows)


MODEL_AXES = ("model", "preset", "data", "pre_depth", "post_depth", "train_method")
MODEL_COSTS = (
    ("params_total", "Params (M)", 1e6),
    ("flops_per_forward", "GFLOPs / forward", 1e9),
    ("train_mem_saved_bytes", "Train activations (MiB)", MIB),
)


@register_table(
    "models",
    ("model",),
    metric="params_total",
    per_protocol=False,
    title="Per-model cost: parameters, FLOPs per forward, training memory",
    paper="Sec. 4.2",
)
def models(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trained architecture (model, preset, and the identity axes that vary): what it
    costs independently of how it is sampled. Training memory is the step total at the training
    batch (parameters, gradients, AdamW state, EMA and saved activations)."""
    rows = [a for a in MODEL_AXES if a in ("model", "preset") and present(df, a) or varies(df, a)]
    mem = train_memory_column(df)
    wanted = [*MODEL_COSTS[:2], *([(mem, "Train memory (MiB)", MIB)] if mem else []), *MODEL_COSTS[2:]]
    costs = [(src, dst, scale) for src, dst, scale in wanted if present(df, src)]
    work = df[rows + [c for c, _, _ in costs]].copy()
    for src, _, _ in costs:
        work[src] = pd.to_numeric(work[src], errors="coerce").astype("float64")
    out = work.groupby(rows, dropna=False, sort=False)[[c for c, _, _ in costs]].mean().reset_index()
    for src, dst, scale in costs:
        out[dst] = out.pop(src) / scale
    return sort_frame(out, rows)


# ---------------------------------------------------------------------------------------------
# running the registry


def protocol_groups(df: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Split ok rows by FID protocol label (never mix protocols); sorted by label."""
    if "protocol_label" not in df.columns:
        return [({"label": None}, df)] if len(df) else []
    labels = df["protocol_label"].map(lambda v: "" if v is None or v is pd.NA else str(v))
    groups = []
    for lab in sorted(labels.unique()):
        part = df[labels == lab]
        info: dict[str, Any] = {"label": lab or None}
        for f in ("num_samples", "extractor", "reference", "sampler"):
            col = f"protocol_{f}"
            vals = sorted({str(v) for v in part[col].dropna()}) if col in part else []
            info[f] = ", ".join(vals) if vals else None
        part = part.copy()
        part.attrs = dict(df.attrs)
        groups.append((info, part))
    return groups


def applicable(spec: TableSpec, df: pd.DataFrame) -> bool:
    if not present(df, spec.metric) or not all(present(df, a) for a in spec.required_axes):
        return False
    return not spec.vary or any(varies(df, a) for a in spec.vary)


def build_tables(df: pd.DataFrame) -> list[TableResult]:
    """Every registered table whose axes the ok records hold, once per protocol."""
    from reports.accounting import accounting_note
    from reports.merge import merge_same_artifact, schedule_notes

    ok = df[df["status"] == "ok"].copy()
    ok.attrs = dict(df.attrs)
    ok = merge_same_artifact(ok)  # jobs that share one sampled artifact are one row
    runs = [(info, part, spec) for info, part in protocol_groups(ok) for spec in TABLES.values() if spec.per_protocol]
    # tables without FID see every ok job once; an empty protocol means "no FID here"
    runs += [({}, ok, spec) for spec in TABLES.values() if not spec.per_protocol and len(ok)]
    results = []
    for info, part, spec in runs:
        if applicable(spec, part):
            frame = spec.fn(part)
            if not frame.empty:
                notes = schedule_notes(frame) if "schedule" in spec.required_axes else []
                if "budget_blocks" in frame and (note := accounting_note(part)):
                    notes.insert(0, note)
                results.append(TableResult(spec.name, spec.title, spec.paper, info, frame, notes))
    return results
