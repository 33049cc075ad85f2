"""TensorFloat-32 for the fp32 matrix products of one stage, on CUDA.

The official FPDM training script (like DiT's) turns TF32 on for CUDA matrix products
(``torch.backends.cuda.matmul.allow_tf32 = True``) and its sampling script leaves them in full fp32.
``train.tf32`` (default true) and ``sample.tf32`` (default false) do the same per stage, so an fp32
run here does the arithmetic the official code does (on Ampere and later GPUs TF32 products run on
the tensor cores, with a 10-bit mantissa in their inputs; no GPU figure was measured here). The
setting is restored when the stage ends, so the stages of one process do not leak it into each
other (or into the evaluation, which stays in full fp32). On CPU it changes nothing: fp32 products
there have no TF32 path, and the flag is left untouched.

The flag is set through ``torch.backends.cuda.matmul.allow_tf32``, the switch the official code
flips, which exists in every supported PyTorch and keeps every reader consistent. (PyTorch 2.9
added ``torch.backends.cuda.matmul.fp32_precision``; setting that one to "tf32" alone makes later
reads of ``allow_tf32`` and of ``torch.get_float32_matmul_precision()`` raise, reads that other
libraries make, whereas ``allow_tf32`` updates both.) The current state is read through the newer
API where it exists, which never raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_MATMUL = torch.backends.cuda.matmul

# each stage's default: what the official scripts do (train.py turns TF32 on, sample.py does not);
# the schema's ``train.tf32`` / ``sample.tf32`` defaults and the cache keys read them from here
OFFICIAL_TF32 = {"train": True, "sample": False}


def stage_tf32(stage_cfg: Any, stage: str) -> bool:
    """``stage_cfg.tf32`` (``cfg.train`` or ``cfg.sample``), or the stage's default for a config
    written before the key existed."""
    return bool(getattr(stage_cfg, "tf32", OFFICIAL_TF32[stage]))


def cuda_tf32_enabled() -> bool:
    """Whether fp32 CUDA matrix products use TF32 now."""
    if hasattr(_MATMUL, "fp32_precision"):
        value = _MATMUL.fp32_precision
        if value == "none":  # inherits the process-wide setting
            return getattr(torch.backends, "fp32_precision", "ieee") == "tf32"
        return value == "tf32"
    return bool(_MATMUL.allow_tf32)


@contextmanager
def tf32_matmuls(enabled: bool, device: torch.device) -> Iterator[bool]:
    """Inside, fp32 matrix products on ``device`` use TF32 iff ``enabled`` and ``device`` is CUDA;
    yields whether they do (what a stage records). The previous setting is restored on exit."""
    if device.type != "cuda":
        yield False
        return
    before = cuda_tf32_enabled()
    _MATMUL.allow_tf32 = bool(enabled)
    try:
        yield bool(enabled)
    finally:
        _MATMUL.allow_tf32 = before
