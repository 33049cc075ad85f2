"""Training and sampling memory, measured the same way for DiT and FPDM.

- ``saved_tensor_bytes``: the exact bytes autograd keeps for backward during one forward, through
  ``torch.autograd.graph.saved_tensors_hooks`` (storages counted once). This is the quantity that
  S-JFB shrinks (FPDM Sec. 3.4): it grows with the with-grad iterations m, not with the no-grad n.
- ``training_memory_breakdown``: parameters, gradients, AdamW state, EMA and saved activations.
- ``paper_scale_estimate``: DiT-XL/2 vs FPDM-XL/2 at batch 64 on the meta device (nothing is
  allocated), beside the paper's 25.2 GB vs 10.2 GB (Table 1) with the assumptions stated.
- ``peak_rss_bytes`` and ``cuda_peak``: process and CUDA peaks for the stage records.
"""
from __future__ import annotations

import contextlib
import resource
import sys
from typing import Callable

import torch
from torch import nn

PAPER_TRAIN_MEMORY_GB = {"dit": 25.2, "fpdm": 10.2}


def saved_tensor_bytes(fn: Callable[[], object], exclude: nn.Module | None = None) -> tuple[int, object]:
    """Run ``fn`` and return (bytes saved for backward, fn's result). Each storage counts once,
    so a tensor saved by several ops (or views of one buffer) is not double counted; parameters of
    ``exclude`` (and views of them, e.g. transposed weights) are not activations and are skipped."""
    seen: dict[int, int] = {}
    params = {id(p) for p in exclude.parameters()} if exclude is not None else set()

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) in params or id(t) in params:
            return t
        if t.device.type == "meta":  # meta tensors have no real storage to share: key by base tensor
            key, size = id(base), base.numel() * base.element_size()
        else:
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        seen[key] = max(seen.get(key, 0), size)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def training_memory_breakdown(model: nn.Module, forward_loss: Callable[[], torch.Tensor], *,
                              optimizer_states: int = 2, ema: bool = True) -> dict[str, int]:
    """Bytes of one training step: parameters, gradients, optimiser state (AdamW keeps 2 moments
    per parameter), EMA copy and the activations saved for backward by ``forward_loss``."""
    params = parameter_bytes(model)
    saved, _ = saved_tensor_bytes(forward_loss, exclude=model)
    out = {
        "mem_params_bytes": params,
        "mem_grads_bytes": params,
        "mem_optimizer_bytes": optimizer_states * params,
        "mem_ema_bytes": params if ema else 0,
        "mem_saved_bytes": saved,
    }
    out["mem_total_bytes"] = sum(out.values())
    return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


@contextlib.contextmanager
def cuda_peak(device: torch.device | str, out: dict, key: str):
    """Record the peak CUDA memory allocated inside the block as ``out[key]`` (no-op off CUDA)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        yield
        return
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        yield
    finally:
        torch.cuda.synchronize(dev)
        out[key] = max(out.get(key, 0), int(torch.cuda.max_memory_allocated(dev)))


class _FusedAttentionSaves(torch.autograd.Function):
    """Forward-only stand-in that saves what a fused (flash / memory-efficient) attention kernel
    saves for backward: q, k, v, the output and a float32 log-sum-exp per query. On the meta
    device torch falls back to the math path, which would count the full attention matrix."""

    @staticmethod
    def forward(ctx, q, k, v):
        with torch.no_grad():
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - estimates never run backward
        raise RuntimeError("_FusedAttentionSaves is for memory accounting only")


@contextlib.contextmanager
def _fused_attention_accounting():
    from baselines import layers

    original = layers.sdpa
    layers.sdpa = _FusedAttentionSaves.apply
    try:
        yield
    finally:
        layers.sdpa = original


def estimate_training_memory(model: nn.Module, batch_size: int, image_size: int,
                             activation_dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Training-step memory of ``model`` (built on the meta device) without allocating anything:
    fp32 parameters, gradients, AdamW moments and EMA, plus the activations saved for backward at
    ``batch_size`` in ``activation_dtype`` with fused attention. For FPDM the with-grad iterations
    are whatever its training mode draws (use a fixed-m mode for a worst case)."""
    with torch.device("meta"):
        model = model.to("meta").train()
        params = parameter_bytes(model)
        model.to(activation_dtype)  # activations in that precision; fp32 copies counted above
        x = torch.zeros(batch_size, model.in_channels, image_size, image_size, dtype=activation_dtype)
        t = torch.zeros(batch_size, dtype=torch.long)
        y = torch.zeros(batch_size, dtype=torch.long)
        with _fused_attention_accounting():
            saved, _ = saved_tensor_bytes(lambda: model(x, t, y).float().square().mean(), exclude=model)
    parts = {"mem_params_bytes": params, "mem_grads_bytes": params, "mem_optimizer_bytes": 2 * params,
             "mem_ema_bytes": params, "mem_saved_bytes": saved}
    parts["mem_total_bytes"] = sum(parts.values())
    return parts


def paper_scale_estimate(batch_size: int = 64, with_grad_iters: int = 12, grad_checkpointing: bool = True,
                         activation_dtype: torch.dtype = torch.bfloat16) -> dict:
    """Training memory of DiT-XL/2 vs FPDM-XL/2 (1 pre + 1 post) on 32x32x4 latents, 1000 classes,
    learned sigma, estimated on the meta device. Assumptions (stated in the result): fp32 master
    weights, gradients, AdamW moments and EMA; activations in ``activation_dtype`` (the official
    accelerate config trains in bf16); gradient checkpointing on every explicit block (the official
    default) and none on the fixed point iterations; the with-grad iterations at their maximum
    (worst case of the S-JFB draw; no-grad iterations store nothing); attention saves what a fused
    CUDA kernel saves (q, k, v, output, log-sum-exp), not the attention matrix."""
    from baselines.dit import build_dit
    from fpdm.model import build_fpdm
    from fpdm.training_modes import ImplicitTrainSpec

    spec = ImplicitTrainSpec(method="multistep_jfb", no_grad_min=0, no_grad_max=0,
                             with_grad_min=with_grad_iters, with_grad_max=with_grad_iters)
    result: dict = {"assumptions": {
        "batch_size": batch_size, "with_grad_iters": with_grad_iters, "grad_checkpointing": grad_checkpointing,
        "activation_dtype": str(activation_dtype).replace("torch.", ""), "weights_grads_adam_ema": "fp32",
        "attention": "fused kernel (flash / memory-efficient)",
        "excludes": "allocator fragmentation, CUDA context, temporaries freed within an op",
    }}
    with torch.device("meta"):
        models = {
            "dit": build_dit("XL/2", input_size=32, in_channels=4, num_classes=1000),
            "fpdm": build_fpdm("XL/2", input_size=32, in_channels=4, num_classes=1000, train_spec=spec),
        }
    for name, model in models.items():
        model.grad_checkpointing = grad_checkpointing
        parts = estimate_training_memory(model, batch_size, 32, activation_dtype)
        parts["paper_gb"] = PAPER_TRAIN_MEMORY_GB[name]
        result[name] = parts
    result["ratio_fpdm_to_dit"] = result["fpdm"]["mem_total_bytes"] / result["dit"]["mem_total_bytes"]
    result["paper_ratio_fpdm_to_dit"] = PAPER_TRAIN_MEMORY_GB["fpdm"] / PAPER_TRAIN_MEMORY_GB["dit"]
    return result
