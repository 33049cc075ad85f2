"""The training-memory estimate against numbers counted by hand (issue 12 item 4).

A DiT block of the tiny preset (D=64, 4 heads, MLP 256) at batch 2 on 8x8 digits with patch 2
(N=16 tokens) saves, in elements, with x and c carrying gradient:
  adaLN: silu input c 128, linear input silu(c) 128, output (read by the gates) 768;
  norm1: input x 2048 + mean/rstd 64; modulate: normed 2048 and (1 + scale) 128;
  qkv input 2048; q, k, v (one qkv buffer) 6144; fused SDPA output 2048 and log-sum-exp 128;
  proj input (reshaped copy) 2048; gate * attn: attn output 2048;
  norm2: input 2048 + 64; normed 2048, (1 + scale) 128; fc1 input 2048; GELU input 8192;
  fc2 input 8192; gate * mlp: mlp output 2048                      -> 44,544 elements.
In fp32 that is 178,176 bytes. Under CUDA autocast bf16 the matmul outputs and the casts feeding
matmuls are bf16 while c, silu(c), x, mean/rstd, both normed tensors, the second input x1 and the
log-sum-exp stay fp32:
  fp32: c 128, x 2048 + 64, normed 2048, x1 2048 + 64, normed2 2048, lse 128  = 8,576 el -> 34,304 B
  bf16: the other 35,968 elements                                              -> 71,936 B
  total 106,240 bytes (not half of fp32: the residual stream and LayerNorm stay fp32).
A fixed point iteration adds the injection MLP and the block, but not what the solve computes once
per forward and every iteration shares (fpdm/model.py hoists these loop invariants): the block's
adaLN (c 128, silu(c) 128, its output 768) and the x_inj half of fc1. Per iteration: fc1's z half
input 2048, GELU input 4096, fc2 input 4096 (10,240) plus the block less its adaLN
(44,544 - 1,024 = 43,520): 53,760 elements, 215,040 bytes in fp32.
"""

from __future__ import annotations

import pytest
import torch

from harness.compute.memory_estimate import (
    MemoryAssumptions,
    estimate_training_memory,
    with_grad_iterations,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DIT_PARAMS = 478_600  # tests/test_inspect.py::_dit_params(64, 6)
LABEL_TABLE = 11 * 64  # not a matmul weight: autocast does not cast it


def _model(name, **spec):
    from omegaconf import OmegaConf

    from fpdm.training_modes import ImplicitTrainSpec
    from harness.config.schema import Config
    from harness.stages.models import build_model

    cfg = OmegaConf.structured(Config)
    cfg.model.name = name
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.train, image_size=8, channels=1, num_classes=10)
    if spec:
        model.train_spec = ImplicitTrainSpec(**spec)
    return model


@pytest.mark.parametrize("precision,block_bytes", [("fp32", 178_176), ("bf16", 106_240)])
def test_checkpoint_recompute_peak_is_one_block_counted_by_hand(precision, block_bytes):
    a = MemoryAssumptions(batch_size=2, precision=precision, grad_checkpointing=True)
    mem = estimate_training_memory(_model("dit"), 8, a)
    assert mem["mem_recompute_bytes"] == block_bytes
    off = estimate_training_memory(_model("dit"), 8, MemoryAssumptions(batch_size=2, precision=precision))
    assert off["mem_recompute_bytes"] == 0 and off["mem_saved_bytes"] > mem["mem_saved_bytes"]


@pytest.mark.parametrize("precision,ddp", [("fp32", False), ("bf16", True)])
def test_parameter_sized_parts(precision, ddp):
    mem = estimate_training_memory(_model("dit"), 8, MemoryAssumptions(batch_size=2, precision=precision, ddp=ddp))
    p = TINY_DIT_PARAMS
    assert (mem["mem_params_bytes"], mem["mem_grads_bytes"], mem["mem_optimizer_bytes"], mem["mem_ema_bytes"]) == (
        4 * p,
        4 * p,
        8 * p,
        4 * p,
    )
    assert mem["mem_ddp_buckets_bytes"] == (4 * p if ddp else 0)
    assert mem["mem_autocast_weights_bytes"] == (2 * (p - LABEL_TABLE) if precision == "bf16" else 0)
    parts = [k for k in mem if k.startswith("mem_") and "total" not in k and "expected" not in k]
    assert mem["mem_total_bytes"] == sum(mem[k] for k in parts)
    assert mem["mem_total_expected_bytes"] == mem["mem_total_bytes"]  # DiT: no random draw of depth


