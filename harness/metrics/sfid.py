"""Spatial Inception features for sFID (Nash et al. 2021, "Generating Images with Sparse
Representations", Sec. 4), as ADM's evaluator computes them (guided-diffusion
``evaluations/evaluator.py``: ``mixed_6/conv:0``, first 7 channels, flattened).

In the TF 2015-12-05 Inception graph, ``mixed_6`` is the fourth 17x17 block, which
torch-fidelity's port calls ``Mixed_6d`` (its weight conversion maps ``mixed_6/conv/conv2d_params``
onto ``Mixed_6d.branch1x1.conv``), and ``mixed_6/conv:0`` is that 1x1 branch's output after batch
norm and ReLU: exactly the output of torch-fidelity's ``BasicConv2d`` ``Mixed_6d.branch1x1``,
(N, 192, 17, 17). ADM keeps channels 0..6 of the NHWC tensor and flattens it in (h, w, c) order:
7 * 17 * 17 = 2023 values. The same order matters: an ADM reference batch's ``mu_s``/``sigma_s``
are indexed that way.

``FeatureExtractorInceptionADM`` is torch-fidelity's ``inception-v3-compat`` with this one extra
layer; every other layer is the parent's, unchanged.
"""

from __future__ import annotations

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

__all__ = ["ADM_INCEPTION", "SPATIAL_LAYER", "SPATIAL_DIM", "spatial_from_mixed_6d", "FeatureExtractorInceptionADM"]

ADM_INCEPTION = "inception-v3-compat-adm"  # torch-fidelity registry name of the extended extractor
SPATIAL_LAYER = "mixed_6/conv"
SPATIAL_CHANNELS = 7
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17  # 2023


def spatial_from_mixed_6d(h: torch.Tensor) -> torch.Tensor:
    """(N, 192, 17, 17) Mixed_6d.branch1x1 output -> (N, 2023): ADM's ``[..., :7]`` of NHWC, flattened."""
    return h[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(h.shape[0], -1).to(torch.float32)


class FeatureExtractorInceptionADM(FeatureExtractorInceptionV3):
    """inception-v3-compat plus the ``mixed_6/conv`` spatial layer (hooked, not recomputed)."""

    def forward(self, x):
        if SPATIAL_LAYER not in self.features_list:
            return super().forward(x)
        caught: list[torch.Tensor] = []
        hook = self.Mixed_6d.branch1x1.register_forward_hook(lambda _m, _i, out: caught.append(out))
        requested = self.features_list
        # the parent stops after its last requested layer: "768" (after Mixed_6e) runs through Mixed_6d
        self.features_list = [f for f in requested if f != SPATIAL_LAYER] or ["768"]
        try:
            out = dict(zip(self.features_list, super().forward(x)))
        finally:
            self.features_list = requested
            hook.remove()
        out[SPATIAL_LAYER] = spatial_from_mixed_6d(caught[-1])
        return tuple(out[f] for f in requested)

    @staticmethod
    def get_provided_features_list():
        return (*FeatureExtractorInceptionV3.get_provided_features_list(), SPATIAL_LAYER)
