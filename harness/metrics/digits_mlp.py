"""A second ruler for the digits data: `digits-mlp`, a feature network of another architecture and seed.

One feature network is one opinion: two settings whose FIDs differ by less than the network's
idiosyncrasies can swap order under another network. `digits-mlp` (a two-layer perceptron on the
64 pixels, seed 1) is trained like `digits-cnn` (deterministic full-batch Adam on the training split
of the embedded sklearn digits, seconds on a CPU), standardised the same way, cached the same way
(safetensors + JSON sidecar, file-locked, atomic) and registered with torch-fidelity as a feature
extractor, so FID/KID under it are torch-fidelity's. Reports show whether both rulers agree on each
ordering (harness.metrics.rulers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from filelock import FileLock
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from harness.metrics.extractors import (
    ExtractorSpec,
    FeatureExtractorDigitsCNN,
    WeightsInfo,
    default_cache_dir,
    fit_digits_classifier,
    register_extractor,
)
from harness.runtime.io import atomic_write, sha256_file

__all__ = ["DigitsMLP", "ensure_digits_mlp", "FeatureExtractorDigitsMLP"]

_RECIPE = {"version": 1, "seed": 1, "steps": 300, "lr": 3e-3, "weight_decay": 1e-4}


class DigitsMLP(nn.Module):
    """64 pixels -> 128 -> 64-d features (pre-activation, standardised) -> 10 logits."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(64, 128)
        self.fc1 = nn.Linear(128, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, 10)
        self.register_buffer("feat_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feat_std", torch.ones(self.feature_dim))

    def pre(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 8, 8) in [0, 1]
        return self.fc1(F.relu(self.fc0((x - 0.5).flatten(1))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.pre(x)
        return (pre - self.feat_mean) / self.feat_std, self.fc2(F.relu(pre))


def _train(seed: int, steps: int, lr: float, weight_decay: float) -> tuple[DigitsMLP, float, int]:
    return fit_digits_classifier(DigitsMLP, seed, steps, lr, weight_decay)


def ensure_digits_mlp(cache_dir: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Path of the cached digits-mlp safetensors (trained on first use) and its sidecar metadata."""
    from safetensors.torch import save

    path = (
        default_cache_dir(cache_dir)
        / "extractors"
        / f"digits-mlp-v{_RECIPE['version']}-seed{_RECIPE['seed']}.safetensors"
    )
    meta_path = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if sha256_file(path) == meta.get("sha256"):
                return path, meta
        model, acc, n_train = _train(**{k: v for k, v in _RECIPE.items() if k != "version"})
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write(path, save(state, metadata={"recipe": json.dumps(_RECIPE)}))
        meta = {
            "extractor": "digits-mlp",
            "heldout_accuracy": acc,
            "train_size": n_train,
            "sha256": sha256_file(path),
            "torch": torch.__version__,
            **{f"recipe_{k}": v for k, v in _RECIPE.items()},
        }
        atomic_write(meta_path, json.dumps(meta, indent=1))
        return path, meta


class FeatureExtractorDigitsMLP(FeatureExtractorDigitsCNN):
    """torch-fidelity wrapper: uint8 (B, 1|3, 8k, 8k) -> features '64' and/or 'logits'."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super(FeatureExtractorDigitsCNN, self).__init__(name, features_list)
        from safetensors.torch import load_file

        path = feature_extractor_weights_path or ensure_digits_mlp()[0]
        self.net = DigitsMLP()
        self.net.load_state_dict(load_file(str(path)))
        self.requires_grad_(False)
        self.eval()


def _weights(weights=None, cache_dir=None, expected_sha256=None) -> WeightsInfo:
    if weights is not None:
        raise ValueError(
            "metrics.weights applies to metrics.extractor only; digits-mlp always uses its cached "
            "network: leave metrics.second_extractor=auto or set it to null"
        )
    path, meta = ensure_digits_mlp(cache_dir)
    return WeightsInfo(str(path), meta["sha256"], True)


register_extractor(
    ExtractorSpec("digits-mlp", "64", "logits", 1, "uint8; grey; area-resize to 8x8; /255; mlp", _weights)
)
if "digits-mlp" not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor("digits-mlp", FeatureExtractorDigitsMLP)

# Which network is the second ruler of which (metrics.second_extractor=auto).
SECOND_RULER = {"digits-cnn": "digits-mlp", "digits-mlp": "digits-cnn"}
