"""Data source registry: the contract between the data and the train/sample/evaluate stages.

Every source (``digits``, ``image_folder``, ``latents``) is a builder registered under its config
name; ``build_dataset(cfg)`` turns the ``data`` config node into a :class:`DataSource`. Training reads
``source.train`` (pixels in ``[-1, 1]`` or raw scaled latents, as DiT / fast-DiT feed their models);
the metrics read ``source.to_uint8_images(samples)`` and ``source.reference_images(split)``, which go
through the same preprocessing, so FID compares like with like (reference statistics from
the same preprocessing as training; CompVis/latent-diffusion#138 shows what mixing them costs). ``fingerprint()`` keys the train-stage cache
(design.md "key = hash(model, data, train)").

Nothing here downloads: a missing path raises a :class:`DataError` whose one-line message names the
config key to set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from baselines.registry import Registry

SPLITS = ("train", "test", "all")
# Fraction of samples held out as the "test" split (digits: stratified; folders/latents: by hash).
TEST_FRACTION = 0.2


# ----------------------------------------------------------------------------------------------
# Errors: one line, naming the config key and the fix.
# ----------------------------------------------------------------------------------------------
class DataError(ValueError):
    """Base class of every data error (a ValueError, so config validation can catch it)."""


class DataPathError(DataError):
    """A configured path is missing or is not what the source expects."""


class EmptyDataError(DataError):
    """A path exists but holds no usable sample."""


class DataConfigError(DataError):
    """A data config value is out of range or inconsistent with the data."""


# ----------------------------------------------------------------------------------------------
# The normalised data config.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSpec:
    """The keys of the ``data`` config node that the sources read (others are ignored).

    ``image_size``: pixel size (digits: 8 or 16; image_folder: crop size, default 256; latents: the
    pixel size the latents were encoded at, checked against their metadata when given).
    ``num_classes``: None infers it from the data; 1 makes every label 0 (unconditional, as FPDM's
    ``--unsupervised``). ``upscale``: digits only, 8 or 16. ``vae_path``: latents only, a local
    diffusers AutoencoderKL folder used to decode. ``latent_scale``: the factor the stored latents
    were multiplied by (default: their metadata, else ``vae.config.scaling_factor``).
    ``hflip``: random horizontal flip of training images (DiT's ``RandomHorizontalFlip``).
    """

    name: str = "digits"
    root: str | None = None
    image_size: int | None = None
    num_classes: int | None = None
    split: str = "train"
    upscale: int | None = None
    vae_path: str | None = None
    latent_scale: float | None = None
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise DataConfigError(f"data.split={self.split!r} is not one of {SPLITS}: set data.split=train|test|all")
        for key in ("image_size", "num_classes", "upscale"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise DataConfigError(f"data.{key}={value!r} must be a positive integer or null")
        if self.latent_scale is not None and not float(self.latent_scale) > 0:
            raise DataConfigError(
                f"data.latent_scale={self.latent_scale!r} must be > 0 or null (null: the VAE's scaling_factor)"
            )

    @classmethod
    def from_config(cls, cfg: Any) -> DataSpec:
        """Accept a DataSpec, a mapping (dict / OmegaConf DictConfig), a dataclass, a name or None."""
        if isinstance(cfg, cls):
            return cfg
        if cfg is None:
            return cls()
        if isinstance(cfg, str):
            return cls(name=cfg)
        names = [f.name for f in dataclasses.fields(cls)]
        if isinstance(cfg, Mapping):
            values = {k: cfg[k] for k in names if k in cfg}
        else:  # dataclass or any attribute object (e.g. a structured config instance)
            values = {k: getattr(cfg, k) for k in names if hasattr(cfg, k)}
        values = {k: v for k, v in values.items() if v is not None}  # None = the default
        for key in ("image_size", "num_classes", "upscale"):
            if isinstance(values.get(key), float) and values[key].is_integer():
                values[key] = int(values[key])
        for key in ("root", "vae_path"):
            if values.get(key) is not None:
                values[key] = str(values[key])
        return cls(**values)


# ----------------------------------------------------------------------------------------------
# The data source handed to the stages.
# ----------------------------------------------------------------------------------------------
def pixels_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map ``[-1, 1]`` floats to uint8 ``[0, 255]`` by rounding (inverse of ``u / 127.5 - 1``)."""
    return ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def uint8_to_pixels(u: torch.Tensor) -> torch.Tensor:
    """Map uint8 ``[0, 255]`` to float ``[-1, 1]`` (DiT's ``Normalize(0.5, 0.5)`` after ``ToTensor``)."""
    return u.float() / 127.5 - 1.0


def stable_hash(payload: Any, length: int = 16) -> str:
    """Hash of a JSON-able payload, independent of dict order and of the process."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def in_test_split(key: str) -> bool:
    """Deterministic hash split for folders and latents: a sample's membership depends only on its
    key (relative path), so adding files never moves existing ones between splits."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % round(1 / TEST_FRACTION) == 0


def select_split(keys: list[str], split: str) -> list[int]:
    """Indices of ``keys`` that belong to ``split`` under :func:`in_test_split`."""
    if split == "all":
        return list(range(len(keys)))
    want_test = split == "test"
    return [i for i, k in enumerate(keys) if in_test_split(k) == want_test]


def resolve_num_classes(spec: DataSpec, labels: torch.Tensor, inferred: int) -> tuple[int, torch.Tensor]:
    """Apply ``data.num_classes``: None -> inferred; 1 -> unconditional (all labels 0); fewer than the
    data's classes is an error (labels would overflow the class embedding)."""
    if spec.num_classes is None:
        return inferred, labels
    if spec.num_classes == 1:
        return 1, torch.zeros_like(labels)
    if spec.num_classes < inferred:
        raise DataConfigError(
            f"data.num_classes={spec.num_classes} but the data has {inferred} classes: "
            f"set data.num_classes={inferred}, 1 (unconditional) or null (infer)"
        )
    return spec.num_classes, labels


@dataclass
class DataSource:
    """What a stage needs from the data. Build it with :func:`build_dataset`.

    ``train`` yields ``(x, y)``: ``x`` float ``(C, H, W)`` (pixels in ``[-1, 1]`` or scaled latents),
    ``y`` a long scalar. ``image_size`` is the model's input size (latent size for latents).
    """

    name: str
    train: Dataset
    channels: int
    image_size: int
    num_classes: int
    is_latent: bool
    split: str
    reference_fn: Callable[[str], Any]
    identity: dict
    info: dict = field(default_factory=dict)
    decode_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    bad_files: list[str] = field(default_factory=list)

    def to_uint8_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples ``(B, C, H, W)`` -> uint8 images ``(B, C', H', W')`` on x's device."""
        if x.ndim != 4:
            raise DataConfigError(f"to_uint8_images expects (B, C, H, W) samples, got shape {tuple(x.shape)}")
        if self.is_latent:
            if self.decode_fn is None:
                raise DataConfigError(f"data source {self.name!r} has latents but no decoder: set data.vae_path")
            return self.decode_fn(x)
        return pixels_to_uint8(x)

    def reference_images(self, split: str | None = None) -> Any:
        """Real images of ``split`` (default: the training split) as uint8 ``(N, C, H, W)`` tensor
        or a Dataset of uint8 ``(C, H, W)`` tensors, preprocessed exactly as for training."""
        split = self.split if split is None else split
        if split not in SPLITS:
            raise DataConfigError(f"reference split={split!r} is not one of {SPLITS}: use train, test or all")
        return self.reference_fn(split)

    def fingerprint(self) -> str:
        """Stable hash of the data identity and preprocessing, for cache keys."""
        return stable_hash(self.identity)

    def describe(self) -> dict:
        """Provenance for the job record: name, size, split, shapes and preprocessing."""
        out = {
            "name": self.name,
            "n": len(self.train),
            "split": self.split,
            "channels": self.channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "is_latent": self.is_latent,
            "bad_files": len(self.bad_files),
            "fingerprint": self.fingerprint(),
        }
        out.update(self.info)
        return out


# ----------------------------------------------------------------------------------------------
# Registry.
# ----------------------------------------------------------------------------------------------
DatasetBuilder = Callable[[DataSpec], DataSource]
DATASETS: Registry[DatasetBuilder] = Registry("dataset", key="data")
# The feature network a source's samples are scored with when metrics.extractor is null: the metric
# follows the data (an 8x8-digits classifier scores digits; Inception scores natural images).
_DEFAULT_EXTRACTORS: dict[str, str] = {}
NATURAL_IMAGES_EXTRACTOR = "inception-v3-compat"
get_dataset_builder, list_datasets = DATASETS.get, DATASETS.list


def register_dataset(
    name: str, *, extractor: str = NATURAL_IMAGES_EXTRACTOR
) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator: register ``builder(spec: DataSpec) -> DataSource`` under ``name``; ``extractor`` is
    the default ``metrics.extractor`` for its samples (natural images: Inception)."""

    def deco(builder: DatasetBuilder) -> DatasetBuilder:
        DATASETS.register(name, builder)
        _DEFAULT_EXTRACTORS[name] = extractor
        return builder

    return deco


def default_extractor(name: str) -> str:
    """The ``metrics.extractor`` used for data source ``name`` when the config leaves it null."""
    get_dataset_builder(name)  # an unknown source: the one-line error naming data.name
    return _DEFAULT_EXTRACTORS[name]


def build_dataset(cfg: Any = None) -> DataSource:
    """Build the source named by ``cfg.name`` (default ``digits``) from the ``data`` config node."""
    spec = DataSpec.from_config(cfg)
    return get_dataset_builder(spec.name)(spec)
