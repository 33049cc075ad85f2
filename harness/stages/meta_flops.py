"""FLOP counts of a config's model before any weights exist: a shape-only copy of the model on the
meta device (nothing allocated), counted by ``harness.compute.flops`` exactly as the job counts the
real model. A ``sample.match=flops`` plan (the default) and a ``train.budget.unit=flops`` budget
need them before the job builds its model: in the precheck (harness/config/validate.py), for
``run.plan=true`` and for the sample cache key, which names the integer plan a config runs.

Counts are kept per (model, train, data) settings: a sweep asks for the same model once per job.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from harness.compute.flops import FlopBreakdown

__all__ = ["meta_breakdown", "sampling_flop_inputs"]


def _settings(cfg: DictConfig) -> str:
    """What decides the counts, as one hashable string (the data node gives the input shape)."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "train", "data")}
    return json.dumps(parts, sort_keys=True, default=str)


@functools.lru_cache(maxsize=64)
def _counts(settings: str) -> tuple[FlopBreakdown, int | None] | None:
    """(breakdown of the model, FLOPs of one forward of the DiT of its architecture for FPDM)."""
    import torch

    from harness.compute.flops import dit_flops_per_forward, flop_breakdown
    from harness.data.shape import input_shape
    from harness.stages.models import build_model, model_architecture

    cfg = OmegaConf.create(json.loads(settings))
    try:
        shape = input_shape(cfg.data)
    except Exception:  # noqa: BLE001 - a missing or unreadable data set is reported by the data check
        return None
    size, channels, classes = shape.image_size, shape.channels, shape.num_classes
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.train, image_size=size, channels=channels, num_classes=classes)
    dit = None
    if cfg.model.name == "fpdm":  # the other side of a FLOP match, as harness.compute.plan.flop_match_inputs
        dit = dit_flops_per_forward(
            model_architecture(cfg.model),
            image_size=size,
            channels=channels,
            num_classes=classes,
            learn_sigma=cfg.model.learn_sigma,
        )
    return flop_breakdown(model, size), dit


def meta_breakdown(cfg: DictConfig) -> FlopBreakdown | None:
    """The ``FlopBreakdown`` of ``cfg``'s model (one forward per image); None when the data's
    shape cannot be read (the data check names that problem)."""
    counts = _counts(_settings(cfg))
    return None if counts is None else counts[0]


def sampling_flop_inputs(cfg: DictConfig) -> dict | None:
    """The keyword arguments ``harness.compute.plan.sampling_plan`` needs for ``cfg``: empty when
    the plan is not FLOP-matched (block matching, DiT, or no ``sample.budget``), else the FPDM
    breakdown and DiT's FLOPs per forward; None when the data's shape cannot be read."""
    if not (cfg.sample.match == "flops" and cfg.model.name == "fpdm" and cfg.sample.budget is not None):
        return {}
    counts = _counts(_settings(cfg))
    if counts is None:
        return None
    flops, dit = counts
    return {"flops": flops, "dit_flops_per_forward": dit}
