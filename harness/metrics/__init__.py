"""Sample-quality metrics through torch-fidelity (FID/KID/precision-recall/IS) and their extractors.

Importing this package registers the `digits-cnn` and `digits-mlp` feature extractors with torch-fidelity.
See fidelity.py (metrics and reference statistics), extractors.py (extractor registry, digits-cnn),
inception.py (offline inception-v3-compat weights) and fid_stats.py (float64 FID from statistics).
"""

from harness.metrics import digits_mlp as _digits_mlp  # noqa: F401  (registers the second digits ruler)
from harness.metrics.extractors import (
    ExtractorSpec,
    WeightsInfo,
    ensure_digits_cnn,
    get_extractor,
    list_extractors,
    register_extractor,
)
from harness.metrics.fid_stats import features_to_stats, fid_from_stats
from harness.metrics.fidelity import (
    ImageChunks,
    ReferenceSpec,
    ReferenceStats,
    SeedRangeFID,
    compute_metrics,
    fid_label,
    fid_over_seed_ranges,
    reference_stats,
)

__all__ = [
    "ExtractorSpec",
    "WeightsInfo",
    "ensure_digits_cnn",
    "get_extractor",
    "list_extractors",
    "register_extractor",
    "features_to_stats",
    "fid_from_stats",
    "ImageChunks",
    "ReferenceSpec",
    "ReferenceStats",
    "SeedRangeFID",
    "compute_metrics",
    "fid_label",
    "fid_over_seed_ranges",
    "reference_stats",
]
