"""The report as a neutral referee: FLOP-matched cells keyed by the budget asked for, each side's
cost beside every comparison, Holm's correction over a table's comparisons, the real-vs-real FID at
the FIDs' own sample sizes, and Kendall's tau over distinct settings.

Features are those of tests/report_fixtures.gaussian_features: FID(shift) is about shift^2, and two
jobs with the same shift have identical features (a difference of exactly 0)."""

from __future__ import annotations

from html import unescape

import numpy as np
import pandas as pd
import pytest
from report_fixtures import paired_sweep

from reports.build import build_report

BUDGETS = (60, 120, 240)
# What the planner spends under sample.match=flops at these budgets (the main job): FPDM
# 49 / 99 / 198 block passes for about DiT's FLOPs at 60 / 120 / 240 blocks.
FPDM_PASSES = {60: 49, 120: 99, 240: 198}
DIT_FLOPS_PER_BLOCK = 1_000_000
# FPDM's measured FLOPs per image relative to DiT's: within 2% at 60 and 120, 5% short at 240.
FPDM_FLOP_SHARE = {60: 0.99, 120: 0.985, 240: 0.95}


def _flop_matched_jobs(fpdm_shift: dict) -> list:
    jobs = []
    for budget in BUDGETS:
        for model in ("dit", "fpdm"):
            spent = budget if model == "dit" else FPDM_PASSES[budget]  # the record's axis: what the plan spends
            share = 1.0 if model == "dit" else FPDM_FLOP_SHARE[budget]
            axes = {"model": model, "data": "digits", "budget_blocks": spent, "match": "flops", "seed": 0}
            metrics = {
                "fid": 1.0,
                "flops_per_image": share * DIT_FLOPS_PER_BLOCK * budget,
                "block_passes_per_image": spent,
            }
            shift = 1.0 if model == "dit" else fpdm_shift[budget]
            jobs.append((axes, metrics, shift, {"sample": {"budget": budget, "match": "flops"}}))
    return jobs


def _sentence(html: str, name: str, match: str) -> str:
    part = html[html.index(f'id="s-{name}-{match}"') :]
    return unescape(part[part.index('class="conclusion"><b>') + 22 : part.index("</b></p>")])


@pytest.fixture(scope="module")
def flop_matched(tmp_path_factory):
    base = tmp_path_factory.mktemp("flops")
    sweep = paired_sweep(base / "s", _flop_matched_jobs({60: 0.3, 120: 0.3, 240: 1.0}))
    html = build_report([sweep], base / "o", figures=False).read_text()
    return {"html": html, "tables": base / "o" / "tables"}


def test_flop_matched_pairs_are_keyed_by_the_budget_asked_for(flop_matched):
    """Keyed by the passes each side spent, FPDM (49, 99, 198) and DiT (60, 120, 240) never shared a
    cell: no FPDM-vs-DiT comparison was made and the CSV did not exist."""
    path = flop_matched["tables"] / "significance_fpdm_vs_dit.csv"
    assert path.is_file()
    t = pd.read_csv(path).set_index("budget_blocks")
    assert list(t.index) == list(BUDGETS) and (t["pairs"] == 1).all()
    assert (t["accounting"] == "FLOP-matched").all()
    # each side's measured cost, from its own record
    assert list(t["block passes/image baseline"]) == [60, 120, 240]
    assert list(t["block passes/image"]) == [49, 99, 198]
    assert list(t["FLOPs/image baseline"]) == [60e6, 120e6, 240e6]
    assert list(t["FLOPs/image"]) == [0.99 * 60e6, 0.985 * 120e6, 0.95 * 240e6]
    assert t["FLOP gap"].tolist() == pytest.approx([-0.01, -0.015, -0.05])
    assert t["FLOPs matched"].tolist() == [True, True, False]  # 5% apart at 240: flagged
    assert list(t["claim"]) == ["better", "better", "tie"]


