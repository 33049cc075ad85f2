"""FLOPs of every model, counted one way: ``torch.utils.flop_counter`` over a shape-only run.

The convention is the flop counter's: a multiply-add counts 2, and only matrix products are
counted (linear layers, the patch convolution and the two attention products); LayerNorm,
softmax, GELU, adaLN modulation and residual adds are not. Under that convention one adaLN-Zero
DiT block (DiT Sec. 3.2) on N tokens of width D with MLP ratio 4 costs

    qkv projection     2 * N * D * 3D   =  6 N D^2
    output projection  2 * N * D * D    =  2 N D^2
    MLP fc1 + fc2      2 * N * D * 4D*2 = 16 N D^2
    Q K^T and A V      2 * 2 * N^2 * D  =  4 N^2 D   (summed over heads: H * N^2 * D/H)
    adaLN modulation   2 * D * 6D       = 12 D^2     (one conditioning vector per image)
    -------------------------------------------------
    block              24 N D^2 + 4 N^2 D + 12 D^2

(tiny preset, 8x8 input, patch 2: N=16, D=64 -> 1,687,552). One FPDM fixed point iteration
(paper Sec. 3.2) is that block plus the injection MLP ``fc2(gelu(fc1([z, x_inj])))`` with fc1
2D->2D and fc2 2D->D: ``2 N (2D)(2D) + 2 N (2D) D = 12 N D^2``, about 0.47 of a block at the tiny
preset and 0.48 at XL/2 (paper footnote 3 calls it negligible). The official code recomputes all
of it every iteration; ours hoists the loop invariants out of the solve (fpdm/model.py): the
x_inj half of fc1 (``2 N D (2D) = 4 N D^2``) and the block's adaLN vectors (``12 D^2``) are
computed once per forward, so one iteration as run costs ``24 N D^2 + 4 N^2 D + 8 N D^2`` and
``FlopBreakdown.per_iteration`` is measured as exactly that marginal cost.

Why one path: torch counts ``scaled_dot_product_attention`` only through the kernels it has a
formula for, and the CPU kernel is not one of them, so counting on the real device dropped the
4 N^2 D attention term on CPU while the DiT side of a FLOP match (built on the meta device) kept
it. Here every count runs the model's own forward with meta copies of its parameters, buffers and
inputs (``torch.func.functional_call``): nothing is allocated, the real weights are untouched,
attention is decomposed into counted matrix products on every host, and XL/2 counts on a laptop.
Records, ``sample.match=flops`` (both sides), ``harness.inspect`` and the reports all use
``flop_breakdown`` below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from baselines.presets import Preset

# Hashed into sample cache keys: a change of counting convention re-plans FLOP-matched samples
# and refreshes the FLOP figures cached with a sample stage.
FLOP_COUNT_VERSION = 2

__all__ = [
    "FLOP_COUNT_VERSION",
    "FlopBreakdown",
    "count_flops",
    "meta_flops",
    "flop_breakdown",
    "sampling_flops",
    "dit_flops_per_forward",
]


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs of one call as torch's dispatcher-level counter sees it, on whatever device the
    arguments live (prefer ``meta_flops``: the CPU attention kernel is invisible to this)."""
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            fn(*args, **kwargs)
    return int(counter.get_total_flops())


def _to_meta(value):
    return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value


def meta_flops(module: nn.Module, *args, **kwargs) -> int:
    """FLOPs of ``module(*args, **kwargs)`` run on shapes only: parameters, buffers and tensor
    arguments replaced by meta tensors of the same shape and dtype."""
    state = {name: _to_meta(t) for name, t in (*module.named_parameters(), *module.named_buffers())}
    args, kwargs = tree_map(_to_meta, args), tree_map(_to_meta, kwargs)
    return count_flops(functional_call, module, state, args, kwargs)


