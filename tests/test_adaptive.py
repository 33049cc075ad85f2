"""Adaptive compute at a fixed budget (issue 15): solver compaction, tolerance calibration, greedy
water-filling and the searched schedule family. Expected values come from brute force or from
counting, never from the code under test."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch

from fpdm.schedules import get_schedule
from fpdm.solvers import get_solver, with_rows
from harness.compute.adaptive import bisect_tolerance, calibration_cost, passes_summary, target_iters
from harness.compute.greedy import greedy_allocation, nonincreasing_fit
from harness.compute.plan import BudgetError


# ----------------------------------------------------------------------------- compaction
def _counting_map(a: torch.Tensor, c: torch.Tensor, seen: list):
    """Row-wise affine map z -> a z + c that logs how many rows each call sees."""

    def f(z):
        seen.append(z.shape[0])
        return a * z + c

    return with_rows(f, lambda idx: _counting_map(a[idx], c[idx], seen))


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_converged_half_leaves_the_batch(solver):
    """Half the samples start at their fixed point (converged after one evaluation): the remaining
    evaluations run on half the batch, and the result equals the uncompacted solve."""
    B, D, iters = 8, 3, 6
    a = torch.full((B, 1), 0.5, dtype=torch.float64)
    c = torch.ones(B, D, dtype=torch.float64)
    z0 = torch.zeros(B, D, dtype=torch.float64)
    z0[: B // 2] = 2.0  # the fixed point of z = z/2 + 1
    seen: list = []
    z, st = get_solver(solver)(_counting_map(a, c, seen), z0, max_iter=iters, tol=1e-12)
    assert seen == [B] + [B // 2] * (st.nfe - 1) and st.nfe > 1
    assert st.nfe_per_sample.tolist() == [1] * (B // 2) + [st.nfe] * (B // 2)
    if solver == "picard":  # z_k = 2 - 2 / 2^k never reaches the fixed point: all iterations run
        assert st.nfe == iters
    plain: list = []
    f = _counting_map(a, c, plain)
    del f.rows  # no compaction: the masked solve on the full batch
    z_full, _ = get_solver(solver)(f, z0, max_iter=iters, tol=1e-12)
    assert plain == [B] * st.nfe
    torch.testing.assert_close(z, z_full)


def test_fpdm_bound_layer_restricts_to_rows():
    from fpdm.model import FixedPointLayer

    torch.manual_seed(0)
    layer = FixedPointLayer(16, 2, 2.0).double()
    x_inj, cond, z = torch.randn(5, 4, 16).double(), torch.randn(5, 16).double(), torch.randn(5, 4, 16).double()
    f = layer.bind(x_inj, cond)
    idx = torch.tensor([1, 3])
    torch.testing.assert_close(f.rows(idx)(z[idx]), f(z)[idx])
    torch.testing.assert_close(f(z), layer(z, x_inj, cond))


# ----------------------------------------------------------------------------- greedy
def _brute_force(traces, total):
    cap = len(traces[0]) - 1
    best = None
    for alloc in itertools.product(range(1, cap + 1), repeat=len(traces)):
        if sum(alloc) == total:
            cost = sum(t[k] for t, k in zip(traces, alloc))
            if best is None or cost < best[0] - 1e-12:
                best = (cost, list(alloc))
    return best


def test_greedy_returns_the_brute_force_optimum_on_convex_traces():
    rng = random.Random(0)
    for _ in range(40):
        steps, cap = rng.randint(2, 4), rng.randint(2, 5)
        # geometric decay r_i(k) = a_i q_i^k: convex in k (diminishing returns), distinct rates
        rates = [(rng.uniform(0.5, 2), rng.uniform(0.2, 0.9)) for _ in range(steps)]
        traces = [[a * q**k for k in range(cap + 1)] for a, q in rates]
        for total in range(steps, steps * cap + 1):
            alloc = greedy_allocation(traces, total)
            cost, opt = _brute_force(traces, total)
            assert sum(alloc) == total and min(alloc) >= 1 and max(alloc) <= cap
            assert sum(t[k] for t, k in zip(traces, alloc)) == pytest.approx(cost, abs=1e-12), (traces, total, opt)


def test_greedy_known_plan_and_exact_sums_on_noisy_traces():
    # step 0 converges fast (each iteration halves less and less), step 1 slowly: 3 spare iterations
    # go where they lower the residual most: r1 drops 0.3 per iteration, r0 by 0.05 then less
    traces = [[1.0, 0.1, 0.05, 0.03, 0.02], [1.0, 0.9, 0.6, 0.3, 0.0]]
    assert greedy_allocation(traces, 5) == [1, 4]
    rng = random.Random(1)
    for _ in range(50):  # non-convex, noisy traces: still exact, >= 1, <= cap
        steps, cap = rng.randint(1, 9), rng.randint(1, 7)
        traces = [[rng.random() for _ in range(cap + 1)] for _ in range(steps)]
        total = rng.randint(steps, steps * cap)
        alloc = greedy_allocation(traces, total)
        assert sum(alloc) == total and min(alloc) >= 1 and max(alloc) <= cap
    with pytest.raises(BudgetError, match="max_iters_per_step"):
        greedy_allocation([[1.0, 0.5, 0.2]] * 3, 7)


def test_nonincreasing_fit_pools_violators():
    assert nonincreasing_fit([3, 1, 2]) == [3, 1.5, 1.5]
    assert nonincreasing_fit([1, 2, 3]) == [2, 2, 2]
    assert nonincreasing_fit([5, 4, 1]) == [5, 4, 1]


# ----------------------------------------------------------------------------- searched family
def test_every_density_member_sums_exactly_and_is_at_least_one():
    rng = random.Random(2)
    fn = get_schedule("density")
    for _ in range(500):
        steps = rng.randint(1, 60)
        total = rng.randint(steps, 8 * steps + 5)
        knots = [rng.uniform(0.01, 1.0) for _ in range(rng.randint(1, min(steps, 6)))]
        plan = fn(total, steps, values=knots)
        assert len(plan) == steps and sum(plan) == total and min(plan) >= 1
    # a rising density gives a non-decreasing plan; a flat one the constant split
    assert fn(60, 10, values=[0.1, 1.0]) == sorted(fn(60, 10, values=[0.1, 1.0]))
    assert fn(60, 10, values=[0.7, 0.7, 0.7]) == [6] * 10
    with pytest.raises(ValueError, match="sample.knots has 4 knots for 3 steps"):
        fn(9, 3, values=[1, 1, 1, 1])


def test_search_space_members_are_valid_plans():
    import optuna

    from harness.compute.schedule_family import KNOTS, search_space

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        over = search_space(trial)
        knots = over["sample.knots"]
        assert len(knots) == KNOTS and all(k > 0 for k in knots)
        plan = get_schedule("density")(100, 20, values=knots)
        assert sum(plan) == 100 and min(plan) >= 1
        study.tell(trial, 0.0)


# ----------------------------------------------------------------------------- calibration math
def test_target_iters_names_the_key_and_fix():
    assert target_iters(40, 5, 2, 8) == 30
    # guidance: both forwards of an image summed, against 2 x (60 - 20 steps x 2 explicit) = 40
    assert target_iters(60, 20, 2, 8, guidance=2) == 40
    with pytest.raises(BudgetError, match="sample.budget=14 is below one pass per step"):
        target_iters(14, 5, 2, 8)
    with pytest.raises(BudgetError, match="sample.adaptive.max_iters_per_step=4"):
        target_iters(40, 5, 2, 4)


def test_bisection_meets_the_target_within_one_and_names_a_stall():
    # mean iterations S * ceil(log(tol) / log(q)) of a geometric residual: a step function of tol
    def mean_iters(tol):
        return sum(min(8, max(1, math.ceil(math.log(tol) / math.log(q)))) for q in (0.5, 0.6, 0.7, 0.8, 0.9)) / 1.0

    for target in range(6, 40):
        cal = bisect_tolerance(mean_iters, target, tol_min=1e-9, tol_max=10.0)
        assert target - 1 <= cal.mean_iters <= target and mean_iters(cal.tol) == cal.mean_iters

    def stalled(tol):  # the residual stalls at 0.05: below it every sample runs to the cap
        return 5 * 2 if tol > 0.05 else 5 * 8

    with pytest.raises(BudgetError, match="never converges that far.*sample.budget"):
        bisect_tolerance(stalled, 25, tol_min=1e-6, tol_max=10.0, budget=35, explicit=10)
    # guided, both forwards stalling alike: passes count both (explicit 20, 2 x 10 iterations = 40
    # at the loose end), the fix names sample.budget per forward: 40 / 2 = 20, as unguided (10 + 10)
    with pytest.raises(BudgetError, match=r"sample.budget=35 \(70 per image.*lower sample.budget to <= 20 "):
        bisect_tolerance(lambda t: 2 * stalled(t), 50, tol_min=1e-6, tol_max=10.0, budget=35, explicit=20, guidance=2)


def test_passes_summary_histogram():
    s = passes_summary([3, 3, 5, 9], explicit_passes=10)
    assert s["block_passes_per_image_mean"] == 15 and s["block_passes_per_image_max"] == 19
    assert s["_passes_histogram"] == {"passes": [13, 15, 19], "images": [2, 1, 1]}
    assert "block_passes_over_budget" not in s
    # mean 15: one pass over a budget of 14 is within the calibration's tolerance, 15 - 13 = 2 is not
    assert passes_summary([3, 3, 5, 9], 10, budget_passes=14)["block_passes_over_budget"] is False
    over = passes_summary([3, 3, 5, 9], 10, budget_passes=13)
    assert over["block_passes_over_budget"] is True and over["block_passes_budget"] == 13


def test_calibration_cost_counts_every_sampling():
    from harness.compute.flops import FlopBreakdown

    fb = FlopBreakdown(per_forward=0, explicit_per_forward=100, block=0, per_iteration=10, injection_per_iteration=0)
    # two samplings of 6 forwards each (2 explicit blocks per forward), 30 and 25 evaluations:
    # passes 2 * 6 * 2 + 55 = 79; FLOPs 12 forwards * 100 + 55 evaluations * 10 = 1750
    assert calibration_cost([30, 25], 6, 2, fb) == {"evaluations": 2, "block_passes_total": 79, "flops_total": 1750}


# ----------------------------------------------------------------------------- on a tiny trained model
# tiny FPDM: 1 pre + 1 post explicit block (n_explicit = 2); fast overrides: 5 steps, 32 evaluated
# images; the calibration batch is 16 images, up to 8 evaluations per step
N_EXPLICIT, CAL_IMAGES, EVAL_IMAGES, CAP = 2, 16, 32, 8
CFG = ["sample.cfg_scale=1.5", "sample.budget=60"]
RUNS = {
    "adaptive-30": ["sample.schedule=adaptive", "sample.budget=30"],
    "adaptive-40": ["sample.schedule=adaptive", "sample.budget=40"],
    # the same calibration (num_images is not part of it), reused from the cache by a 16-image job
    "adaptive-40-rerun": ["sample.schedule=adaptive", "sample.budget=40", "sample.num_images=16"],
    "adaptive-cfg": ["sample.schedule=adaptive", "sample.steps=10", *CFG],
    "constant-cfg": ["sample.schedule=constant", "sample.steps=10", *CFG],
    "adaptive-cfg-20": ["sample.schedule=adaptive", "sample.steps=20", *CFG],  # one iteration per step
    "greedy-40": ["sample.schedule=greedy", "sample.budget=40"],
    # FLOP-matched (the default accounting): the calibration aims at the FLOP plan's block passes
    "adaptive-flops-40": [
        "sample.schedule=adaptive",
        "sample.budget=40",
        "sample.match=flops",
        "sample.flops_tolerance=0.1",
    ],
}


@pytest.fixture(scope="module")
def calibrated_runs(hydra_app, fast_overrides_for, tmp_path_factory):
    """One tiny model (trained once through the app), then every run of ``RUNS`` on it; a run that
    fails leaves its record (status failed, the reason) for the test that reads it."""
    root = tmp_path_factory.mktemp("adaptive")
    out = {}
    for name, over in RUNS.items():
        overrides = [
            *fast_overrides_for(root),
            "run.stages=[train,sample]",
            *([] if any(o.startswith("sample.match") for o in over) else ["sample.match=blocks"]),
            f"sample.adaptive.calibration_images={CAL_IMAGES}",
            *over,
            f"hydra.run.dir={root / name}",
        ]
        try:
            hydra_app(overrides)
        except SystemExit:  # a failed single run exits non-zero after writing its record
            pass
        out[name] = json.loads((root / name / "record.json").read_text())
    return out


def test_calibrated_tolerance_meets_the_budget_and_orders_with_it(calibrated_runs):
    tols = {}
    for budget in (30, 40):
        rec = calibrated_runs[f"adaptive-{budget}"]
        m = rec["metrics"]
        assert rec["status"] == "ok" and rec["stages"]["calibrate"] == "ran"
        assert budget - 1 <= m["calibration_block_passes"] <= budget  # within one pass, never above
        # the evaluated images (other seeds) are checked against the same budget and recorded
        assert m["block_passes_budget"] == budget
        assert m["block_passes_over_budget"] == (m["block_passes_per_image_mean"] > budget + 1)
        assert abs(m["block_passes_per_image_mean"] - budget) <= 1.0
        assert m["block_passes_per_image_mean"] <= m["block_passes_per_image_max"] <= 5 * (N_EXPLICIT + CAP)
        hist = rec["solver_trace"]["passes_per_image"]
        assert sum(hist["images"]) == EVAL_IMAGES
        assert max(hist["passes"]) == m["block_passes_per_image_max"]
        assert sum(p * n for p, n in zip(hist["passes"], hist["images"])) / EVAL_IMAGES == pytest.approx(
            m["block_passes_per_image_mean"]
        )
        assert m["flops_per_image"] < m["flops_planned"] or m["block_passes_per_image_mean"] == budget
        tols[budget] = m["calibration_tol"]
    assert tols[40] < tols[30]  # more compute: a tighter tolerance


def test_guided_adaptive_spends_what_the_constant_schedule_spends(calibrated_runs):
    """cfg_scale=1.5 at budget 60: each image runs a conditional and an unconditional forward, so
    the constant schedule records 2 x 60 = 120 block passes per image; adaptive calibrates to the
    same 120 (both halves of an image summed) and its evaluated images spend it within one pass."""
    const = calibrated_runs["constant-cfg"]["metrics"]
    assert const["block_passes_per_image"] == 2 * 60
    for name in ("adaptive-cfg", "adaptive-cfg-20"):
        rec = calibrated_runs[name]
        assert rec["status"] == "ok", rec["reason"]
        m = rec["metrics"]
        assert abs(m["block_passes_per_image_mean"] - const["block_passes_per_image"]) <= 1.0
        assert 119 <= m["calibration_block_passes"] <= 120
        assert m["block_passes_per_image"] == pytest.approx(m["block_passes_per_image_mean"])
        assert (
            m["calibration_guidance_forwards"] == 2 and m["block_passes_budget"] == const["block_passes_budget"] == 120
        )
        assert not m["block_passes_over_budget"]
    # 20 steps at budget 60: 3 passes per forward and step = 2 explicit + 1 evaluation, the least a
    # step runs, so the loosest tolerance spends it exactly, on every image: 20 * 3 * 2 = 120
    m = calibrated_runs["adaptive-cfg-20"]["metrics"]
    assert m["calibration_tol"] == 1e3 and m["calibration_evaluations"] == 1
    assert m["calibration_block_passes"] == 120 and m["block_passes_per_image_max"] == 120


def _forwards(m: dict, steps: int) -> int:
    """Model forwards of all calibration samplings: samplings x images x steps x guidance."""
    return m["calibration_evaluations"] * CAL_IMAGES * steps * m["calibration_guidance_forwards"]


@pytest.mark.parametrize(("name", "steps"), [("adaptive-40", 5), ("adaptive-cfg", 10), ("greedy-40", 5)])
def test_the_calibration_is_charged_in_full(calibrated_runs, name, steps):
    rec = calibrated_runs[name]
    m = rec["metrics"]
    assert rec["stages"]["calibrate"] == "ran" and m["calibration_cached"] is False
    forwards = _forwards(m, steps)
    assert m["calibration_evaluations"] >= 1 and m["calibration_time_s"] > 0
    iters = m["calibration_block_passes_total"] - N_EXPLICIT * forwards  # fixed point evaluations
    assert forwards <= iters <= forwards * (CAP + 1)  # 1..cap per forward and step (greedy: cap + 1)
    # FLOPs: every forward's explicit part plus one iteration per evaluation (the sample stage's figures)
    assert m["calibration_flops_total"] == m["flops_explicit_per_forward"] * forwards + m["flops_per_iteration"] * iters
    for total, per_image in (("block_passes_total", "block_passes"), ("flops_total", "flops"), ("time_s", "time_s")):
        assert m[f"calibration_{per_image}_per_evaluated_image"] == pytest.approx(m[f"calibration_{total}"] / 32)


def test_a_cached_calibration_reports_what_it_cost_and_says_so(calibrated_runs):
    first, again = calibrated_runs["adaptive-40"], calibrated_runs["adaptive-40-rerun"]
    assert again["stages"]["calibrate"] == "cached" and again["metrics"]["calibration_cached"] is True
    m, m0 = again["metrics"], first["metrics"]
    for k in ("evaluations", "block_passes_total", "flops_total", "time_s", "tol"):
        assert m[f"calibration_{k}"] == m0[f"calibration_{k}"]
    # charged to this job's 16 images
    assert m["calibration_flops_per_evaluated_image"] == pytest.approx(m0["calibration_flops_total"] / 16)


def test_greedy_charges_its_trace_sampling_and_spends_the_budget(calibrated_runs):
    """One calibration sampling of 16 images x 5 steps, each step the explicit blocks and cap + 1 = 9
    evaluations (tol 0: none stops early): 16 * 5 * (2 + 9) = 880 block passes; the evaluated images
    then run the greedy plan, 40 passes each."""
    m = calibrated_runs["greedy-40"]["metrics"]
    assert m["calibration_evaluations"] == 1 and m["calibration_block_passes_total"] == 880
    assert m["calibration_block_passes_per_evaluated_image"] == 880 / 32
    assert m["block_passes_per_image_mean"] == m["block_passes_per_image_max"] == m["block_passes_budget"] == 40
    assert m["block_passes_over_budget"] is False


# ----------------------------------------------------------------------------- schedule_search resume
def _study(root):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = next(root.rglob("fpdm-schedule-search.journal"), None)  # <sweep root>/optuna/<study>.journal
    if journal is None:
        return None
    return optuna.load_study(
        study_name="fpdm-schedule-search", storage=JournalStorage(JournalFileBackend(str(journal)))
    )


@pytest.mark.slow
def test_killed_schedule_search_resumes_to_the_same_total(tmp_path, offline_env, extractor_cache):
    """SIGKILL the real sweep while its second trial runs; the same command tops the study up to
    n_trials (the interrupted point retried), reusing the cached model."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from optuna.trial import TrialState

    from hydra_plugins.fpdm_optuna_sweeper import storage as st

    args = [
        sys.executable,
        "-m",
        "harness.run",
        "-m",
        "sweep=schedule_search",
        "hydra.sweeper.n_trials=3",
        "sample.budget=60",
        "sample.match=blocks",  # every searched step count (4..20) plans at 60 blocks; in FLOPs 17..20 do not
        "sample.num_images=32",
        "sample.batch_size=32",
        "train.budget.value=20",
        "train.batch_size=32",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.extractor_cache={extractor_cache}",
        "hydra.sweep.dir=multirun/s",
        "run.progress=false",
        "run.threads=1",
        "run.device=cpu",
    ]
    proc = subprocess.Popen(args, cwd=tmp_path, env=offline_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while True:
            study = _study(tmp_path)
            got = [t.state for t in study.trials] if study else []
            if TrialState.COMPLETE in got:  # kill during (or just after) the second trial
                break
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-3000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = [t.state for t in _study(tmp_path).trials]
    assert before.count(TrialState.COMPLETE) < 3  # killed before the study was done
    try:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.run(args, cwd=tmp_path, env=offline_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    study = _study(tmp_path)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and st.budget_used(study.trials) == 3
    if TrialState.RUNNING in before:  # a trial cut off by the kill is marked and its point retried
        assert any(t.user_attrs.get(st.FAIL_REASON) == "interrupted" for t in study.trials)
    assert all(math.isfinite(t.value) for t in complete)
    assert len(list((tmp_path / "cache" / "train").glob("*/complete.json"))) == 1  # one model for every trial


def test_adaptive_under_flop_matching_spends_the_flop_plans_passes_within_dits_flops(calibrated_runs):
    """sample.match=flops: the nominal plan is the FPDM plan within DiT's FLOPs; adaptive calibrates to
    that plan's block passes, so the evaluated images spend them within one pass and their FLOPs stay
    at DiT's target (within the tolerance, plus at most one pass's worth of overspend)."""
    rec = calibrated_runs["adaptive-flops-40"]
    m = rec["metrics"]
    assert rec["status"] == "ok" and rec["stages"]["calibrate"] == "ran"
    planned = m["block_passes_budget"]
    assert planned < 40  # an iteration costs more than a block: fewer passes than the block budget
    assert planned - 1 <= m["calibration_block_passes"] <= planned
    # never more than one pass over (that would favour FPDM); the 16-image calibration batch can
    # leave the 32 evaluated images a little under, which only costs FPDM
    assert not m["block_passes_over_budget"] and planned - 2 <= m["block_passes_per_image_mean"] <= planned + 1
    per_pass = m["flops_planned"] / planned  # an upper bound of one pass's FLOPs share
    assert m["flops_per_image"] <= m["flops_match_target"] + per_pass
