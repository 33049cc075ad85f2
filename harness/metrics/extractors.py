"""Feature extractors for torch-fidelity: a registry of what each one needs (weights, channels,
preprocessing) and the `digits-cnn` extractor for the embedded sklearn digits data.

`digits-cnn` plays the role Inception-v3 plays for ImageNet-sized data (Heusel et al. 2017 use the
pool3 features of a classifier trained on the real distribution): a small CNN trained
deterministically on the training split of sklearn's digits, whose 64-d penultimate layer feeds
FID/KID/precision-recall and whose 10 logits feed the Inception Score. It is registered with
`torch_fidelity.register_feature_extractor` (custom extractor API of torch-fidelity 0.4.0,
`FeatureExtractorBase`), so the metrics themselves are torch-fidelity's.

The trained weights are cached as safetensors (no pickle) with a JSON sidecar recording the
held-out accuracy, seed, training size and SHA-256; builds are file-locked and atomic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from filelock import FileLock
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from baselines.registry import Registry
from harness.metrics.dinov2 import (
    DINOV2_DIMS,
    DINOV2_SIZES,
    LOCAL_PREFIX,
    FeatureExtractorDinoV2Local,
    load_dinov2_weights,
)
from harness.metrics.sfid import ADM_INCEPTION, SPATIAL_DIM, SPATIAL_LAYER, FeatureExtractorInceptionADM
from harness.runtime.io import atomic_write, sha256_file

__all__ = [
    "ExtractorSpec",
    "WeightsInfo",
    "register_extractor",
    "get_extractor",
    "list_extractors",
    "DigitsCNN",
    "FeatureExtractorDigitsCNN",
    "ensure_digits_cnn",
    "to_unit_8x8",
    "default_cache_dir",
    "sha256_file",
]

# ----------------------------------------------------------------------------------------------
# Cache location


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Argument, else $FPDM_BENCH_CACHE, else ~/.cache/fpdm-bench."""
    root = cache_dir or os.environ.get("FPDM_BENCH_CACHE") or Path.home() / ".cache" / "fpdm-bench"
    return Path(root).expanduser()


# ----------------------------------------------------------------------------------------------
# Extractor registry (our side): what compute_metrics needs to know about each torch-fidelity name


@dataclass(frozen=True)
class WeightsInfo:
    path: str  # handed to torch-fidelity as feature_extractor_weights_path
    sha256: str  # part of the reference-statistics cache key
    has_logits: bool  # False: no Inception Score with these weights


@dataclass(frozen=True)
class ExtractorSpec:
    name: str  # torch-fidelity registry name
    feature_layer: str  # layer for FID / KID / precision-recall
    logits_layer: str | None  # layer for the Inception Score, None if the network has no logits
    in_channels: int  # inputs are expanded grey -> RGB when 3
    preprocessing: str  # what the extractor does to uint8 inputs (part of the cache key)
    resolve_weights: Callable[..., WeightsInfo]  # (weights, cache_dir) -> WeightsInfo
    # Data sources whose images the network's features mean something for (None: any natural images).
    # A classifier trained on 8x8 grey digits says nothing about colour photographs.
    data_sources: tuple[str, ...] | None = None
    trained_on: str = "ImageNet photographs"
    # Feature size per layer: a reference file's statistics of another size are refused (reference_file.py).
    dims: dict[str, int] = field(default_factory=dict)
    # Layer of spatial features for sFID (Nash et al. 2021), None when the network has none.
    spatial_layer: str | None = None
    # torch-fidelity registry name when it differs from `name` (a subclass adding layers or offline loading).
    tf_name: str | None = None
    # What the protocol label calls the network (e.g. the model size: ViT-S and ViT-L numbers do not compare).
    label: str | None = None


EXTRACTORS: Registry[ExtractorSpec] = Registry("feature extractor", key="metrics.extractor")
get_extractor, list_extractors = EXTRACTORS.get, EXTRACTORS.list


def register_extractor(spec: ExtractorSpec) -> ExtractorSpec:
    return EXTRACTORS.register(spec.name, spec)


# ----------------------------------------------------------------------------------------------
# The digits CNN


