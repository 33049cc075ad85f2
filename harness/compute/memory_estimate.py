"""Training-memory estimate on the meta device: nothing is allocated, so XL/2 is counted anywhere.

One training step holds (bytes; P = trainable parameters):

- fp32 master weights, gradients, AdamW's two moments and the EMA copy: ``4P`` each (``8P`` Adam);
- with ``ddp``: DistributedDataParallel's gradient buckets, one more fp32 gradient-sized buffer
  (``gradient_as_bucket_view=False``, the default): ``4P``;
- under bf16 autocast: one bf16 copy of every weight a matmul consumes, cached by autocast for
  the whole forward and kept for backward: ``2P'`` (P' = parameters of linear / conv layers; the
  label table and the position buffer are not cast);
- the activations autograd saves for backward, counted per storage (``saved_tensor_bytes``) under
  modelled CUDA autocast (``harness.compute.autocast_model``: matmul outputs bf16, LayerNorm and the
  residual stream fp32) and with a fused attention kernel;
- with gradient checkpointing: the explicit blocks save their inputs only, and backward recomputes
  one block at a time, so the peak adds one block's saved activations (``mem_recompute_bytes``).

FPDM's fixed point layer saves activations for the m iterations run with gradient (S-JFB, FPDM
Sec. 3.4; the n no-grad iterations run under ``torch.no_grad`` and save nothing). Every iteration
saves the same tensors, so the saved bytes are measured at m=1 and m=2 and extrapolated linearly
(exact), and reported at the expectation of m over the training draw and at its maximum, per
``train.method`` - no random draw happens here, so the estimate is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from harness.compute.autocast_model import AutocastModel

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from fpdm.training_modes import ImplicitTrainSpec

PAPER_TRAIN_MEMORY_GB = {"dit": 25.2, "fpdm": 10.2}  # FPDM paper Table 1, batch 64


@dataclass(frozen=True)
class MemoryAssumptions:
    batch_size: int = 64
    precision: str = "bf16"  # fp32 | bf16 (CUDA autocast over fp32 master weights)
    grad_checkpointing: bool = False  # on every explicit block (the official default), never on f
    ddp: bool = False  # DistributedDataParallel gradient buckets
    optimizer_states: int = 2  # AdamW: two moments per parameter
    ema: bool = True

    def describe(self, method: str | None = None) -> list[str]:
        """The assumptions in words, for ``harness.inspect`` and the paper-scale report."""
        act = (
            "CUDA autocast bf16: matmul outputs bf16, LayerNorm and residual stream fp32, one bf16 copy "
            "per matmul weight"
            if self.precision == "bf16"
            else "fp32 activations"
        )
        lines = [
            f"batch {self.batch_size}; fp32 weights, gradients, AdamW ({self.optimizer_states} moments)"
            + (", EMA" if self.ema else ""),
            f"activations: {act}",
            "attention: a fused kernel saves q, k, v, output and a fp32 log-sum-exp (no N x N matrix)",
            (
                "gradient checkpointing on explicit blocks: they save their inputs; backward recomputes one "
                "block at a time (peak + one block)"
            )
            if self.grad_checkpointing
            else "no gradient checkpointing",
            "DDP gradient buckets: one fp32 gradient-sized buffer" if self.ddp else "single process (no DDP buckets)",
        ]
        if method is not None:
            lines.append(
                f"fixed point layer ({method}): saved activations at the expected and the maximum number of "
                "with-grad iterations; no-grad iterations save nothing"
            )
        if method == "implicit":
            lines.append("implicit: the adjoint solver's history buffers are not counted")
        lines.append("excludes: CUDA context, allocator fragmentation, temporaries freed within an op")
        return lines


# with-grad iterations of the fixed point layer per training method: (expectation, maximum) over
# the uniform integer draws of fpdm.training_modes (both ends included)
_WITH_GRAD: dict[str, Callable] = {
    "sjfb": lambda s: ((s.with_grad_min + s.with_grad_max) / 2, s.with_grad_max),
    "jfb": lambda s: (1.0, 1),
    "multistep_jfb": lambda s: (float(s.with_grad_max), s.with_grad_max),
    "full": lambda s: (
        (s.no_grad_min + s.no_grad_max + s.with_grad_min + s.with_grad_max) / 2,
        s.no_grad_max + s.with_grad_max,
    ),
    "implicit": lambda s: (1.0, 1),  # one application of f with graph at the solution
}


def with_grad_iterations(spec: ImplicitTrainSpec) -> tuple[float, int]:
    """(E[m], max m): iterations of the fixed point layer that backward differentiates through."""
    try:
        return _WITH_GRAD[spec.method](spec)
    except KeyError:
        raise KeyError(f"train.method={spec.method!r} has no memory rule; valid: {', '.join(_WITH_GRAD)}") from None


def _inputs(model: nn.Module, batch: int, image_size: int):
    x = torch.zeros(batch, model.in_channels, image_size, image_size)
    t = torch.zeros(batch, dtype=torch.long)
    y = torch.zeros(batch, dtype=torch.long)
    return x, t, y, torch.zeros(batch, dtype=torch.bool)  # no label dropped: no random draw


def _saved(fn: Callable, model: nn.Module, precision: str) -> tuple[int, int]:
    """(saved activation bytes, autocast weight-copy bytes) of one forward."""
    from harness.compute.memory import saved_tensor_bytes

    with AutocastModel(torch.bfloat16 if precision == "bf16" else None) as ac:
        saved, _ = saved_tensor_bytes(fn, exclude=model, exclude_tensors=lambda: ac.weight_copies)
    return saved, ac.weight_copy_bytes


def _forward_saved(model, image_size, a: MemoryAssumptions, m: int | None) -> tuple[int, int]:
    x, t, y, keep = _inputs(model, a.batch_size, image_size)
    if m is None:
        return _saved(lambda: model(x, t, y, drop_labels=keep).float().square().mean(), model, a.precision)
    from fpdm.training_modes import ImplicitTrainSpec

    spec = model.train_spec
    model.train_spec = ImplicitTrainSpec(
        method="multistep_jfb", no_grad_min=0, no_grad_max=0, with_grad_min=m, with_grad_max=m
    )
    try:
        return _saved(lambda: model(x, t, y, drop_labels=keep).float().square().mean(), model, a.precision)
    finally:
        model.train_spec = spec


def _recompute_peak(model, image_size, a: MemoryAssumptions) -> int:
    """One checkpointed explicit block's saved activations, live while backward recomputes it."""
    blocks = [*getattr(model, "blocks", []), *getattr(model, "pre_blocks", []), *getattr(model, "post_blocks", [])]
    if not (a.grad_checkpointing and blocks):
        return 0
    block = blocks[0]
    hidden = block.attn.qkv.in_features
    tokens = (image_size // model.patch_size) ** 2
    h = torch.zeros(a.batch_size, tokens, hidden, requires_grad=True)
    c = torch.zeros(a.batch_size, hidden, requires_grad=True)
    return _saved(lambda: block(h, c), block, a.precision)[0]


def estimate_training_memory(model: nn.Module, image_size: int, assumptions: MemoryAssumptions) -> dict:
    """Bytes of one training step of ``model`` (built on the meta device) under ``assumptions``;
    ``*_max`` entries at the maximum with-grad iterations, the others at their expectation."""
    from harness.compute.memory import parameter_bytes

    a = assumptions
    with torch.device("meta"):
        model = model.to("meta").train()
        model.grad_checkpointing = a.grad_checkpointing
        params = parameter_bytes(model)
        if getattr(model, "is_implicit", False):
            expected_m, max_m = with_grad_iterations(model.train_spec)
            s1, copies = _forward_saved(model, image_size, a, 1)
            s2, _ = _forward_saved(model, image_size, a, 2)
            per_iter = s2 - s1
            saved, saved_max = round(s1 + (expected_m - 1) * per_iter), s1 + (max_m - 1) * per_iter
        else:
            expected_m = max_m = None
            saved, copies = _forward_saved(model, image_size, a, None)
            saved_max = saved
        recompute = _recompute_peak(model, image_size, a)
    static = {
        "mem_params_bytes": params,
        "mem_grads_bytes": params,
        "mem_optimizer_bytes": a.optimizer_states * params,
        "mem_ema_bytes": params if a.ema else 0,
        "mem_ddp_buckets_bytes": params if a.ddp else 0,
        "mem_autocast_weights_bytes": copies,
    }
    fixed = sum(static.values()) + recompute
    return {
        **static,
        "mem_saved_bytes": saved,
        "mem_saved_max_bytes": saved_max,
        "mem_recompute_bytes": recompute,
        "mem_total_bytes": fixed + saved,
        "mem_total_max_bytes": fixed + saved_max,
        "with_grad_iters_expected": expected_m,
        "with_grad_iters_max": max_m,
    }


def paper_scale_estimate(
    batch_size: int = 64,
    precision: str = "bf16",
    grad_checkpointing: bool = True,
    ddp: bool = False,
    method: str = "sjfb",
    no_grad: tuple[int, int] = (0, 10),
    with_grad: tuple[int, int] = (1, 12),
) -> dict:
    """DiT-XL/2 vs FPDM-XL/2 (1 pre + 1 post) on 32x32x4 latents, 1000 classes, learned sigma,
    beside the paper's 25.2 GB vs 10.2 GB (Table 1). Defaults follow the official training code:
    bf16 autocast, checkpointed explicit blocks, S-JFB with no-grad 0..10 and with-grad 1..12."""
    from baselines.dit import build_dit
    from fpdm.model import build_fpdm
    from fpdm.training_modes import ImplicitTrainSpec

    a = MemoryAssumptions(batch_size=batch_size, precision=precision, grad_checkpointing=grad_checkpointing, ddp=ddp)
    spec = ImplicitTrainSpec(
        method=method,
        no_grad_min=no_grad[0],
        no_grad_max=no_grad[1],
        with_grad_min=with_grad[0],
        with_grad_max=with_grad[1],
    )
    with torch.device("meta"):
        models = {
            "dit": build_dit("XL/2", input_size=32, in_channels=4, num_classes=1000),
            "fpdm": build_fpdm("XL/2", input_size=32, in_channels=4, num_classes=1000, train_spec=spec),
        }
    result: dict = {
        "assumptions": {
            **asdict(a),
            "method": method,
            "no_grad": list(no_grad),
            "with_grad": list(with_grad),
            "notes": a.describe(method),
        }
    }
    for name, model in models.items():
        result[name] = {**estimate_training_memory(model, 32, a), "paper_gb": PAPER_TRAIN_MEMORY_GB[name]}
    dit, fpdm = result["dit"], result["fpdm"]
    result["ratio_fpdm_to_dit"] = fpdm["mem_total_bytes"] / dit["mem_total_bytes"]
    result["ratio_fpdm_to_dit_max"] = fpdm["mem_total_max_bytes"] / dit["mem_total_bytes"]
    result["paper_ratio_fpdm_to_dit"] = PAPER_TRAIN_MEMORY_GB["fpdm"] / PAPER_TRAIN_MEMORY_GB["dit"]
    return result


def assumptions_from_config(cfg: DictConfig, ddp: bool = False) -> MemoryAssumptions:
    return replace(
        MemoryAssumptions(),
        batch_size=int(cfg.train.batch_size),
        precision=str(cfg.train.precision),
        grad_checkpointing=bool(cfg.model.grad_checkpointing),
        ddp=ddp,
    )
