"""The model's input shape from the ``data`` config alone, without reading a sample.

``harness.inspect`` counts parameters, FLOPs and memory of a configuration whose data may not be
on this machine (the paper's ImageNet latents), and the config checks need the input size to
validate ``model.patch_size``. The shape follows each source's own rules:

- ``digits``: 1 channel, ``data.upscale or data.image_size`` (8 or 16), 10 classes;
- ``image_folder``: 3 channels (images are converted to RGB), ``data.image_size`` (the centre
  crop); classes from ``data.num_classes``, else counted from the class subfolders of
  ``data.root`` (a listing, no image is decoded);
- ``latents``: 4 channels at ``data.image_size / 8`` (the Stable Diffusion VAE's 8x downsampling,
  FPDM paper Sec. 4.1: 256x256 images -> 32x32x4 latents); ``data.num_classes``, else ImageNet's 1000.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import DataConfigError

LATENT_CHANNELS = 4  # Stable Diffusion VAE (sd-vae-ft-mse), as in the paper
LATENT_DOWNSAMPLE = 8
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class InputShape:
    channels: int
    image_size: int  # the model's input size (the latent size for latents)
    num_classes: int
    note: str = ""  # where a value came from when the config did not say it


def _digits(d: Any, classes: bool) -> InputShape:
    size = d.get("upscale") or d.get("image_size") or 8
    if size not in (8, 16):
        raise DataConfigError(
            f"data.image_size={size} is not a digits size: set data.upscale and data.image_size to 8 or 16"
        )
    return InputShape(1, size, d.get("num_classes") or 10)


def _image_folder(d: Any, classes: bool) -> InputShape:
    size = d.get("image_size") or 256
    if d.get("num_classes") or not classes:
        return InputShape(3, size, d.get("num_classes") or 0)
    root = Path(str(d.get("root") or "")).expanduser()
    if not d.get("root") or not root.is_dir():
        raise DataConfigError(
            "data=image_folder without data on disk needs data.num_classes to know the class "
            "table: set data.num_classes=N (1 = unconditional) or data.root=/path/to/images"
        )
    from .image_folder import find_images

    _, classes, _ = find_images(root)
    return InputShape(3, size, max(1, len(classes)), note=f"classes counted in {root}")


def _latents(d: Any, classes: bool) -> InputShape:
    size = d.get("image_size") or 256
    if size % LATENT_DOWNSAMPLE:
        raise DataConfigError(
            f"data.image_size={size} is not a multiple of {LATENT_DOWNSAMPLE} (the VAE's "
            f"downsampling): set data.image_size to the pixel size the latents were encoded at"
        )
    classes, note = d.get("num_classes"), ""
    if not classes:
        classes, note = IMAGENET_CLASSES, "data.num_classes unset: ImageNet's 1000 classes assumed"
    return InputShape(LATENT_CHANNELS, size // LATENT_DOWNSAMPLE, classes, note)


_SHAPES: dict[str, Callable[[Any, bool], InputShape]] = {
    "digits": _digits,
    "image_folder": _image_folder,
    "latents": _latents,
}


def register_input_shape(name: str, fn: Callable[[Any, bool], InputShape]) -> None:
    """A data source added to the registry declares its shape rule here (for inspect and checks)."""
    _SHAPES[name] = fn


def input_shape(data_cfg: Any, classes: bool = True) -> InputShape:
    """(channels, model input size, classes) of ``data_cfg`` without loading data; with
    ``classes=False`` the class count may be 0 (unknown) and no folder is listed."""
    try:
        fn = _SHAPES[data_cfg.name]
    except KeyError:
        raise DataConfigError(
            f"data.name={data_cfg.name!r} has no shape rule: set data.name to one of {', '.join(sorted(_SHAPES))}"
        ) from None
    return fn(data_cfg, classes)
