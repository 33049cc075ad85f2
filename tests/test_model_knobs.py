"""Architecture knobs on top of presets (issue 10 item 4): a depth / width ablation is a plain
multirun whose jobs get distinct train keys and their resolved architecture as axes, while a knob
equal to the preset's value reuses the preset's cache."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from harness.app.precheck import expand_sweep, precheck
from harness.compute.plan import sampling_plan
from harness.config.validate import validate_config
from harness.stages.cache import stage_keys
from harness.stages.job import job_axes


@pytest.fixture
def jobs():
    def expand(overrides):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="harness.config", version_base="1.3"):
            cfgs = [compose(config_name="config", overrides=list(job)) for job in expand_sweep(overrides, {})]
        GlobalHydra.instance().clear()
        return cfgs

    return expand


@pytest.mark.parametrize("model", ["dit", "fpdm"])
def test_a_depth_width_multirun_plans_distinct_models(model, jobs):
    sweep = [f"model={model}", "model.depth=4,6,8", "model.hidden_size=32,64", "model.num_heads=2"]
    precheck(["-m", *sweep])  # every job passes the checks
    cfgs = jobs(sweep)
    assert len(cfgs) == 6
    for cfg in cfgs:
        validate_config(cfg)
    keys = [stage_keys(cfg).train for cfg in cfgs]
    assert len(set(keys)) == 6
    axes = [job_axes(cfg, sampling_plan(cfg)) for cfg in cfgs]
    assert sorted((a["depth"], a["hidden_size"]) for a in axes) == [(d, w) for d in (4, 6, 8) for w in (32, 64)]
    assert all(a["num_heads"] == 2 and a["patch_size"] == 2 and a["mlp_ratio"] == 4.0 for a in axes)
    if model == "dit":  # the depth is the block budget of one forward
        assert {a["depth"]: a["budget_blocks"] // a["steps"] for a in axes} == {4: 4, 6: 6, 8: 8}
    else:  # FPDM: default iterations = depth - pre - post (paper Sec. 4.2)
        assert {a["depth"]: a["iters_per_step"] for a in axes} == {4: 2, 6: 4, 8: 6}


def test_a_knob_equal_to_the_preset_hits_the_presets_cache(jobs):
    (plain,), (same,), (deeper,) = (
        jobs(["model=dit"]),
        jobs(["model=dit", "model.depth=6", "model.num_heads=4"]),
        jobs(["model=dit", "model.depth=7"]),
    )
    assert stage_keys(plain).train == stage_keys(same).train  # tiny is 6 deep with 4 heads
    assert stage_keys(plain).train != stage_keys(deeper).train
    assert job_axes(plain)["depth"] == 6 and job_axes(deeper)["depth"] == 7
