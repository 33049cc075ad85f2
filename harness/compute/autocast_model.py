"""CUDA autocast, modelled on any device (meta included) for memory accounting.

``torch.autocast("cuda")`` only acts on CUDA tensors, and CPU autocast has other op lists (it
keeps LayerNorm in bf16), so a shape-only estimate cannot simply run under autocast. This
``TorchFunctionMode`` applies the CUDA autocast rules (PyTorch "Automatic Mixed Precision"
docs, "CUDA Op-Specific Behavior") to the ops the DiT / FPDM forward uses:

- matmul-like ops (linear, conv, matmul, SDPA) cast their floating inputs to the low precision and
  return low-precision outputs;
- LayerNorm, softmax, exp/log, losses run in float32 (their inputs are cast up);
- cat/stack promote to the widest input type; everything else keeps PyTorch's type promotion, so
  a residual ``x + gate * attn(x)`` with a float32 ``x`` stays float32: the residual stream of a
  model with float32 weights is float32 under autocast, only matmul outputs are bf16;
- casts of leaf tensors that require grad (the parameters) are cached for the whole region, as
  autocast caches them: one low-precision copy per weight, counted once (``weight_copies``).

``fused_attention=True`` also replaces SDPA by a stand-in that saves what a fused CUDA kernel
saves (q, k, v, output, float32 log-sum-exp per query), not the attention matrix of the math path
that meta tensors would take.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_LOW = {
    F.linear,
    torch.conv1d,
    torch.conv2d,
    torch.conv3d,
    torch.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    F.scaled_dot_product_attention,
}
_FP32 = {
    F.layer_norm,
    F.group_norm,
    F.softmax,
    F.log_softmax,
    torch.exp,
    torch.log,
    torch.Tensor.exp,
    torch.Tensor.log,
    F.mse_loss,
    torch.rsqrt,
    torch.pow,
    torch.Tensor.pow,
    torch.Tensor.__pow__,
}
_PROMOTE = {torch.cat, torch.stack}


class FusedAttentionSaves(torch.autograd.Function):
    """Forward-only SDPA that saves what a fused (flash / memory-efficient) kernel saves."""

    @staticmethod
    def forward(ctx, q, k, v):
        with torch.no_grad():
            out = F.scaled_dot_product_attention(q, k, v)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - estimates never run backward
        raise RuntimeError("FusedAttentionSaves is for memory accounting only")


def _is_float(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


class AutocastModel(TorchFunctionMode):
    """``with AutocastModel(torch.bfloat16) as ac: loss = model(x, t, y)``; ``dtype=None`` turns
    the casting off (plain fp32) while keeping the fused-attention accounting."""

    def __init__(self, dtype: torch.dtype | None = torch.bfloat16, fused_attention: bool = True):
        super().__init__()
        self.dtype, self.fused_attention = dtype, fused_attention
        self.weight_copies: dict[int, torch.Tensor] = {}

    def _cast(self, x, dtype):
        if not _is_float(x) or x.dtype == dtype:
            return x
        if x.is_leaf and x.requires_grad:  # autocast's weight cache
            cached = self.weight_copies.get(id(x))
            if cached is None:
                cached = self.weight_copies[id(x)] = x.to(dtype)
            return cached
        return x.to(dtype)

    def _cast_all(self, args, kwargs, dtype):
        def cast(a):
            return [self._cast(x, dtype) for x in a] if isinstance(a, (list, tuple)) else self._cast(a, dtype)

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    @property
    def weight_copy_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.weight_copies.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.dtype is not None:
            if func in _LOW:
                args, kwargs = self._cast_all(args, kwargs, self.dtype)
            elif func in _FP32:
                args, kwargs = self._cast_all(args, kwargs, torch.float32)
            elif func in _PROMOTE and isinstance(args[0], (list, tuple)):
                floats = [x.dtype for x in args[0] if _is_float(x)]
                widest = max(floats, key=lambda d: torch.finfo(d).bits) if floats else None
                args = ([self._cast(x, widest) for x in args[0]], *args[1:]) if widest else args
        if (
            func is F.scaled_dot_product_attention
            and self.fused_attention
            and torch.is_grad_enabled()
            and len(args) == 3
            and kwargs.get("attn_mask") is None
            and not kwargs.get("is_causal")
        ):
            return FusedAttentionSaves.apply(*args)
        return func(*args, **kwargs)
