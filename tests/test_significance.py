"""reports/significance + conclusions: paired intervals from stored features, computed sentences.

Fixture features are Gaussian: image i of every job shares its draw z_i (the same sample seed),
a setting shifts the mean by `shift` along a fixed direction, so its FID against N(0, I) is about
shift^2 (closed form) and two settings with the same shift have identical features (a tie).
"""

from __future__ import annotations

import json
from html import unescape

import numpy as np
import pandas as pd
import pytest
from report_fixtures import D, N, record, write_sweep
from report_fixtures import gaussian_features as _write_features

from reports.build import build_report


def _sweep(root, fpdm_shift: dict, train_seeds=(0,), dit_shift=1.0):
    recs, shifts = [], {}
    for ts in train_seeds:
        for budget in (60, 120, 240):
            for model in ("dit", "fpdm"):
                shift = (
                    dit_shift
                    if model == "dit"
                    else fpdm_shift[(budget, ts)]
                    if (budget, ts) in fpdm_shift
                    else fpdm_shift[budget]
                )
                axes = {"model": model, "data": "digits", "budget_blocks": budget, "seed": 0, "train_seed": ts}
                rec = record(
                    axes,
                    {
                        "fid": shift**2,
                        "noise_floor_halves": 0.05,
                        "noise_floor_halves_std": 0.01,
                        "noise_floor_subset": 0.02,
                    },
                )
                rec["config"]["metrics"] = {"bootstrap": 400, "bootstrap_seed": 3}  # Holm over 3 needs > 119
                recs.append(rec)
                shifts[rec["job_id"]] = shift
    write_sweep(root, recs)
    for rec in recs:
        rec["artifacts"] = {"features": _write_features(root / rec["job_id"], shifts[rec["job_id"]])}
        (root / rec["job_id"] / "record.json").write_text(json.dumps(rec))
    return root


BLOCKS = "Block-matched (the paper's accounting, Sec. 4.2): "


def _sentence(html: str, name: str, match: str = "blocks") -> str:
    part = html[html.index(f'id="s-{name}-{match}"') :]
    return unescape(part[part.index('class="conclusion"><b>') + 22 : part.index("</b></p>")])


def test_conclusions_follow_the_numbers(tmp_path):
    good = _sweep(tmp_path / "good", {60: 0.3, 120: 0.3, 240: 1.0})
    bad = _sweep(tmp_path / "bad", {60: 1.7, 120: 1.7, 240: 1.0})
    s_good = _sentence(build_report([good], tmp_path / "o1", figures=False).read_text(), "fpdm_vs_dit")
    s_bad = _sentence(build_report([bad], tmp_path / "o2", figures=False).read_text(), "fpdm_vs_dit")
    assert s_good == BLOCKS + "FPDM beats DiT at 60 and 120 blocks; FPDM ties DiT at 240 blocks."
    assert s_bad == BLOCKS + "DiT beats FPDM at 60 and 120 blocks; FPDM ties DiT at 240 blocks."
    t = pd.read_csv(tmp_path / "o1" / "tables" / "significance_fpdm_vs_dit.csv").set_index("budget_blocks")
    # mean shift only: FID = shift^2 exactly for these features' sample moments up to sampling noise
    z = np.random.default_rng(0).normal(size=(N, D))
    assert t.loc[240, "dFID"] == 0 and t.loc[240, "dFID lo"] == 0 == t.loc[240, "dFID hi"]
    assert t.loc[60, "dFID hi"] < 0 < t.loc[60, "FID lo"] and t.loc[60, "claim"] == "better"
    expected = ((z.mean(0) + 0.3 / np.sqrt(D)) ** 2).sum() - ((z.mean(0) + 1 / np.sqrt(D)) ** 2).sum()
    assert t.loc[60, "dFID"] == pytest.approx(expected, rel=1e-6)  # covariance terms cancel: same z
    assert (t["digits-mlp verdict"] == t["verdict"]).all()  # a rotation does not change FID: rulers agree
    html = (tmp_path / "o1" / "report.html").read_text()
    assert "agree on 3 of 3 orderings" in html and "Real-vs-real FID" in html


def test_orderings_that_flip_between_training_seeds_are_reported(tmp_path):
    sweep = _sweep(tmp_path / "s", {(60, 0): 0.3, (60, 1): 1.7, 120: 0.3, 240: 0.3}, train_seeds=(0, 1))
    html = build_report([sweep], tmp_path / "o", figures=False).read_text()
    sentence = _sentence(html, "fpdm_vs_dit")
    assert "flips between training seeds at 60 blocks" in sentence
    t = pd.read_csv(tmp_path / "o" / "tables" / "significance_fpdm_vs_dit.csv").set_index("budget_blocks")
    assert t.loc[120, "pairs"] == 2 and {"dFID over train seeds lo", "dFID over train seeds hi"} <= set(t.columns)
    # the budget table averages over training seeds (one row per budget and model, not per seed)
    t1 = pd.read_csv(tmp_path / "o" / "tables" / "table1_budget.csv")
    assert len(t1) == 6


def test_two_builds_are_byte_identical_and_figures_carry_the_band(tmp_path):
    sweep = _sweep(tmp_path / "s", {60: 0.3, 120: 0.5, 240: 1.0})
    a = build_report([sweep], tmp_path / "a").parent
    b = build_report([sweep], tmp_path / "b").parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    from reports.noise_band import floor_top

    assert floor_top(
        pd.DataFrame({"noise_floor_halves": [0.05], "noise_floor_halves_std": [0.01], "noise_floor_subset": [0.02]})
    ) == pytest.approx(0.06)


def test_dit_jobs_repeated_per_schedule_name_pair_once(tmp_path):
    """The main job runs DiT once per schedule name; DiT ignores the schedule, so those jobs have
    the same axes (one measurement). The report must pair them once, not fail."""
    sweep = _sweep(tmp_path / "s", {60: 0.3, 120: 0.3, 240: 1.0})
    for src in [p for p in sweep.glob("*/record.json") if json.loads(p.read_text())["axes"]["model"] == "dit"]:
        rec = json.loads(src.read_text())
        twin = sweep / (rec["job_id"] + "-twin")
        twin.mkdir()
        rec["job_id"] += "-twin"
        rec["artifacts"] = {"features": _write_features(twin, 1.0)}
        (twin / "record.json").write_text(json.dumps(rec))
    html = build_report([sweep], tmp_path / "o", figures=False).read_text()
    assert (
        _sentence(html, "fpdm_vs_dit") == BLOCKS + "FPDM beats DiT at 60 and 120 blocks; FPDM ties DiT at 240 blocks."
    )
    t = pd.read_csv(tmp_path / "o" / "tables" / "significance_fpdm_vs_dit.csv").set_index("budget_blocks")
    assert (t["pairs"] == 1).all()
