"""Sample-quality metrics through torch-fidelity (FID/KID/precision-recall/IS) and their extractors.

Importing this package registers the `digits-cnn` and `digits-mlp` feature extractors with torch-fidelity.
See fidelity.py (metrics and reference statistics), extractors.py (extractor registry, digits-cnn),
inception.py (offline inception-v3-compat weights) and fid_stats.py (float64 FID from statistics).

The names below are imported on first use (PEP 562): the torch-free parts (bootstrap.py, fid_stats.py),
which the report needs, then load without torch and torch-fidelity (docs/performance.md). Any name
from extractors.py or fidelity.py also loads digits_mlp.py, so both digits rulers are registered
wherever extractors are listed or looked up through this package.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "ExtractorSpec": "extractors",
    "WeightsInfo": "extractors",
    "ensure_digits_cnn": "extractors",
    "get_extractor": "extractors",
    "list_extractors": "extractors",
    "register_extractor": "extractors",
    "features_to_stats": "fid_stats",
    "fid_from_stats": "fid_stats",
    "ImageChunks": "fidelity",
    "ReferenceSpec": "fidelity",
    "ReferenceStats": "fidelity",
    "SeedRangeFID": "fidelity",
    "compute_metrics": "fidelity",
    "fid_label": "fidelity",
    "fid_over_seed_ranges": "fidelity",
    "reference_stats": "fidelity",
}
_REGISTERS_RULERS = {"extractors", "fidelity"}  # modules whose names need both digits rulers registered

__all__ = list(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module in _REGISTERS_RULERS:
        importlib.import_module(f"{__name__}.digits_mlp")  # registers the second digits ruler
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
