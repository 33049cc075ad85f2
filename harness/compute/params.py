"""Parameters by part for both model families (total and per ``model.param_parts``), the count the
paper's Table 1 reports (86.5M FPDM-XL/2 vs 674.8M DiT-XL/2)."""

from __future__ import annotations

from torch import nn


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
