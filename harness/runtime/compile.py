"""Optional ``torch.compile`` of the transformer blocks and of FPDM's fixed point step.

``train.compile`` / ``sample.compile`` compile, in place, every explicit DiT block
(``nn.Module.compile``, so state-dict keys keep their names) and, for FPDM, the fixed point
evaluation ``FixedPointLayer.step`` that the solver calls ``k`` times per forward (paper Sec. 3.2).
The whole model is not compiled: the solver's per-sample bookkeeping and the training modes'
random iteration counts would make graphs break or recompile. Inductor needs a C++ compiler on CPU;
without one the option falls back to eager with one warning line instead of failing mid-run.
``benchmarks/bench_models.py --compile`` measures whether it pays (compile time reported apart).
"""

from __future__ import annotations

import os
import shutil
import warnings

import torch
from torch import nn

from baselines.layers import DiTBlock


def inductor_unavailable(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device`` here, or None when it can."""
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None and shutil.which("c++") is None:
            return f"no C++ compiler found ({cxx!r} or 'c++' on PATH)"
    try:
        import torch._inductor  # noqa: F401
    except Exception as exc:  # pragma: no cover - broken installs only
        return f"torch._inductor does not import ({type(exc).__name__}: {exc})"
    return None


def set_compiled(model: nn.Module, enabled: bool, key: str, device: torch.device | None = None) -> bool:
    """Compile (``enabled``) or restore to eager the blocks of ``model`` in place; returns whether
    they are compiled now. ``key`` names the config key in the fallback warning."""
    device = device or next(model.parameters()).device
    if enabled:
        why = inductor_unavailable(device)
        if why is not None:
            warnings.warn(f"{key}=true ignored, running eager: {why}; set {key}=false to silence this", stacklevel=2)
            enabled = False
    for module in model.modules():
        if isinstance(module, DiTBlock):
            if enabled:
                module.compile()
            else:
                module._compiled_call_impl = None  # what nn.Module.compile set; None = eager
    fixed_point = getattr(model, "fixed_point", None)
    if fixed_point is not None and hasattr(fixed_point, "step"):
        fixed_point.__dict__.pop("step", None)  # back to the class method
        if enabled:
            # dynamic from the first call: the step sees many batch sizes (train and sampling
            # batches, and adaptive sampling compacts the batch as samples converge), on top of one
            # graph per grad mode (S-JFB's no-grad and with-grad iterations, inference); static
            # first graphs used up dynamo's recompile limit (8) in benchmarks/bench_models.py
            fixed_point.step = torch.compile(fixed_point.step, dynamic=True)
    return enabled