def test_flop_matched_report_names_its_accounting_and_flags_the_unmatched_cell(flop_matched):
    html = unescape(flop_matched["html"])
    assert _sentence(flop_matched["html"], "fpdm_vs_dit", "flops") == (
        "FLOP-matched: FPDM beats DiT at the FLOPs of 60 and 120 DiT blocks; "
        "FPDM ties DiT at the FLOPs of 240 DiT blocks."
    )
    assert "FPDM vs DiT at the same budget (paper Table 1), FLOP-matched</h3>" in html
    assert "⚠ In 1 of 3 rows the two sides' measured FLOPs per image differ by more than 2%" in html
    assert "60 → 49" in html  # block passes, baseline → setting
    # the budget table: one row per budget asked for and model (not six unrelated budgets)
    t1 = pd.read_csv(flop_matched["tables"] / "table1_budget.csv").set_index(["budget_blocks", "model"])
    assert sorted(t1.index) == sorted((b, m) for b in BUDGETS for m in ("dit", "fpdm"))
    assert t1.loc[(60, "fpdm"), "Block passes / image"] == 49 and t1.loc[(60, "dit"), "Block passes / image"] == 60
    assert t1.loc[(240, "fpdm"), "GFLOPs / image"] == pytest.approx(0.95 * 0.24)
    assert "Budget accounting: FLOP-matched" in html
    jobs = pd.read_csv(flop_matched["tables"] / "jobs.csv")
    fpdm60 = jobs[(jobs["model"] == "fpdm") & (jobs["budget_blocks"] == 60)]
    assert list(fpdm60["block_passes_planned"]) == [49]  # the record's own axis is kept


def test_block_matched_comparisons_say_so_and_never_claim_the_same_compute(tmp_path):
    jobs = []
    for budget in (60, 120):
        for model, shift, flops in (("dit", 1.0, 1.0), ("fpdm", 0.3, 1.38)):
            axes = {"model": model, "data": "digits", "budget_blocks": budget, "match": "blocks", "seed": 0}
            m = {"fid": shift**2, "flops_per_image": flops * 1e6 * budget, "block_passes_per_image": budget}
            jobs.append((axes, m, shift, {"sample": {"budget": budget, "match": "blocks"}}))
    sweep = paired_sweep(tmp_path / "s", jobs)
    raw = build_report([sweep], tmp_path / "o", figures=False).read_text()
    html = unescape(raw)
    assert _sentence(raw, "fpdm_vs_dit", "blocks") == (
        "Block-matched (the paper's accounting, Sec. 4.2): FPDM beats DiT at 60 and 120 blocks."
    )
    assert "the same block budget, not the same compute" in html
    assert "same compute" not in html.replace("not the same compute", "")
    t = pd.read_csv(tmp_path / "o" / "tables" / "significance_fpdm_vs_dit.csv")
    assert (t["accounting"] == "block-matched (the paper's accounting, Sec. 4.2)").all()
    assert (~t["FLOPs matched"]).all() and t["FLOP gap"].tolist() == pytest.approx([0.38, 0.38])


# ------------------------------------------------------------------ multiplicity


def test_holm_and_the_bootstrap_p_value_by_hand():
    from reports.multiplicity import bootstrap_p, decide, holm

    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5 x 2 capped at 1; then max(1, 0.6)
    # 4 draws, 3 at or below 0: lower (1 + 3) / 5, upper (1 + 1) / 5 -> 2 x 0.4
    assert bootstrap_p(np.array([-3.0, -2.0, -1.0, 1.0])) == pytest.approx(0.8)
    assert bootstrap_p(-np.ones(9)) == pytest.approx(2 * 1 / 10)  # never 0: 2 / (B + 1)
    assert bootstrap_p(np.zeros(5)) == 1.0  # a difference of exactly 0
    assert [decide(-1.0, 0.03), decide(2.0, 0.05), decide(-1.0, 0.06)] == ["better", "worse", "tie"]


def test_a_tables_verdicts_are_holm_corrected_over_its_comparisons(tmp_path):
    """Three comparisons whose every paired draw is below 0: each alone has p = 2 / (B + 1). With
    B = 100 that is 0.0198, and its 95% interval excludes 0 (the old verdict: better); Holm over the
    three multiplies the smallest by 3: 0.0594 > 0.05, a tie, and the report says why."""
    jobs = []
    for budget in BUDGETS:
        for model, shift in (("dit", 1.0), ("fpdm", 0.3)):
            axes = {"model": model, "data": "digits", "budget_blocks": budget, "seed": 0}
            jobs.append((axes, {"fid": shift**2}, shift, {}))
    sweep = paired_sweep(tmp_path / "s", jobs, bootstrap=100)
    html = unescape(build_report([sweep], tmp_path / "o", figures=False).read_text())
    t = pd.read_csv(tmp_path / "o" / "tables" / "significance_fpdm_vs_dit.csv")
    assert (t["dFID hi"] < 0).all()  # every interval excludes 0
    assert (t["verdict"] == "tie").all() and (t["digits-mlp verdict"] == "tie").all()
    assert t["p"].tolist() == pytest.approx([2 / 101] * 3)
    assert t["p Holm"].tolist() == pytest.approx([6 / 101] * 3)
    assert (t["family"] == "Holm over the 3 comparisons of this table, per ruler").all()
    assert "cannot declare any difference: raise metrics.bootstrap to at least 119" in html
    # with enough resamples the same differences stand: 2 / 401 x 3 <= 0.05
    sweep = paired_sweep(tmp_path / "s2", jobs, bootstrap=400)
    build_report([sweep], tmp_path / "o2", figures=False)
    t = pd.read_csv(tmp_path / "o2" / "tables" / "significance_fpdm_vs_dit.csv")
    assert t["p Holm"].tolist() == pytest.approx([6 / 401] * 3) and (t["verdict"] == "better").all()