def to_unit_8x8(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, 1, 8, 8) in [0, 1].

    Colour is averaged to grey; H and W must be multiples of 8 and are area-averaged down to 8x8
    (16x16 -> 8x8 is an exact 2x2 mean), so 8x8 data and its 2x upsampling give the same features.
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[2] % 8 or x.shape[3] % 8:
        raise ValueError(f"digits-cnn: expected uint8 (B, 1|3, 8k, 8k) images, got {tuple(x.shape)}")
    x = x.float().div(255.0).mean(dim=1, keepdim=True)
    return F.adaptive_avg_pool2d(x, (8, 8)) if x.shape[-2:] != (8, 8) else x


class DigitsCNN(nn.Module):
    """conv8 -> strided conv16 -> 64-d features -> 10 logits (about 0.1 GFLOP per full-batch step).
    Features are the pre-activation of the penultimate layer (dense and roughly Gaussian, so their
    covariance is full rank), standardised per dimension with the training split's mean and std
    (buffers set after training). Standardising puts them on the O(1) scale KID's polynomial kernel
    (x.y/d + 1)^3 assumes, as Inception pool features are; it does not change the logits."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, 10)
        self.register_buffer("feat_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feat_std", torch.ones(self.feature_dim))

    def pre(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 8, 8) in [0, 1]
        h = F.relu(self.conv1(x - 0.5))  # (B, 8, 8, 8)
        h = F.relu(self.conv2(h))  # (B, 16, 4, 4)
        return self.fc1(h.flatten(1))  # (B, 64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.pre(x)
        return (pre - self.feat_mean) / self.feat_std, self.fc2(F.relu(pre))  # (B, 64), (B, 10)


# Training recipe; bumping the version changes the cache file name.
_DIGITS_RECIPE = {"version": 1, "seed": 0, "steps": 150, "lr": 3e-3, "weight_decay": 1e-4}


def _train_digits_cnn(seed: int, steps: int, lr: float, weight_decay: float) -> tuple[DigitsCNN, float, int]:
    return fit_digits_classifier(DigitsCNN, seed, steps, lr, weight_decay)


def fit_digits_classifier(
    model_cls: type[nn.Module], seed: int, steps: int, lr: float, weight_decay: float
) -> tuple[nn.Module, float, int]:
    """Full-batch Adam on the digits train split, on CPU, in deterministic mode, then the feature
    standardisation (``feat_mean`` / ``feat_std`` of ``model.pre`` on the train split); returns
    (model, held-out accuracy, train size). Shared by the digits-cnn and digits-mlp rulers."""
    # The data module owns the split (stratified 80/20, random_state=0) and the 0..16 -> uint8 map.
    from harness.data.digits import digits_uint8

    x_tr, y_tr = digits_uint8("train", 8)
    x_te, y_te = digits_uint8("test", 8)
    xt = to_unit_8x8(x_tr)
    # One thread: the same float reduction order on every machine (and no oversubscription on
    # small shared CPUs, where 2 threads were 4x slower than 1 for this tiny network).
    was_det, n_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_cls()
            opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xt)[1], y_tr).backward()
                opt.step()
    finally:
        torch.use_deterministic_algorithms(was_det)
        torch.set_num_threads(n_threads)
    model.eval()
    with torch.no_grad():
        pre = model.pre(xt)
        model.feat_mean.copy_(pre.mean(0))
        model.feat_std.copy_(pre.std(0).clamp_min(1e-6))
        acc = float((model(to_unit_8x8(x_te))[1].argmax(1) == y_te).float().mean())
    return model, acc, len(y_tr)


def ensure_digits_cnn(cache_dir: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Path of the cached digits-cnn safetensors (trained on first use) and its sidecar metadata."""
    from safetensors.torch import save

    tag = f"digits-cnn-v{_DIGITS_RECIPE['version']}-seed{_DIGITS_RECIPE['seed']}"
    path = default_cache_dir(cache_dir) / "extractors" / f"{tag}.safetensors"
    meta_path = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # concurrent jobs: one trains, the others wait and load
        if path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if sha256_file(path) == meta.get("sha256"):
                return path, meta
        model, acc, n_train = _train_digits_cnn(**{k: v for k, v in _DIGITS_RECIPE.items() if k != "version"})
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write(path, save(state, metadata={"recipe": json.dumps(_DIGITS_RECIPE)}))
        meta = {
            "extractor": "digits-cnn",
            "heldout_accuracy": acc,
            "train_size": n_train,
            "split": "harness.data.digits train (stratified 80/20, random_state=0)",
            "sha256": sha256_file(path),
            "torch": torch.__version__,
            **{f"recipe_{k}": v for k, v in _DIGITS_RECIPE.items()},
        }
        atomic_write(meta_path, json.dumps(meta, indent=1))
        return path, meta


