"""Data sources for fpdm-bench: ``digits`` (default), ``image_folder``, ``latents``.

Importing this package registers every source; use ``build_dataset(cfg.data)``.
See ``registry.py`` for the ``DataSource`` contract.
"""

from . import digits, image_folder, latents  # noqa: E402,F401  (registration side effects)
from .registry import (
    SPLITS,
    DataConfigError,
    DataError,
    DataPathError,
    DataSource,
    DataSpec,
    EmptyDataError,
    build_dataset,
    default_extractor,
    get_dataset_builder,
    list_datasets,
    pixels_to_uint8,
    register_dataset,
    uint8_to_pixels,
)

__all__ = [
    "SPLITS",
    "DataConfigError",
    "DataError",
    "DataPathError",
    "DataSource",
    "DataSpec",
    "EmptyDataError",
    "build_dataset",
    "default_extractor",
    "get_dataset_builder",
    "list_datasets",
    "pixels_to_uint8",
    "register_dataset",
    "uint8_to_pixels",
]
