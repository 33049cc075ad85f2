"""Paired comparisons with confidence intervals, computed from the features kept beside each record.

Every setting is paired with its baseline (``compare.*`` in the records' config; defaults: FPDM vs
DiT at the same budget, each schedule vs constant, reuse vs none, each solver vs picard, each
depth vs 1/1). Jobs are paired when they share the sample seed (image i has the same label and
noise in both, harness.sample) and the training seed; the bootstrap resamples image indices
jointly for both sets (harness.metrics.bootstrap), recomputes each FID against its reference and
takes the difference (treatment - baseline; negative = the treatment is better). Intervals are
95% percentiles over ``metrics.bootstrap`` resamples seeded by ``metrics.bootstrap_seed`` (read
from the records), so a rebuild gives the same bytes. Where there are several seed ranges or
training seeds the table also gives a t-interval over them and says when an ordering flips.
Each ruler (feature network) is compared separately; a claim stands only where all agree.

Cells are keyed by the budget asked for (``budget_blocks`` = ``sample.budget``, reports.collect),
never by what each side spent, and one table holds one accounting (``sample.match``); every row
carries each side's measured FLOPs and block passes per image (reports.accounting). Verdicts are
Holm-corrected over the rows of one table under one ruler (reports.multiplicity): the printed
intervals are per comparison, the verdict is the family's.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.metrics.bootstrap import bootstrap_fid_draws, debias, fid_per_range, percentile_ci, ref_sqrt, t_interval
from harness.runtime.io import atomic_write
from reports.accounting import flop_gap, flops_matched, match_of, side_costs
from reports.collect import SweepData, setting_axes
from reports.multiplicity import bootstrap_p, decide, family_text, holm
from reports.searched import schedule_label
from reports.selection import HeldOut, choose_on_held_out, held_out
from reports.tables import CONTEXT_AXES, present, row_keys, sort_frame, value_label, varies

DEFAULT_COMPARE = {"model": "dit", "schedule": "constant", "reuse": False, "solver": "picard", "depth": [1, 1]}
PAIR_AXES = ("seed", "train_seed")  # jobs are paired on these (same images, same trained model)
NOT_MATCHED = ("steps",)  # derived from the others (depth changes the step count at a budget)
ROW_FIELDS = ("cell", "value", "label", "pairs", "costs")  # the non-ruler entries of a result row


@dataclass(frozen=True)
class Comparison:
    name: str
    title: str
    key: str  # compare.<key>
    value: Callable[[pd.DataFrame], pd.Series]  # the compared value of each row (None: not in this comparison)
    label: Callable[[Any], str]  # how a value reads in a sentence
    axes: tuple[str, ...]  # job columns the value is made of
    # match cells on CONTEXT_AXES, one setting per cell chosen on held-out images (reports/selection.py)
    match_context_only: bool = False


def _col(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda df: df[name]


def _depth(df: pd.DataFrame) -> pd.Series:
    return pd.Series(
        [None if pd.isna(a) or pd.isna(b) else f"{int(a)}/{int(b)}" for a, b in zip(df["pre_depth"], df["post_depth"])],
        index=df.index,
        dtype=object,
    )


COMPARISONS = [
    Comparison(
        "fpdm_vs_dit",
        "FPDM vs DiT at the same budget (paper Table 1)",
        "model",
        _col("model"),
        lambda v: {"fpdm": "FPDM", "dit": "DiT"}.get(str(v), str(v)),
        ("model",),
        match_context_only=True,
    ),
    Comparison(
        "schedule_vs_constant",
        "Iteration schedules vs constant (paper Table 5)",
        "schedule",
        schedule_label,  # a searched member reads "density (trial N: value)" (reports.searched)
        str,
        ("schedule",),
    ),
    Comparison(
        "reuse_vs_none",
        "Solution reuse vs none (paper Fig. 6a)",
        "reuse",
        _col("reuse"),
        lambda v: f"reuse {value_label(v)}",
        ("reuse",),
    ),
    Comparison("solver_vs_picard", "Fixed point solvers vs picard", "solver", _col("solver"), str, ("solver",)),
    Comparison(
        "depth_vs_default",
        "Explicit pre/post depth vs the default (paper Fig. 7)",
        "depth",
        _depth,
        lambda v: f"depth {v}",
        ("pre_depth", "post_depth"),
    ),
]


# ---------------------------------------------------------------------------------------------
# evidence on disk


@dataclass
class JobEvidence:
    features: dict[str, Path]  # ruler -> .npy beside the record
    ranges: int
    resamples: int
    seed: int
    compare: dict = field(default_factory=dict)
    held_out: HeldOut | None = None  # the selection set's FID and seeds (reports/selection.py)
    store: Path | None = None  # where its bootstrap draws are kept between builds (_bootstrap_store)


def job_evidence(data: SweepData) -> dict[str, JobEvidence]:
    """Read each ok job's record for its stored features (paths inside the sweep directory only)."""
    out = {}
    jobs = data.jobs[data.jobs["status"] == "ok"]
    for _, r in jobs.iterrows():
        root = data.roots[r["sweep"]].resolve()
        rec_dir = (root / str(r["record_dir"])).resolve()
        try:
            rec = json.loads((rec_dir / "record.json").read_text())
        except (OSError, ValueError):
            continue
        feats = (rec.get("artifacts") or {}).get("features")
        if not isinstance(feats, dict):
            continue
        paths = {str(k): (rec_dir / str(v)).resolve() for k, v in feats.items()}
        paths = {
            k: p
            for k, p in paths.items()
            if p.is_relative_to(root) and p.is_file() and p.with_name(f"{k}.ref.npz").is_file()
        }
        cfg = rec.get("config") or {}
        m = cfg.get("metrics") or {}
        proto = rec.get("protocol") or {}
        if paths:
            out[str(r["job_id"])] = JobEvidence(
                paths,
                int(proto.get("num_ranges") or 1),
                int(m.get("bootstrap", 200)),
                int(m.get("bootstrap_seed", 0)),
                cfg.get("compare") or {},
                held_out(rec),
                _bootstrap_store(cfg, root),
            )
    return out


