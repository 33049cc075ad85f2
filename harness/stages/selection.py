"""The held-out selection set: images sampled and scored only to choose between settings.

A report that pairs DiT with the best of several FPDM settings of a cell, chosen by the FID it then
reports, favours FPDM by the luck of those images: the lowest of several noisy scores is biased low
(a winner's curse). With ``selection.images`` > 0 a job therefore also samples ``selection.images``
images, image i seeded ``selection.seed + i`` as evaluated image i is seeded ``sample.seed + i``
(harness/stages/sample.py), with the same model and plan (a calibrated plan included), as a
sampling cached under its own key; and scores them by FID under the primary extractor only (no
bootstrap, no second ruler: the number ranks settings and is never reported as a result).

The record names both seed ranges, ``protocol.eval_seeds`` and ``protocol.selection.seeds``
(``[start, end)``), and carries the score as ``metrics.selection_fid``; reports/selection.py chooses
on it. harness/config/validate.py refuses a selection range that overlaps the evaluated images or
the calibration batch of a calibrated schedule.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from harness.stages.cache import config_hash, stage_keys

if TYPE_CHECKING:
    from omegaconf import DictConfig

CALIBRATED = ("adaptive", "greedy")  # schedules decided on a calibration batch (harness/stages/calibrate.py)


def selection_images(cfg: DictConfig) -> int:
    """``selection.images``; 0 for a config written before the key existed (a stored train config)."""
    sel = cfg.get("selection")
    return int(sel.get("images") or 0) if sel is not None else 0


def seed_ranges(cfg: DictConfig) -> dict[str, tuple[int, int]]:
    """``[start, end)`` of the image seeds of every set a job samples: ``evaluated`` always,
    ``calibration`` for a calibrated FPDM schedule, ``selection`` when ``selection.images`` > 0."""
    s = cfg.sample
    out = {"evaluated": (int(s.seed), int(s.seed) + int(s.num_images))}
    if cfg.model.name == "fpdm" and s.schedule in CALIBRATED:
        a = s.adaptive
        out["calibration"] = (int(a.calibration_seed), int(a.calibration_seed) + int(a.calibration_images))
    if selection_images(cfg):
        out["selection"] = (int(cfg.selection.seed), int(cfg.selection.seed) + int(cfg.selection.images))
    return out


def selection_config(cfg: DictConfig) -> DictConfig:
    """The job's config with the selection set's images: same model, plan, sampler and solver; its
    sample key differs from the evaluated set's by the seed and the image count."""
    sel = copy.deepcopy(cfg)
    sel.sample.seed = int(cfg.selection.seed)
    sel.sample.num_images = int(cfg.selection.images)
    sel.sample.seed_ranges = 1
    return sel


def selection_keys(cfg: DictConfig) -> tuple[str, str]:
    """(sample key, score key) of the selection set. The score key hashes what a FID depends on:
    the samples, the extractor, its weights and the reference split."""
    from harness.metrics.choice import extractor_name

    sample_key = stage_keys(selection_config(cfg)).sample
    m = cfg.metrics
    return sample_key, config_hash("select", sample_key, extractor_name(cfg), m.weights, m.reference_split)


def selection_protocol(cfg: DictConfig, scored: dict) -> dict:
    """What ``protocol.selection`` of the record says: the seeds ``[start, end)``, the image count
    and the FID protocol of the score (``scored``: harness.stages.evaluate.selection_fid's result)."""
    start, end = seed_ranges(cfg)["selection"]
    proto = scored.get("protocol") or {}
    return {
        "seeds": [start, end],
        "images": end - start,
        "extractor": proto.get("extractor"),
        "reference": proto.get("reference"),
        "label": proto.get("label"),
    }


def eval_seeds(cfg: DictConfig) -> list[int]:
    """``protocol.eval_seeds``: the seeds ``[start, end)`` of the evaluated images."""
    return list(seed_ranges(cfg)["evaluated"])