def test_sjfb_memory_at_expected_and_maximum_m():
    """with-grad m ~ U{1..3}: E[m] = 2, max 3; one more iteration saves 215,040 bytes (docstring)."""
    model = _model("fpdm", method="sjfb", no_grad_min=0, no_grad_max=3, with_grad_min=1, with_grad_max=3)
    a = MemoryAssumptions(batch_size=2, precision="fp32")
    mem = estimate_training_memory(model, 8, a)
    assert (mem["with_grad_iters_expected"], mem["with_grad_iters_max"]) == (2.0, 3)
    assert mem["mem_saved_bytes"] - mem["mem_saved_expected_bytes"] == 215_040
    assert mem["mem_total_bytes"] - mem["mem_total_expected_bytes"] == 215_040
    assert estimate_training_memory(model, 8, a) == mem  # no random draw: the same every time
    jfb = _model("fpdm", method="jfb", no_grad_min=0, no_grad_max=3, with_grad_min=1, with_grad_max=3)
    jfb_mem = estimate_training_memory(jfb, 8, a)  # m = 1 always: one iteration below S-JFB's E[m] = 2
    assert (
        jfb_mem["mem_saved_bytes"] == jfb_mem["mem_saved_expected_bytes"] == mem["mem_saved_expected_bytes"] - 215_040
    )


def test_headline_is_the_peak_at_the_maximum_with_grad_iterations():
    """The headline (mem_total_bytes) is what the largest S-JFB draw holds: with m ~ U{lo..hi} it
    grows by one iteration's 215,040 bytes per unit of hi and not at all with lo; the expectation
    (lo + hi) / 2 grows by half an iteration, 107,520 bytes, with either."""
    a = MemoryAssumptions(batch_size=2, precision="fp32")

    def mem(lo, hi):
        spec = dict(method="sjfb", no_grad_min=0, no_grad_max=3, with_grad_min=lo, with_grad_max=hi)
        return estimate_training_memory(_model("fpdm", **spec), 8, a)

    base, more_max, more_min = mem(1, 3), mem(1, 4), mem(2, 3)
    assert more_max["mem_total_bytes"] - base["mem_total_bytes"] == 215_040
    assert more_min["mem_total_bytes"] == base["mem_total_bytes"]
    assert more_max["mem_total_expected_bytes"] - base["mem_total_expected_bytes"] == 107_520
    assert more_min["mem_total_expected_bytes"] - base["mem_total_expected_bytes"] == 107_520
    # a fixed m = 3 (multi-step JFB) is the same step as S-JFB's largest draw
    fixed = estimate_training_memory(
        _model("fpdm", method="multistep_jfb", no_grad_min=0, no_grad_max=3, with_grad_min=3, with_grad_max=3), 8, a
    )
    assert fixed["mem_total_bytes"] == base["mem_total_bytes"]


