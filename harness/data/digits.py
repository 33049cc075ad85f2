"""``digits``: scikit-learn's ``load_digits`` (UCI optical digits), the harness's default data.

1,797 greyscale 8x8 images with 17 grey levels (0..16), 10 classes; the data ships inside the
scikit-learn wheel (``sklearn.datasets.load_digits``), so nothing downloads. It stands in for
ImageNet latents (paper Sec. 4.1) in laptop / CI runs.

Preprocessing, documented once here and recorded in ``describe()``:
- grey level ``v`` in 0..16 -> uint8 ``round(v * 255 / 16)`` -> float ``u / 127.5 - 1`` in [-1, 1];
  ``to_uint8_images`` inverts the last step exactly, so a real image round-trips bit for bit.
- ``upscale=16`` doubles each pixel (nearest neighbour), which keeps the 17 grey levels exactly
  instead of inventing bilinear in-between values a generator would then have to imitate.
- split: stratified by class, 80% train / 20% test, ``sklearn.model_selection.train_test_split``
  with ``random_state=0``; ``all`` is the full set in its original order.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache, partial

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .registry import (
    TEST_FRACTION,
    DataConfigError,
    DataSource,
    DataSpec,
    register_dataset,
    resolve_num_classes,
    uint8_to_pixels,
)

SPLIT_SEED = 0
SIZES = (8, 16)


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float 0..16, labels (1797,) int), read once per process."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    """Deterministic indices of ``split`` (stratified 80/20, seed 0); train and test are disjoint."""
    _, labels = _raw_digits()
    idx = np.arange(len(labels))
    if split == "all":
        return idx
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels)
    return np.sort(train if split == "train" else test)


def digits_uint8(split: str, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``split`` as uint8 ``(N, 1, size, size)`` and labels long ``(N,)``."""
    images, labels = _raw_digits()
    idx = split_indices(split)
    u8 = np.rint(images[idx] * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    factor = size // 8
    u8 = u8.repeat(factor, axis=2).repeat(factor, axis=3)  # nearest-neighbour upscaling
    return torch.from_numpy(np.ascontiguousarray(u8)), torch.from_numpy(labels[idx])


def _reference(split: str, size: int) -> torch.Tensor:
    return digits_uint8(split, size)[0]


def _resolve_size(spec: DataSpec) -> int:
    # upscale is the digits knob; image_size must agree with it when both are set.
    if spec.upscale is not None and spec.image_size is not None and spec.upscale != spec.image_size:
        raise DataConfigError(
            f"data.upscale={spec.upscale} and data.image_size={spec.image_size} disagree for "
            f"digits: set both to 8 or both to 16"
        )
    size = spec.upscale or spec.image_size or 8
    if size not in SIZES:
        key = "data.upscale" if spec.upscale is not None else "data.image_size"
        raise DataConfigError(f"{key}={size} is not a digits size: set data.upscale and data.image_size to 8 or 16")
    return size


@register_dataset("digits", extractor="digits-cnn")
def build_digits(spec: DataSpec) -> DataSource:
    size = _resolve_size(spec)
    u8, labels = digits_uint8(spec.split, size)
    num_classes, labels = resolve_num_classes(spec, labels, inferred=10)
    images, _ = _raw_digits()
    data_sha = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
    preprocessing = {
        "grey_levels": "0..16 -> round(v*255/16) -> u/127.5-1",
        "upscale": f"nearest x{size // 8}" if size > 8 else "none",
        "split_rule": f"stratified {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%}, random_state={SPLIT_SEED}",
    }
    return DataSource(
        name="digits",
        train=TensorDataset(uint8_to_pixels(u8), labels),
        channels=1,
        image_size=size,
        num_classes=num_classes,
        is_latent=False,
        split=spec.split,
        reference_fn=partial(_reference, size=size),
        identity={
            "source": "sklearn.load_digits",
            "data_sha256": data_sha,
            "size": size,
            "split": spec.split,
            "num_classes": num_classes,
            **preprocessing,
        },
        info={"source": "sklearn.datasets.load_digits", "preprocessing": preprocessing},
    )
