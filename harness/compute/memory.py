"""Training and sampling memory, measured the same way for DiT and FPDM.

- ``saved_tensor_bytes``: the exact bytes autograd keeps for backward during one forward, through
  ``torch.autograd.graph.saved_tensors_hooks`` (storages counted once). This is the quantity that
  S-JFB shrinks (FPDM Sec. 3.4): it grows with the with-grad iterations m, not with the no-grad n.
- ``training_memory_breakdown``: parameters, gradients, AdamW state, EMA and saved activations.
- ``estimate_training_memory`` / ``paper_scale_estimate`` (in ``harness.compute.memory_estimate``, which
  builds on this module): the meta-device estimate with autocast, DDP buckets, checkpoint recompute
  and S-JFB's with-grad iterations modelled, beside the paper's 25.2 GB vs 10.2 GB (Table 1).
- ``peak_rss_bytes`` and ``cuda_peak``: process and CUDA peaks for the stage records.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Iterator


def saved_tensor_bytes(
    fn: Callable[[], object], exclude: nn.Module | None = None, exclude_tensors: Callable[[], dict] | None = None
) -> tuple[int, object]:
    """Run ``fn`` and return (bytes saved for backward, fn's result). Each storage counts once,
    so a tensor saved by several ops (or views of one buffer) is not double counted; parameters of
    ``exclude`` (and views of them, e.g. transposed weights) are not activations and are skipped,
    as are the tensors in ``exclude_tensors()`` (a live mapping id -> tensor, e.g. autocast's
    weight copies, which are counted apart)."""
    seen: dict[int, int] = {}
    params = {id(p) for p in exclude.parameters()} if exclude is not None else set()

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        extra = exclude_tensors() if exclude_tensors is not None else {}
        if id(base) in params or id(t) in params or any(x is base or x is t for x in extra.values()):
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


def training_memory_breakdown(
    model: nn.Module, forward_loss: Callable[[], torch.Tensor], *, optimizer_states: int = 2, ema: bool = True
) -> dict[str, int]:
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
def cuda_peak(device: torch.device | str, out: dict, key: str) -> Iterator[None]:
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
