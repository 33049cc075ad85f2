"""Training compute (harness/compute/train_compute.py) in forward-equivalents (unit=compute, the
paper's block accounting) and in FLOPs (unit=flops): hand counts for every training method on the
tiny model (1 pre + 1 post explicit blocks, DiT depth 6), counted from what the training modes
report, and the budgets stopping where the pre-check said they would.

Per image-step, by hand: forward 1, backward 2, checkpoint recompute 1, adjoint VJP 2 per block pass;
the explicit blocks (2 for FPDM, 6 for DiT) always run forward and backward. In FLOPs the same
weights apply to the measured forward: the part run once per forward E (DiT: its whole forward) and
one fixed point iteration I, from the closed forms of tests/test_flops.py (tiny, 8x8x1 digits).
"""

from __future__ import annotations

import pytest
import torch
from config_helpers import digits_data, structured_config

from fpdm.training_modes import ImplicitTrainSpec, get_training_mode, planned_counts
from harness.stages.train import train_model

pytestmark = pytest.mark.usefixtures("one_thread")

N, M = 2, 3  # no-grad and with-grad iterations, fixed (min = max) so the draw is known
HAND = {  # forward-equivalents per image-step
    "sjfb": 2 * 3 + N * 1 + M * 3,  # 17
    "jfb": 2 * 3 + N * 1 + 1 * 3,  # 11
    "multistep_jfb": 2 * 3 + N * 1 + M * 3,  # 17
    "full": 2 * 3 + (N + M) * 3,  # 21: backprop through all n + m
    "implicit": 2 * 3 + (N + M) * 1 + 3 + (N + M) * 2,  # 24: tol 0 runs both solves to N + M
}
# FLOPs per image of one forward (tests/test_flops.py: E_TINY, I_TINY, DIT_TINY, block(16, 64))
E, I, DIT, BLOCK = 3_899_392, 2_162_688, 10_207_232, 1_687_552
HAND_FLOPS = {  # FLOPs per image-step: 3 E, then each evaluation by kind (an iteration costs I, not one block)
    "sjfb": 3 * E + I * (N + 3 * M),  # 11,698,176 + 23,789,568 = 35,487,744
    "jfb": 3 * E + I * (N + 3),
    "multistep_jfb": 3 * E + I * (N + 3 * M),
    "full": 3 * E + I * 3 * (N + M),
    "implicit": 3 * E + I * ((N + M) + 3 + 2 * (N + M)),
}
BATCH = 8


@pytest.fixture(scope="module")
def data():
    return digits_data()


def _cfg(**over):
    return structured_config(
        {
            "train.batch_size": BATCH,
            "train.log_every": 1,
            "train.iters.no_grad.min": N,
            "train.iters.no_grad.max": N,
            "train.iters.with_grad.min": M,
            "train.iters.with_grad.max": M,
            "train.implicit_tol": 0.0,
            **over,
        }
    )


def _train(cfg, data, tmp_path):
    from harness.diffusion.spec import diffusion_spec
    from harness.stages.models import build_model

    torch.manual_seed(0)
    model = build_model(
        cfg.model, cfg.train, image_size=data.image_size, channels=data.channels, num_classes=data.num_classes
    )
    return train_model(model, data, diffusion_spec(cfg), cfg, tmp_path, torch.device("cpu"), progress=False)


@pytest.mark.parametrize("method", list(HAND))
def test_fpdm_training_compute_equals_the_hand_count(method, data, tmp_path):
    s = _train(_cfg(**{"train.method": method, "train.budget.value": 2}), data, tmp_path)
    assert s["train_steps"] == 2
    assert s["train_compute_fwd_equiv"] == 2 * HAND[method]
    assert s["train_flops_per_image"] == 2 * HAND_FLOPS[method]
    assert s["train_flops"] == BATCH * 2 * HAND_FLOPS[method]
    forward = {"jfb": N + 1, "implicit": N + M + 1}.get(method, N + M)
    assert s["train_block_passes_per_image"] == 2 * (2 + forward)  # forward passes stay as they were


@pytest.mark.parametrize("ckpt,per_step,flops_per_step", [(False, 3 * 6, 3 * DIT), (True, 4 * 6, 3 * DIT + 6 * BLOCK)])
def test_dit_costs_three_forwards_per_block_plus_the_recompute(ckpt, per_step, flops_per_step, data, tmp_path):
    cfg = _cfg(**{"model.name": "dit", "model.grad_checkpointing": ckpt, "train.budget.value": 2})
    s = _train(cfg, data, tmp_path)
    assert s["train_compute_fwd_equiv"] == 2 * per_step and s["train_block_passes_per_image"] == 2 * 6
    assert s["train_flops_per_image"] == 2 * flops_per_step  # 61,243,392 without the recompute
    assert s["train_flops"] == BATCH * 2 * flops_per_step


def test_fpdm_checkpointing_recomputes_the_explicit_blocks_only(data, tmp_path):
    cfg = _cfg(**{"train.method": "sjfb", "model.grad_checkpointing": True, "train.budget.value": 1})
    s = _train(cfg, data, tmp_path)
    assert s["train_compute_fwd_equiv"] == HAND["sjfb"] + 2
    assert s["train_flops_per_image"] == HAND_FLOPS["sjfb"] + 2 * BLOCK


