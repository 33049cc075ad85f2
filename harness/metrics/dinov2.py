"""FD-DINOv2 offline: torch-fidelity's DINOv2 extractors with weights from a local file.

FD with DINOv2 ViT features (Stein et al. 2023, "Exposing flaws of generative model evaluation
metrics", dgm-eval; EDM2's second headline metric) uses torch-fidelity's ``dinov2-vit-{s,b,l,g}-14``
preprocessing and forward pass unchanged (TF1 bilinear resize to 224x224, ImageNet mean/std, the
CLS embedding). torch-fidelity 0.4.0 builds the network with ``torch.hub.load`` from GitHub and
raises ``NotImplementedError`` for a local weights file, so neither works offline;
``FeatureExtractorDinoV2Local`` builds the same network from a local copy of the DINOv2 hub code
(``<torch hub dir>/facebookresearch_dinov2_main``, where ``torch.hub`` keeps it after one online
use; ``$TORCH_HOME`` moves it) with ``pretrained=False`` and loads ``metrics.weights`` (the official
``dinov2_vit*14_pretrain.pth`` state dict) with ``weights_only=True`` after checking its SHA-256.

The model size is part of the protocol label: ViT-S and ViT-L distances do not compare.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_dinov2 import MODEL_METADATA, FeatureExtractorDinoV2
from torch_fidelity.helpers import text_to_dtype

__all__ = [
    "DINOV2_DIMS",
    "DINOV2_SIZES",
    "LOCAL_PREFIX",
    "hub_code_dir",
    "load_dinov2_weights",
    "FeatureExtractorDinoV2Local",
]

LOCAL_PREFIX = "local-"  # torch-fidelity registry name: local-dinov2-vit-s-14
DINOV2_DIMS = {"dinov2-vit-s-14": 384, "dinov2-vit-b-14": 768, "dinov2-vit-l-14": 1024, "dinov2-vit-g-14": 1536}
DINOV2_SIZES = {
    "dinov2-vit-s-14": "ViT-S/14",
    "dinov2-vit-b-14": "ViT-B/14",
    "dinov2-vit-l-14": "ViT-L/14",
    "dinov2-vit-g-14": "ViT-g/14",
}
_HOWTO = (
    "download {hub}_pretrain.pth from the DINOv2 release, write its sha256 beside it (PATH.sha256) and set "
    "metrics.weights=PATH"
)


def hub_code_dir() -> Path:
    """Where torch.hub keeps facebookresearch/dinov2 (honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"


def load_dinov2_weights(name: str, path: str | Path | None, expected_sha256: str | None = None) -> tuple[dict, str]:
    """Verify and load a DINOv2 state dict -> (state dict, sha256); one-line errors naming metrics.weights."""
    from harness.metrics.inception import _expected_sha256
    from harness.runtime.io import sha256_file

    hub = MODEL_METADATA[name]
    if path is None or str(path) == "":
        raise FileNotFoundError(f"metrics.extractor={name} needs local weights offline: {_HOWTO.format(hub=hub)}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"metrics.weights={path} does not exist: {_HOWTO.format(hub=hub)}")
    digest, want = sha256_file(p), _expected_sha256(p, expected_sha256)
    if want is None or not digest.startswith(want):
        what = (
            "has no PATH.sha256 beside it" if want is None else f"has sha256 {digest[:16]}..., expected {want[:16]}..."
        )
        raise ValueError(f"metrics.weights={path} {what}: set metrics.weights_sha256=HASH of the file you trust")
    return torch.load(p, map_location="cpu", weights_only=True), digest


class FeatureExtractorDinoV2Local(FeatureExtractorDinoV2):
    """torch-fidelity's DINOv2 extractor, built from local hub code and a local weights file."""

    def __init__(
        self, name, features_list, feature_extractor_weights_path=None, feature_extractor_internal_dtype=None, **kwargs
    ):
        FeatureExtractorBase.__init__(self, name, features_list)
        model = name.removeprefix(LOCAL_PREFIX)
        code = hub_code_dir()
        if not (code / "hubconf.py").is_file():
            raise FileNotFoundError(
                f"metrics.extractor={model} needs the DINOv2 model code offline: copy github.com/facebookresearch/dinov2 "
                f"to {code} (torch.hub puts it there after one online use; $TORCH_HOME moves it)"
            )
        # compute_metrics verified the file's hash (resolve_weights); weights_only: tensors, no pickled code
        state = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.model = torch.hub.load(str(code), MODEL_METADATA[model], source="local", pretrained=False)
        self.model.load_state_dict(state, strict=True)
        self.feature_extractor_internal_dtype = text_to_dtype(feature_extractor_internal_dtype, "float32")
        self.to(self.feature_extractor_internal_dtype)
        self.requires_grad_(False)
        self.eval()