@dataclass(frozen=True)
class FlopBreakdown:
    """FLOPs per image of one model forward, split so a budget can be matched in FLOPs."""

    per_forward: int  # one forward at the given iterations (FPDM) or depth (DiT)
    explicit_per_forward: int  # everything but the fixed point iterations
    block: int  # one transformer block
    per_iteration: int  # one fixed point evaluation as run: the cost of one more iteration (0 for DiT)
    injection_per_iteration: int  # the injection MLP as a module, both halves of its first layer (0 for DiT)

    @property
    def injection_to_block(self) -> float:
        return self.injection_per_iteration / self.block if self.block else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "injection_to_block": self.injection_to_block}


def _dummy_inputs(model: nn.Module, image_size: int) -> tuple:
    x = torch.zeros(1, model.in_channels, image_size, image_size, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    return x, t, t.clone()


def _hidden_size(model: nn.Module) -> int:
    return model.pos_embed.shape[-1]


def flop_breakdown(model: nn.Module, image_size: int, iters: int | None = None) -> FlopBreakdown:
    """Per-image FLOPs of one forward (batch 1, eval mode), counted on the meta device whatever
    device the model lives on. ``iters``: FPDM iterations (default: its DiT-equivalent count)."""
    was_training = model.training
    model.eval()
    try:
        x, t, y = _dummy_inputs(model, image_size)
        if not model.is_implicit:
            total = meta_flops(model, x, t, y)
            blocks = getattr(model, "blocks", None)
            if blocks is None:  # an adapter without DiT's block list: a block is the trunk's share
                return FlopBreakdown(total, total, 0, 0, 0)
            z, c = _block_inputs(model, image_size)
            return FlopBreakdown(total, total, meta_flops(blocks[0], z, c), 0, 0)
        from fpdm.model import unrolled_solve  # meta tensors have no residuals to read

        iters = model.default_iters if iters is None else iters
        total = meta_flops(model, x, t, y, iters=iters, solver=unrolled_solve)
        one = meta_flops(model, x, t, y, iters=1, solver=unrolled_solve)
        # marginal cost: the solve computes its loop invariants (the x_inj half of the injection's
        # first layer, the block's adaLN vectors) once per forward, so they belong to the explicit part
        per_iter = meta_flops(model, x, t, y, iters=2, solver=unrolled_solve) - one
        z, c = _block_inputs(model, image_size)
        block = meta_flops(model.fixed_point.block, z, c)
        inj = meta_flops(model.fixed_point.injection, z, z)
        return FlopBreakdown(total, one - per_iter, block, per_iter, inj)
    finally:
        model.train(was_training)


def _block_inputs(model: nn.Module, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = (image_size // model.patch_size) ** 2
    hidden = _hidden_size(model)
    return torch.zeros(1, tokens, hidden, device="meta"), torch.zeros(1, hidden, device="meta")


def sampling_flops(breakdown: FlopBreakdown, iters_per_step: Sequence[int] | None, steps: int) -> int:
    """FLOPs per image of a whole sampling run (without classifier-free guidance doubling):
    ``steps`` forwards for DiT, ``steps`` explicit parts plus one iteration per planned
    evaluation for FPDM."""
    if iters_per_step is None:
        return breakdown.per_forward * steps
    return breakdown.explicit_per_forward * steps + breakdown.per_iteration * sum(iters_per_step)


def dit_flops_per_forward(
    preset: str | Preset, *, image_size: int, channels: int, num_classes: int, learn_sigma: bool = True
) -> int:
    """FLOPs of one forward of the DiT of ``preset`` (a name or a resolved ``Preset``): the reference side of ``sample.match=flops``,
    built on the meta device and counted by the same path as the FPDM side."""
    from baselines.dit import build_dit

    with torch.device("meta"):
        dit = build_dit(
            preset, input_size=image_size, in_channels=channels, num_classes=num_classes, learn_sigma=learn_sigma
        )
    return flop_breakdown(dit, image_size).per_forward