# ------------------------------------------------------------------ real-vs-real FID


def test_matched_floor_fit_recovers_a_line_through_the_origin():
    from harness.metrics.noise_floor import matched_floor

    c = 9.0
    fids = {m: c * 2 / m for m in (500, 333, 250)}
    assert matched_floor(fids, 1000, 1437) == pytest.approx(c * (1 / 1000 + 1 / 1437))


def test_real_vs_real_fid_is_computed_at_the_fids_sample_sizes():
    """Gaussian features, identity covariance, d = 4. Two independent sets of n1 and n2 images
    score, to leading order, ||mean difference||^2 with expectation d (1/n1 + 1/n2) plus the
    covariance term ||E1 - E2||_F^2 / 4 with E||E_i||_F^2 = d (d + 1) / n_i (diagonal entries of a
    sample covariance vary by 2/n, off-diagonal by 1/n): c = d + d (d + 1) / 4 = 9. The FIDs use
    n = 2,000 images against N = 3,000: 9 x (1/2000 + 1/3000) = 0.0075, while the reference halves
    (1,500 each) give 9 x 4/3000 = 0.012, 1.6 times more."""
    from harness.metrics.noise_floor import noise_floor

    d, big_n, n = 4, 3000, 2000
    ref = np.random.default_rng(100).normal(size=(big_n, d))
    f = noise_floor(ref, n, splits=40, seed=0)
    assert f["noise_floor_matched"] == pytest.approx(9 * (1 / n + 1 / big_n), rel=0.15)
    assert f["noise_floor_halves"] == pytest.approx(9 * 4 / big_n, rel=0.15)
    assert f["noise_floor_matched"] < 0.8 * f["noise_floor_halves"]
    assert (f["noise_floor_n"], f["noise_floor_ref_n"]) == (n, big_n)


def test_the_report_states_the_real_vs_real_fid_at_its_sizes_not_a_resolution(tmp_path):
    floor = {
        "noise_floor_matched": 0.031,
        "noise_floor_matched_std": 0.004,
        "noise_floor_n": 1000,
        "noise_floor_ref_n": 1437,
        "noise_floor_halves": 0.05,
    }
    jobs = []
    for model, shift in (("dit", 1.0), ("fpdm", 0.3)):
        axes = {"model": model, "data": "digits", "budget_blocks": 60, "seed": 0}
        jobs.append((axes, {"fid": shift**2, **floor}, shift, {}))
    html = unescape(build_report([paired_sweep(tmp_path / "s", jobs)], tmp_path / "o", figures=False).read_text())
    assert (
        "two independent real sample sets of 1,000 and 1,437 images, the sizes these FIDs use, give 0.031 ± 0.004"
        in html
    )
    assert "two halves of the reference, 718 images each, give 0.05" in html
    assert "resolv" not in html and "resolution" not in html


# ------------------------------------------------------------------ rank agreement


def test_kendall_tau_counts_each_setting_once():
    """One cell, a baseline paired with three schedules. The distinct settings' FIDs under the two
    rulers are (1, 1), (2, 3), (3, 2), (4, 4): of the 6 pairs only (2, 3) vs (3, 2) is discordant,
    tau = (5 - 1) / 6. Repeating the baseline per row adds tied points and changes tau."""
    from reports.conclusions import rank_agreement
    from reports.significance import COMPARISONS, ComparisonResult

    def stats(base: float, fid: float) -> dict:
        return {"fid_base": base, "fid": fid, "diff": fid - base}

    rows = [
        {"cell": {}, "value": v, "label": v, "a": stats(1.0, fa), "b": stats(1.0, fb)}
        for v, fa, fb in (("s1", 2.0, 3.0), ("s2", 3.0, 2.0), ("s3", 4.0, 4.0))
    ]
    res = ComparisonResult(COMPARISONS[1], {}, "constant", [], rows, ["a", "b"])
    same, total, tau = rank_agreement(res)
    assert (same, total) == (3, 3)
    assert tau == pytest.approx(4 / 6)
