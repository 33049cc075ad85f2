"""Training compute in forward-equivalents (harness/train_compute.py): hand counts for every
training method on the tiny model (1 pre + 1 post explicit blocks, DiT depth 6), counted from what
the training modes report, and the compute budget stopping where the pre-check said it would.

Per image-step, by hand: forward 1, backward 2, checkpoint recompute 1, adjoint VJP 2 per block pass;
the explicit blocks (2 for FPDM, 6 for DiT) always run forward and backward.
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


@pytest.fixture(scope="module")
def data():
    return digits_data()


def _cfg(**over):
    return structured_config(
        {
            "train.batch_size": 8,
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
    forward = {"jfb": N + 1, "implicit": N + M + 1}.get(method, N + M)
    assert s["train_block_passes_per_image"] == 2 * (2 + forward)  # forward passes stay as they were


@pytest.mark.parametrize("ckpt,per_step", [(False, 3 * 6), (True, 4 * 6)])
def test_dit_costs_three_forwards_per_block_plus_the_recompute(ckpt, per_step, data, tmp_path):
    cfg = _cfg(**{"model.name": "dit", "model.grad_checkpointing": ckpt, "train.budget.value": 2})
    s = _train(cfg, data, tmp_path)
    assert s["train_compute_fwd_equiv"] == 2 * per_step and s["train_block_passes_per_image"] == 2 * 6


def test_fpdm_checkpointing_recomputes_the_explicit_blocks_only(data, tmp_path):
    cfg = _cfg(**{"train.method": "sjfb", "model.grad_checkpointing": True, "train.budget.value": 1})
    assert _train(cfg, data, tmp_path)["train_compute_fwd_equiv"] == HAND["sjfb"] + 2


def test_compute_budget_stops_where_the_replayed_draws_say(data, tmp_path):
    """Random S-JFB draws: the pre-check replays the seeded draws; the run spends exactly that."""
    from harness.compute.train_compute import _replay, _step_costs

    cfg = _cfg(**{"train.method": "sjfb", "train.budget.unit": "compute", "train.budget.value": 60})
    cfg.train.iters.no_grad.min, cfg.train.iters.with_grad.min = 0, 1
    cost_at, _, _ = _step_costs(cfg)
    steps, before, spent = next(_replay(cost_at, 60))
    assert before < 60 <= spent
    s = _train(cfg, data, tmp_path)
    assert (s["train_steps"], s["train_compute_fwd_equiv"]) == (steps, spent)


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
