"""Compute accounting for both model families: parameters by part, block passes, FLOPs.

Block passes are the paper's unit (FPDM Sec. 4.2: ``(n_pre + k + n_post)`` per step for FPDM,
``depth`` per step for DiT). FLOPs are measured with ``torch.utils.flop_counter`` on the real
forward, so the injection MLP that runs inside every fixed point iteration (about 0.48 of a block
at XL, paper-facts 8.4, ignored by the paper's count) is shown, not hidden. Everything here works
on the meta device, so the paper's XL/2 configuration is counted without allocating it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def params_by_part(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per part named in ``model.param_parts``, plus ``total``; a parameter in
    no listed part lands in ``other`` so the parts always sum to the total."""
    parts = {name: 0 for name in model.param_parts}
    parts["other"] = 0
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        top = pname.split(".")[0]
        part = next((k for k, prefixes in model.param_parts.items() if top in prefixes), "other")
        parts[part] += p.numel()
    if not parts["other"]:
        del parts["other"]
    parts["total"] = count_params(model)
    return parts


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call (a multiply-add counts as 2), measured by torch's dispatcher-level counter."""
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            fn(*args, **kwargs)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class FlopBreakdown:
    """FLOPs per image of one model forward, split so a budget can be matched in FLOPs."""

    per_forward: int  # one forward at the given iterations (FPDM) or depth (DiT)
    explicit_per_forward: int  # everything but the fixed point iterations
    block: int  # one transformer block
    per_iteration: int  # one fixed point evaluation as run, measured as the cost of one more iteration (0 for DiT)
    injection_per_iteration: int  # the injection MLP as a module, cat([z, x_inj]) included (0 for DiT)

    @property
    def injection_to_block(self) -> float:
        return self.injection_per_iteration / self.block if self.block else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "injection_to_block": self.injection_to_block}


def _dummy_inputs(model: nn.Module, image_size: int, batch: int, device) -> tuple:
    x = torch.zeros(batch, model.in_channels, image_size, image_size, device=device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    return x, t, y


def flop_breakdown(model: nn.Module, image_size: int, iters: int | None = None) -> FlopBreakdown:
    """Measure per-image FLOPs of one forward (batch 1) in eval mode, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        x, t, y = _dummy_inputs(model, image_size, 1, device)
        tokens = (image_size // model.patch_size) ** 2
        if model.is_implicit:
            hidden = model.pre_projection.in_features
            iters = model.default_iters if iters is None else iters
            total = count_flops(model, x, t, y, iters=iters)
            one = count_flops(model, x, t, y, iters=1)
            # marginal cost: the solve computes its loop invariants (the x_inj half of fc1, the
            # adaLN vectors) once per forward, so they belong to the explicit part
            per_iter = count_flops(model, x, t, y, iters=2) - one
            z = torch.zeros(1, tokens, hidden, device=device)
            c = torch.zeros(1, hidden, device=device)
            block = count_flops(model.fixed_point.block, z, c)
            inj = count_flops(model.fixed_point.injection, z, z)
            return FlopBreakdown(total, one - per_iter, block, per_iter, inj)
        total = count_flops(model, x, t, y)
        hidden = model.blocks[0].attn.qkv.in_features
        z = torch.zeros(1, tokens, hidden, device=device)
        c = torch.zeros(1, hidden, device=device)
        block = count_flops(model.blocks[0], z, c)
        return FlopBreakdown(total, total, block, 0, 0)
    finally:
        model.train(was_training)


def sampling_flops(breakdown: FlopBreakdown, iters_per_step: list[int] | tuple[int, ...] | None, steps: int) -> int:
    """FLOPs per image of a whole sampling run (without classifier-free guidance doubling)."""
    if iters_per_step is None:
        return breakdown.per_forward * steps
    return breakdown.explicit_per_forward * steps + breakdown.per_iteration * sum(iters_per_step)