def test_sjfb_and_multistep_jfb_differ_when_the_draws_do(data, tmp_path):
    """n ~ U[0, 2], m ~ U[1, 3]. S-JFB counts what it drew; multi-step JFB always runs N = 2, M = 3.
    train.seed=0 draws (n, m) = (0, 1), (0, 2), (2, 2) at steps 0-2 (stream 2 of each step), so by hand:
    S-JFB        passes 3 + 4 + 6 = 13, compute 9 + 12 + 14 = 35, FLOPs 9 E + (2 + 3 x 5) I = 71,860,224
    multi-step   passes 3 x 7 = 21,     compute 3 x 17 = 51,      FLOPs 9 E + 3 (2 + 3 x 3) I = 106,463,232"""
    over = {"train.iters.no_grad.min": 0, "train.iters.with_grad.min": 1, "train.budget.value": 3}
    sjfb = _train(_cfg(**{"train.method": "sjfb", **over}), data, tmp_path / "sjfb")
    multi = _train(_cfg(**{"train.method": "multistep_jfb", **over}), data, tmp_path / "multi")
    assert (sjfb["train_block_passes_per_image"], sjfb["train_compute_fwd_equiv"]) == (13, 35)
    assert (multi["train_block_passes_per_image"], multi["train_compute_fwd_equiv"]) == (21, 51)
    assert sjfb["train_flops_per_image"] == 9 * E + 17 * I == 71_860_224
    assert multi["train_flops_per_image"] == 9 * E + 33 * I == 106_463_232


def test_a_flops_budget_stops_at_the_hand_counted_step(data, tmp_path):
    """unit=flops, budget = two S-JFB steps at fixed N, M (2 x 35,487,744): the run stops after 2 steps
    on the budget exactly; one FLOP more needs a third step. The block count would charge an
    iteration one block: the FLOP count charges I = 1.28 blocks."""
    budget = 2 * HAND_FLOPS["sjfb"]
    assert budget == 70_975_488 and round(I / BLOCK, 2) == 1.28
    s = _train(_cfg(**{"train.budget.unit": "flops", "train.budget.value": budget}), data, tmp_path / "a")
    assert (s["train_steps"], s["train_flops_per_image"]) == (2, budget)
    cfg = _cfg(**{"train.budget.unit": "flops", "train.budget.value": budget + 1})
    assert _train(cfg, data, tmp_path / "b")["train_steps"] == 3


def test_the_flops_precheck_names_the_steps_either_side():
    """Before training, on a shape-only model: 2.5 S-JFB steps of FLOPs fall between 70,975,488
    (2 steps) and 106,463,232 (3 steps, +20%); one FLOP short of 3 steps is within 1%."""
    from harness.compute.flops import flop_breakdown
    from harness.compute.train_compute import check_compute_budget
    from harness.stages.models import build_model

    cfg = _cfg(**{"train.budget.unit": "flops", "train.budget.value": 2.5 * HAND_FLOPS["sjfb"]})
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.train, image_size=8, channels=1, num_classes=10)
    flops = flop_breakdown(model, 8)
    msg = check_compute_budget(cfg, flops)
    assert "spends 70975488 FLOPs per image after 2 steps and 106463232 after 3 (+20.0%)" in msg
    assert "set train.budget.value=70975488 or 106463232" in msg
    cfg.train.budget.value = 3 * HAND_FLOPS["sjfb"] - 1
    assert check_compute_budget(cfg, flops) is None


class _Linear(torch.nn.Module):
    """f(z) = 0.5 z + x: a contraction whose fixed point is 2x."""

    def forward(self, z, x):
        return 0.5 * z + x


def test_implicit_counts_the_vjps_backward_actually_ran(monkeypatch):
    """With a tolerance both solves stop early; the count is what autograd.grad was called for."""
    calls = {"grad": 0}
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grad"] += 1
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    x = torch.randn(3, 4, requires_grad=True)
    spec = ImplicitTrainSpec("implicit", 0, 30, 1, 30, implicit_solver="picard", implicit_tol=1e-3)
    z, counts = get_training_mode("implicit")(lambda z: _Linear()(z, x), torch.zeros(3, 4), spec)
    assert counts.vjp == 0  # nothing runs before backward
    z.sum().backward()
    assert counts.vjp == calls["grad"] and 0 < counts.vjp < 60
    assert counts.with_grad == 1 and 0 < counts.no_grad < 60
    # rel. residual of Picard on a 0.5-contraction halves each step: about log2(1/1e-3) = 10 steps
    assert 8 <= counts.no_grad <= 12 and 8 <= counts.vjp <= 12
    assert planned_counts("implicit", spec) is None  # a tolerance makes the count data-dependent


@pytest.mark.parametrize("method", ["sjfb", "full"])
def test_planned_counts_are_the_draws_the_mode_makes(method):
    spec = ImplicitTrainSpec(method, 0, 5, 1, 4)
    for seed in range(20):
        planned = planned_counts(method, spec, torch.Generator().manual_seed(seed))
        _, ran = get_training_mode(method)(lambda z: z * 0.5, torch.ones(1), spec, torch.Generator().manual_seed(seed))
        assert planned == ran


def test_an_unpriceable_recompute_is_recorded_unknown_and_refused_as_a_budget(data, tmp_path):
    """The diffusers DiT has no per-block FLOP count, so its checkpoint recompute cannot be priced:
    the run records NaN FLOPs (not a wrong number) under another unit, and refuses unit=flops."""
    import math

    over = {"model.name": "dit_diffusers", "model.grad_checkpointing": True, "train.budget.value": 1}
    s = _train(_cfg(**over), data, tmp_path / "steps")
    assert s["train_steps"] == 1 and math.isnan(s["train_flops_per_image"])
    with pytest.raises(ValueError, match="cannot price gradient checkpointing's recompute"):
        _train(_cfg(**{**over, "train.budget.unit": "flops", "train.budget.value": 1e9}), data, tmp_path / "flops")