@pytest.mark.parametrize(
    "overrides,ddp",
    [
        (["protocol=paper"], True),
        (["protocol=official"], True),
        ([], False),  # digits: the harness trains in one process
        (["protocol=paper", "inspect.ddp=false"], False),
        (["inspect.ddp=true"], True),
    ],
)
def test_ddp_is_assumed_where_the_protocols_training_ran_it(overrides, ddp):
    """The official train.py (protocol=paper / official) is a DDP job; inspect.ddp overrides."""
    from hydra import compose, initialize_config_module

    import harness.config  # noqa: F401  (fills the ConfigStore)
    from harness.compute.memory_estimate import assumptions_from_config

    with initialize_config_module("harness.config", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    a = assumptions_from_config(cfg)
    assert a.ddp is ddp
    line = next(d for d in a.describe() if "DDP" in d)
    assert line.startswith("DDP gradient buckets" if ddp else "single process")
    assert ("inspect.ddp=" in line) == any(o.startswith("inspect.ddp") for o in overrides)


@pytest.mark.parametrize(
    "method,expected",
    [
        ("sjfb", (6.5, 12)),
        ("jfb", (1.0, 1)),
        ("multistep_jfb", (12.0, 12)),
        ("full", (11.5, 22)),
        ("implicit", (1.0, 1)),
    ],
)
def test_with_grad_iterations_per_method(method, expected):
    """The paper's official draws: no-grad U{0..10}, with-grad U{1..12}; full backpropagates
    through both (E = 5 + 6.5)."""
    from fpdm.training_modes import ImplicitTrainSpec

    spec = ImplicitTrainSpec(method=method, no_grad_min=0, no_grad_max=10, with_grad_min=1, with_grad_max=12)
    assert with_grad_iterations(spec) == expected


def test_paper_scale_estimate_headline_is_the_peak_under_ddp_beside_table_1():
    """Paper Table 1: DiT-XL/2 25.2 GB, FPDM-XL/2 10.2 GB at batch 64, FPDM/DiT = 10.2 / 25.2 =
    0.405. The official training is a DDP job, so its buckets (4 bytes per parameter) are counted;
    the headline ratio is FPDM's peak (m = 12) over DiT, the expectation (m = 6.5) second."""
    from harness.compute.memory_estimate import paper_scale_estimate

    est = paper_scale_estimate()
    dit, fpdm = est["dit"], est["fpdm"]
    assert dit["mem_params_bytes"] == 674_834_720 * 4 and fpdm["mem_params_bytes"] == 86_500_256 * 4
    assert dit["mem_ddp_buckets_bytes"] == 674_834_720 * 4 and fpdm["mem_ddp_buckets_bytes"] == 86_500_256 * 4
    assert est["assumptions"]["ddp"] is True
    assert (fpdm["with_grad_iters_expected"], fpdm["with_grad_iters_max"]) == (6.5, 12)
    assert fpdm["mem_total_expected_bytes"] < fpdm["mem_total_bytes"]
    # checkpointing on: the recompute peak is one XL block, the same block in both models
    assert dit["mem_recompute_bytes"] == fpdm["mem_recompute_bytes"] > 0
    assert any("autocast" in n for n in est["assumptions"]["notes"])
    assert est["ratio_fpdm_to_dit"] == fpdm["mem_total_bytes"] / dit["mem_total_bytes"]
    assert est["ratio_fpdm_to_dit_expected"] == fpdm["mem_total_expected_bytes"] / dit["mem_total_bytes"]
    assert round(est["paper_ratio_fpdm_to_dit"], 4) == 0.4048
    assert (dit["paper_gb"], fpdm["paper_gb"]) == (25.2, 10.2) and dit["comparable"] and fpdm["comparable"]
    assert fpdm["ratio_to_paper"] == fpdm["mem_total_bytes"] / (10.2 * 2**30)
    text = est["disagreement"]
    assert f"{est['ratio_fpdm_to_dit']:.2f}x where the paper has 0.40x" in text
    assert f"fpdm {fpdm['mem_total_bytes'] / 2**30:.2f} GiB vs 10.2 GB" in text
    single = paper_scale_estimate(ddp=False)["dit"]
    assert dit["mem_total_bytes"] - single["mem_total_bytes"] == 674_834_720 * 4


def test_paper_comparison_only_for_the_papers_models_at_batch_64():
    from harness.compute.memory_estimate import paper_comparison

    mem = {"mem_total_bytes": 2 * 2**30, "mem_total_expected_bytes": 2**30}
    row = paper_comparison("fpdm", mem, 86_500_256, (4, 32), 64)
    assert row["comparable"] and row["ratio_to_paper"] == 2 / 10.2 and row["ratio_expected_to_paper"] == 1 / 10.2
    assert not paper_comparison("fpdm", mem, 86_500_256, (4, 32), 16)["comparable"]  # batch 16
    assert "batch 64" in paper_comparison("fpdm", mem, 86_500_256, (4, 32), 16)["why"]
    assert not paper_comparison("fpdm", mem, 478_600, (4, 32), 64)["comparable"]  # not XL/2
    assert not paper_comparison("dit", mem, 674_834_720, (4, 64), 64)["comparable"]  # 512 px latents