BOOTSTRAP_STORE_VERSION = 1  # part of every stored entry's key: bump when the bootstrap's arithmetic changes


def _bootstrap_store(cfg: dict, root: Path) -> Path:
    """The folder a job's bootstrap draws are kept in between report builds: under the job's
    ``paths.cache_dir`` (recorded absolute) where that cache still exists, so a re-run into a new
    sweep folder finds them, else ``<sweep>/.cache`` (a sweep folder copied elsewhere without its
    cache never recreates the old path). Entries are keyed by the content of their inputs (_store_key)."""
    cache_dir = (cfg.get("paths") or {}).get("cache_dir")
    if isinstance(cache_dir, str) and Path(cache_dir).is_absolute() and Path(cache_dir).is_dir():
        return Path(cache_dir) / "report_bootstrap"
    return root / ".cache" / "report_bootstrap"


def _load(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, Any]:
    f = np.load(path, allow_pickle=False)
    with np.load(Path(path).with_name(Path(path).name.replace(".npy", ".ref.npz")), allow_pickle=False) as z:
        ref = ref_sqrt(z["mu"], z["sigma"])
    return f, ref


def _fids(
    path: str, ranges: int, resamples: int, seed: int, store: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(per-range FIDs, debiased bootstrap draws of their mean) of one stored feature set."""
    st = Path(path).stat()  # a rewritten file is a new cache entry
    return _fids_cached(path, st.st_size, st.st_mtime_ns, ranges, resamples, seed, store)


@lru_cache(maxsize=4096)
def _fids_cached(path: str, size: int, mtime_ns: int, ranges: int, resamples: int, seed: int, store: Path | None):
    if store is None:
        return _fids_computed(path, ranges, resamples, seed)
    entry = store / f"{_store_key(path, ranges, resamples, seed)}.npz"
    try:
        with np.load(entry, allow_pickle=False) as z:
            return z["per"], z["draws"]
    except (OSError, ValueError, KeyError):  # absent, or unreadable: computed again and rewritten
        pass
    per, draws = _fids_computed(path, ranges, resamples, seed)
    buf = io.BytesIO()
    np.savez(buf, per=per, draws=draws)
    try:
        atomic_write(entry, buf.getvalue())
    except OSError:  # a read-only cache still gives the same report, only slower
        pass
    return per, draws


def _store_key(path: str, ranges: int, resamples: int, seed: int) -> str:
    """sha256 of everything the draws depend on: the features' and the reference's bytes, the
    seed-range count, the resample count and seed, and the store's version."""
    h = hashlib.sha256(f"v{BOOTSTRAP_STORE_VERSION} {ranges} {resamples} {seed}".encode())
    for p in (Path(path), _ref_path(path)):
        h.update(b"\0" + p.read_bytes())
    return h.hexdigest()


def _ref_path(path: str) -> Path:
    return Path(path).with_name(Path(path).name.replace(".npy", ".ref.npz"))


def _fids_computed(path: str, ranges: int, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    f = np.load(path, allow_pickle=False)
    with np.load(_ref_path(path), allow_pickle=False) as z:
        ref = ref_sqrt(z["mu"], z["sigma"])
    k = len(f) // ranges
    rr = [(i * k, (i + 1) * k) for i in range(ranges)]
    per = fid_per_range(f, ref, rr)
    return per, debias(bootstrap_fid_draws(f, ref, rr, resamples, seed), float(per.mean()))


# ---------------------------------------------------------------------------------------------
# pairing


def _cells(df: pd.DataFrame, cmp: Comparison) -> list[str]:
    if cmp.match_context_only:
        return [a for a in CONTEXT_AXES if a not in cmp.axes and present(df, a)]
    return [a for a in setting_axes(df) if a not in cmp.axes and a not in NOT_MATCHED and a not in PAIR_AXES]


def _one_pairing(base: pd.DataFrame, treat: pd.DataFrame, ev: dict[str, JobEvidence]) -> dict | None:
    """Pairs of (baseline job, treatment job) sharing seeds -> interval columns per ruler."""
    # Jobs of one setting that differ only in a knob the model ignores (DiT's schedule name) are
    # one measurement (one sample artifact): keep the first job per pairing key.
    pb = base.set_index(row_keys(base, [a for a in PAIR_AXES if a in base]))["job_id"]
    pt = treat.set_index(row_keys(treat, [a for a in PAIR_AXES if a in treat]))["job_id"]
    pb, pt = pb[~pb.index.duplicated()], pt[~pt.index.duplicated()]
    pairs = [(pb[k], pt[k], k) for k in sorted(set(pb.index) & set(pt.index)) if pb[k] in ev and pt[k] in ev]
    if not pairs:
        return None
    rulers = sorted(set.intersection(*(set(ev[b].features) & set(ev[t].features) for b, t, _ in pairs)))
    out: dict[str, Any] = {"pairs": len(pairs), "costs": _costs(base, treat, pairs)}
    for ruler in rulers:
        res = _ruler_stats(pairs, ev, ruler, treat)
        if res is not None:
            out[ruler] = res
    return out if len(out) > 2 else None


def _costs(base: pd.DataFrame, treat: pd.DataFrame, pairs: list) -> dict:
    """Each side's measured FLOPs and block passes per image over the paired jobs, and the FLOP gap."""
    b = side_costs(base, [j for j, _, _ in pairs])
    t = side_costs(treat, [j for _, j, _ in pairs])
    gap = flop_gap(t["flops_per_image"], b["flops_per_image"])
    return {"baseline": b, "setting": t, "flop_gap": gap, "flops_matched": flops_matched(gap)}


def _ruler_stats(pairs, ev, ruler: str, treat: pd.DataFrame) -> dict | None:
    pb, pt, db, dt, range_d, seed_d = [], [], [], [], [], {}
    for b, t, _ in pairs:
        eb, et = ev[b], ev[t]
        if (eb.ranges, eb.resamples, eb.seed) != (et.ranges, et.resamples, et.seed):
            return None
        fb, fb_draws = _fids(str(eb.features[ruler]), eb.ranges, eb.resamples, eb.seed, eb.store)
        ft, ft_draws = _fids(str(et.features[ruler]), et.ranges, et.resamples, et.seed, et.store)
        if len(fb) != len(ft) or len(fb_draws) != len(ft_draws):
            return None
        pb.append(fb.mean()), pt.append(ft.mean()), db.append(fb_draws), dt.append(ft_draws)
        range_d.extend(ft - fb)
        ts = treat.loc[treat["job_id"] == t, "train_seed"].iloc[0] if "train_seed" in treat else 0
        seed_d.setdefault(ts, []).append(float(ft.mean() - fb.mean()))
    db_m, dt_m = np.mean(db, axis=0), np.mean(dt, axis=0)
    lo, hi = percentile_ci(dt_m - db_m)
    p = bootstrap_p(dt_m - db_m)
    per_seed = [float(np.mean(v)) for _, v in sorted(seed_d.items(), key=lambda kv: str(kv[0]))]
    rng_ci = t_interval(range_d) if ev[pairs[0][0]].ranges > 1 else None
    seed_ci = t_interval(per_seed)
    return {
        "fid_base": float(np.mean(pb)),
        "ci_base": percentile_ci(db_m),
        "fid": float(np.mean(pt)),
        "ci": percentile_ci(dt_m),
        "diff": float(np.mean(pt) - np.mean(pb)),
        "ci_diff": (lo, hi),
        "p": p,
        "verdict": None,  # the family's decision, set by _holm_verdicts
        "ci_ranges": rng_ci,
        "ci_train_seeds": seed_ci,
        "flips": len(per_seed) > 1 and min(per_seed) < 0 < max(per_seed),
        "resamples": ev[pairs[0][0]].resamples,
    }


@dataclass
class ComparisonResult:
    comparison: Comparison
    protocol: dict
    baseline: Any
    cells: list[str]  # the matched axes that vary (they name a row)
    rows: list[dict]  # one per (cell, treatment value): cell values, value, ruler -> stats
    rulers: list[str]
    match: str = "blocks"  # the budget accounting of every row (sample.match, reports.accounting)
    family: str = ""  # the multiplicity family the verdicts are corrected over


def _baseline(cmp: Comparison, rows: pd.DataFrame, ev: dict[str, JobEvidence]) -> Any:
    compare_cfg = next((e.compare for j, e in ev.items() if j in set(rows["job_id"]) and e.compare), {})
    return compare_cfg.get(cmp.key, DEFAULT_COMPARE[cmp.key]) if cmp.key in compare_cfg else DEFAULT_COMPARE[cmp.key]


def _pair_cells(cmp: Comparison, ordered: pd.DataFrame, shown: list[str], base_text: str, ev) -> list[dict]:
    """One row per (cell, treatment value) that pairs with the cell's baseline."""
    out_rows = []
    for cell_key in dict.fromkeys(ordered["_cell"]):
        part = ordered[ordered["_cell"] == cell_key]
        base = part[part["_vtext"] == base_text]
        for v in dict.fromkeys(part.loc[part["_vtext"] != base_text, "_vtext"]):
            stats = _one_pairing(base, part[part["_vtext"] == v], ev)
            if stats is None:
                continue
            first = part.iloc[0]
            out_rows.append(
                {
                    "cell": {c: first[c] for c in shown},
                    "value": v,
                    "label": part.loc[part["_vtext"] == v, "_label"].iloc[0],
                    **stats,
                }
            )
    return out_rows


def _holm_verdicts(out_rows: list[dict], rulers: list[str]) -> str:
    """Set each row's verdict per ruler from Holm-adjusted p-values over the table's rows (one
    family per ruler, reports.multiplicity) -> the family's description."""
    sizes = []
    for ruler in rulers:
        rows = [r for r in out_rows if ruler in r]
        for r, p_adj in zip(rows, holm([r[ruler]["p"] for r in rows])):
            r[ruler]["p_holm"] = p_adj
            r[ruler]["verdict"] = decide(r[ruler]["diff"], p_adj)
        sizes.append(len(rows))
    return family_text(max(sizes))


def compare(cmp: Comparison, rows: pd.DataFrame, ev: dict[str, JobEvidence], protocol: dict) -> ComparisonResult | None:
    """The paired comparison ``cmp`` over ``rows`` (one protocol and one accounting)."""
    if not all(present(rows, a) for a in cmp.axes) or "fid" not in rows:
        return None
    rows = rows.assign(_value=cmp.value(rows))
    rows = rows[rows["_value"].notna() & rows["job_id"].isin(set(ev))]
    if rows["_value"].astype(str).nunique() < 2:
        return None
    baseline = _baseline(cmp, rows, ev)
    if baseline is None:
        return None
    base_text = f"{baseline[0]}/{baseline[1]}" if cmp.key == "depth" else value_label(baseline)
    rows = rows.assign(_vtext=rows["_value"].map(value_label), _label=rows["_value"].map(cmp.label))
    if base_text not in set(rows["_vtext"]):
        return None
    cells = _cells(rows, cmp)
    note = ""
    if cmp.match_context_only:  # never on the images it is scored on
        rows, note = choose_on_held_out(rows, cells, {j: e.held_out for j, e in ev.items()}, base_text)
    shown = [c for c in cells if varies(rows, c)]
    ordered = sort_frame(rows, cells)
    ordered = ordered.assign(_cell=row_keys(ordered, cells).values)
    out_rows = _pair_cells(cmp, ordered, shown, base_text, ev)
    if not out_rows:
        return None
    rulers = sorted({k for r in out_rows for k in r if k not in ROW_FIELDS})
    primary = protocol.get("extractor")
    rulers = sorted(rulers, key=lambda r: (r != primary, r))
    family = _holm_verdicts(out_rows, rulers)
    match = str(match_of(rows).iloc[0])  # build_significance hands in one accounting at a time
    label = cmp.label(baseline if cmp.key != "depth" else base_text)
    if note:  # which setting each cell chose, on which seeds, and which were scored (reports/selection.py)
        protocol = {**protocol, "label": "; ".join(filter(None, [protocol.get("label"), note])), "selection": note}
    return ComparisonResult(cmp, protocol, label, shown, out_rows, rulers, match, family)