class FeatureExtractorDigitsCNN(FeatureExtractorBase):
    """torch-fidelity wrapper: uint8 (B, 1|3, 8k, 8k) -> features '64' and/or 'logits'."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        from safetensors.torch import load_file

        # Never train silently inside torch-fidelity with an unknown cache: the default cache is used
        # only when no path is given (compute_metrics always passes one).
        path = feature_extractor_weights_path or ensure_digits_cnn()[0]
        self.net = DigitsCNN()
        self.net.load_state_dict(load_file(str(path)))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8):
            raise ValueError("digits-cnn: expecting a torch.uint8 image batch")
        feats, logits = self.net(to_unit_8x8(x))
        out = {"64": feats, "logits": logits}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "64", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "64", "kid": "64", "prc": "64"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)


# ----------------------------------------------------------------------------------------------
# Registrations


def _digits_weights(weights=None, cache_dir=None, expected_sha256=None) -> WeightsInfo:
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise FileNotFoundError(
                f"metrics.weights={str(p)!r} does not exist; leave it unset for digits-cnn "
                "to train and cache the default extractor"
            )
        digest = sha256_file(p)
        if expected_sha256 and not digest.startswith(expected_sha256.lower()):
            raise ValueError(
                f"metrics.weights={p}: sha256 {digest[:16]}... != metrics.weights_sha256={expected_sha256}"
            )
        return WeightsInfo(str(p), digest, True)
    path, meta = ensure_digits_cnn(cache_dir)
    return WeightsInfo(str(path), meta["sha256"], True)


def _inception_weights(weights=None, cache_dir=None, expected_sha256=None) -> WeightsInfo:
    from harness.metrics.inception import load_inception_weights

    state, sha = load_inception_weights(weights, expected_sha256)
    has_logits = bool(state["fc.weight"].abs().sum() > 0)  # converted FID weights carry a zero fc
    return WeightsInfo(str(weights), sha, has_logits)


register_extractor(
    ExtractorSpec(
        "digits-cnn",
        "64",
        "logits",
        1,
        "uint8; grey; area-resize to 8x8; /255",
        _digits_weights,
        data_sources=("digits",),
        trained_on="scikit-learn's 8x8 grey digits",
        dims={"64": 64, "logits": 10},
    )
)
register_extractor(
    ExtractorSpec(
        "inception-v3-compat",
        "2048",
        "logits_unbiased",
        3,
        "uint8; grey->RGB; TF1 bilinear resize to 299x299; (x-128)/128",
        _inception_weights,
        dims={"2048": 2048, "logits_unbiased": 1008, SPATIAL_LAYER: SPATIAL_DIM},
        spatial_layer=SPATIAL_LAYER,
        tf_name=ADM_INCEPTION,
    )
)


def _dinov2_weights(name: str) -> Callable[..., WeightsInfo]:
    def resolve(weights=None, cache_dir=None, expected_sha256=None) -> WeightsInfo:
        return WeightsInfo(str(weights), load_dinov2_weights(name, weights, expected_sha256)[1], False)

    return resolve


for _name, _dim in DINOV2_DIMS.items():  # FD-DINOv2 (docs/metrics.md): offline weights, no logits
    register_extractor(
        ExtractorSpec(
            _name,
            "dinov2",
            None,
            3,
            "uint8; grey->RGB; TF1 bilinear resize to 224x224; ImageNet mean/std",
            _dinov2_weights(_name),
            dims={"dinov2": _dim},
            tf_name=LOCAL_PREFIX + _name,
            label=f"DINOv2 {DINOV2_SIZES[_name]}",
            trained_on="LVD-142M photographs",
        )
    )
    if LOCAL_PREFIX + _name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(LOCAL_PREFIX + _name, FeatureExtractorDinoV2Local)

if ADM_INCEPTION not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(ADM_INCEPTION, FeatureExtractorInceptionADM)
if "digits-cnn" not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor("digits-cnn", FeatureExtractorDigitsCNN)
