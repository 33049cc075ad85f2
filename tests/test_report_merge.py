"""Jobs that share one sampled artifact are one report row naming every setting; schedule tables
state each schedule's direction (reports.merge)."""

from __future__ import annotations

import pandas as pd

from reports.merge import merge_same_artifact, schedule_notes
from reports.tables import build_tables


def _jobs() -> pd.DataFrame:
    rows = [  # job, schedule, eval key, fid
        ("j1", "increasing", "e-inc", 10.0),
        ("j2", "cosine", "e-inc", 10.0),
        ("j3", "decreasing", "e-dec", 12.0),
        ("j4", "constant", "e-con", 11.0),
        ("j5", "official_increasing", "e-con", 11.0),
    ]
    df = pd.DataFrame(
        [
            {
                "job_id": j,
                "status": "ok",
                "model": "fpdm",
                "schedule": s,
                "iters_per_step": 2.0,
                "budget_blocks": 60,
                "fid": f,
                "key_eval": k,
                "protocol_label": "FID-1k; protocol digits",
            }
            for j, s, k, f in rows
        ]
    )
    df.attrs = {"axes": ["model", "schedule", "iters_per_step", "budget_blocks"], "metrics": ["fid"]}
    return df


def test_same_eval_key_is_one_row_naming_both_schedules():
    merged = merge_same_artifact(_jobs())
    assert sorted(merged["schedule"]) == ["constant = official_increasing", "cosine = increasing", "decreasing"]
    assert len(merged) == 3 and merged.attrs["axes"] == _jobs().attrs["axes"]


def test_schedule_table_has_one_row_per_plan_and_states_directions():
    (table,) = [t for t in build_tables(_jobs()) if t.name == "table5_schedule"]
    assert sorted(table.frame["schedule"]) == ["constant = official_increasing", "cosine = increasing", "decreasing"]
    notes = " ".join(table.notes)
    assert "increasing: more iterations at later (less noisy) steps" in notes
    assert "decreasing: more iterations at earlier (noisier) steps" in notes
    assert "official_increasing: the official code's 'increasing'" in notes
    assert "Same integer plan, sampled once: constant = official_increasing; cosine = increasing." in notes


def test_schedule_notes_follow_the_registered_directions():
    """The note's direction must agree with fpdm.schedules in sampling order (step 0 = noisiest)."""
    from fpdm.schedules import get_schedule

    inc, dec, off = (get_schedule(n)(30, 10) for n in ("increasing", "decreasing", "official_increasing"))
    assert inc[0] < inc[-1] and dec[0] > dec[-1] and off[0] > off[-1]
    notes = schedule_notes(pd.DataFrame({"schedule": ["increasing", "decreasing", "official_increasing"]}))
    assert any("later (less noisy)" in n for n in notes if n.startswith("increasing"))
    assert any("earlier (noisier)" in n for n in notes if n.startswith("official_increasing"))


def test_identical_integer_plans_share_one_sample_key():
    from hydra import compose, initialize_config_module

    import harness.config  # noqa: F401
    from harness.compute.plan import plan_from_sample_config, sampling_plan
    from harness.stages.cache import stage_keys
    from harness.stages.meta_flops import sampling_flop_inputs

    def key_and_plan(schedule, budget=60, match="blocks"):
        with initialize_config_module("harness.config", version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[
                    "sweep=budget_schedules",
                    "model=fpdm",
                    f"sample.budget={budget}",
                    f"sample.schedule={schedule}",
                    f"sample.match={match}",
                ],
            )
        if match == "flops":  # the plan measured FLOPs give, as the job plans it
            return stage_keys(cfg).sample, sampling_plan(cfg, **sampling_flop_inputs(cfg)).iters
        plan = plan_from_sample_config("fpdm", budget, 2, iters=2, schedule=schedule, ratio=[0.5, 1.5])
        return stage_keys(cfg).sample, plan.iters

    (k_inc, p_inc), (k_cos, p_cos), (k_dec, p_dec) = (key_and_plan(s) for s in ("increasing", "cosine", "decreasing"))
    assert p_inc == p_cos and k_inc == k_cos  # same plan -> same artifact
    assert p_inc != p_dec and k_inc != k_dec
    assert key_and_plan("increasing", 120)[0] != k_inc
    # matched in FLOPs (the default): 12 steps and 25 iterations at 60 blocks, where constant and
    # decreasing both give the spare iteration to the first step
    (k_con, p_con), (k_fdec, p_fdec), (k_finc, p_finc) = (
        key_and_plan(s, match="flops") for s in ("constant", "decreasing", "increasing")
    )
    assert p_con == p_fdec == (3,) + (2,) * 11 and k_con == k_fdec
    assert p_finc != p_con and k_finc != k_con
    assert k_con != key_and_plan("constant")[0]  # a block plan is another artifact
