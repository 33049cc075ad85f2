"""The report of ``sweep=schedule_compare`` (issue 15): each schedule's FID with its paired interval
against constant, and the schedule shapes figure (iterations per step vs timestep), the searched
density member named with the study trial it came from (reports/searched.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from report_fixtures import record, write_sweep

from reports.build import build_report
from reports.collect import load_sweeps
from reports.figures import schedule_shapes

TIMESTEPS = [999, 749, 499, 249, 0]
# each schedule's plan at each budget (iterations per step, noisiest step first; 5 steps, pre +
# post = 2 blocks per step): every plan spends budget - 2 * 5 iterations
PLANS = {
    60: {"constant": [10] * 5, "increasing": [6, 8, 10, 12, 14], "density": [4, 9, 15, 12, 10]},
    120: {"constant": [22] * 5, "increasing": [14, 18, 22, 26, 30], "density": [9, 20, 33, 27, 21]},
}
SHIFT = {"constant": 1.0, "increasing": 0.6, "density": 0.3}  # FID = shift^2 up to sampling noise
SEARCH = {"study": "fpdm-schedule-search", "trial": 7, "value": 1.2345, "knots": [0.3, 0.6, 1.0, 0.8], "steps": 9}
DENSITY = "density (trial 7: 1.234)"
D, N = 8, 300


def _features(job_dir, shift: float) -> dict:
    z = np.random.default_rng(0).normal(size=(N, D))  # shared by every job: the same images
    (job_dir / "features").mkdir(parents=True, exist_ok=True)
    np.save(job_dir / "features" / "digits-cnn.npy", (z + shift / np.sqrt(D)).astype(np.float32))
    np.savez(job_dir / "features" / "digits-cnn.ref.npz", mu=np.zeros(D), sigma=np.eye(D), n=np.int64(5000))
    return {"digits-cnn": "features/digits-cnn.npy"}


def _schedule_sweep(root):
    recs = []
    for budget, plans in PLANS.items():
        for schedule, iters in plans.items():
            axes = {"model": "fpdm", "data": "digits", "budget_blocks": budget, "schedule": schedule, "seed": 0}
            trace = {"timestep": TIMESTEPS, "iters": iters, "residual": [0.1] * len(iters)}
            rec = record(axes, {"fid": SHIFT[schedule] ** 2}, trace=trace)
            rec["config"]["metrics"] = {"bootstrap": 400, "bootstrap_seed": 3}  # Holm over 4 needs > 159
            if schedule == "density":
                rec["search"] = SEARCH
            recs.append(rec)
    dit = record({"model": "dit", "data": "digits", "budget_blocks": 60, "seed": 0}, {"fid": 9.0})
    write_sweep(root, [*recs, dit])
    for rec in recs:
        rec["artifacts"] = {"features": _features(root / rec["job_id"], SHIFT[rec["axes"]["schedule"]])}
        (root / rec["job_id"] / "record.json").write_text(json.dumps(rec))
    return root


def _series(ax, legend) -> dict[str, tuple[list, list]]:
    """legend label -> (x, y) of the line drawn in that label's colour on ``ax`` (one legend
    serves every panel: the same schedule has the same colour in each)."""
    out = {}
    for text, handle in zip(legend.get_texts(), legend.legend_handles):
        (line,) = [ln for ln in ax.get_lines() if ln.get_color() == handle.get_color() and len(ln.get_xdata())]
        out[text.get_text()] = (list(line.get_xdata()), list(line.get_ydata()))
    return out


def test_schedule_shapes_draw_each_plan_against_timestep_and_name_the_trial(tmp_path):
    data = load_sweeps([_schedule_sweep(tmp_path / "s")])
    fig = schedule_shapes(data, data.jobs[data.jobs["status"] == "ok"])
    assert fig is not None
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in axes] == ["budget 60 blocks", "budget 120 blocks"]
    legends = [ax.get_legend() for ax in axes]
    assert legends[0] is None and legends[-1] is not None  # one legend, beside the last panel
    for ax, (budget, plans) in zip(axes, PLANS.items()):
        assert ax.get_xlabel().startswith("timestep") and ax.get_ylabel() == "iterations per step"
        assert ax.xaxis_inverted()  # sampling runs from the noisiest timestep, drawn left
        series = _series(ax, legends[-1])
        assert sorted(series) == sorted(["constant", "increasing", DENSITY])  # one line each, DiT has none
        for schedule, iters in plans.items():
            x, y = series[DENSITY if schedule == "density" else schedule]
            got = dict(zip(x, y))
            assert got == dict(zip(TIMESTEPS, iters)), (budget, schedule)
            assert sum(y) == budget - 2 * 5  # the plan spends the budget


def test_each_schedule_has_a_paired_interval_against_constant_and_density_names_its_trial(tmp_path):
    build_report([_schedule_sweep(tmp_path / "s")], tmp_path / "o", figures=False)
    t = pd.read_csv(tmp_path / "o" / "tables" / "significance_schedule_vs_constant.csv")
    assert sorted(zip(t["budget_blocks"], t["setting"])) == sorted(
        (b, s) for b in PLANS for s in ("increasing", DENSITY)
    )
    assert (t["dFID hi"] < 0).all() and (t["claim"] == "better").all()  # both shifts are below constant's
    dens = t[t["setting"] == DENSITY].iloc[0]
    z = np.random.default_rng(0).normal(size=(N, D))
    expected = ((z.mean(0) + 0.3 / np.sqrt(D)) ** 2).sum() - ((z.mean(0) + 1 / np.sqrt(D)) ** 2).sum()
    assert dens["dFID"] == expected or abs(dens["dFID"] - expected) < 1e-6 * abs(expected)
    assert dens["dFID lo"] <= dens["dFID"] <= dens["dFID hi"]
