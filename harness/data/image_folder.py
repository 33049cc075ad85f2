"""``image_folder``: any folder of images, with optional class subfolders.

Preprocessing follows DiT (facebookresearch/DiT ``train.py``: ``center_crop_arr`` from ADM's
``image_datasets.py``): halve with a BOX filter while the short side is >= 2x the target, resize
with BICUBIC so the short side equals the target, then take the centre crop; images are converted
to RGB and scaled to [-1, 1]. ``data.hflip=true`` adds DiT's random horizontal flip (training only).

Layout: ``root/<class>/**/<image>`` (class index = position of the subfolder name in sorted order)
or, when no subfolder holds an image, ``root/<image>`` (one class). Files are matched by extension
(``IMAGE_EXTENSIONS``); other files are skipped and counted. Every image is decoded once at build
time: unreadable or corrupt files are collected in ``source.bad_files`` and logged as one warning,
never raised. Split: a file is in ``test`` when a hash of its relative path says so (about 20%),
so adding files never moves existing ones; ``all`` is everything.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .registry import (
    DataPathError,
    DataSource,
    DataSpec,
    EmptyDataError,
    register_dataset,
    resolve_num_classes,
    select_split,
    uint8_to_pixels,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_IMAGE_SIZE = 256  # DiT / FPDM resolution (paper Sec. 4.1)
# Folders up to this many images keep their preprocessed uint8 arrays from the build-time scan
# (3*256*256 bytes each: 4096 images are about 0.8 GB); larger ones decode lazily per item.
CACHE_MAX_IMAGES = 4096


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM / DiT centre crop (guided-diffusion ``image_datasets.py``, DiT ``train.py``)."""
    # BOX-halve first: a single bicubic resize from far larger would alias.
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size])


def load_image_uint8(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """Decode, convert to RGB, centre crop: uint8 ``(3, image_size, image_size)``."""
    with Image.open(path) as im:
        im = im.convert("RGB")  # forces a full decode, so truncated files fail here
    arr = np.asarray(center_crop_arr(im, image_size), dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(root: Path) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """``(entries [(relpath, class_index)], classes, skipped non-image relpaths)``, sorted."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    images = [f for f in files if _is_image(f)]
    skipped = [f for f in files if not _is_image(f)]
    classes = sorted({f.split("/", 1)[0] for f in images if "/" in f})
    if classes:
        top = [f for f in images if "/" not in f]
        if top:
            log.warning(
                "data.root=%s: %d image(s) directly in the root are ignored because class subfolders exist (e.g. %s)",
                root,
                len(top),
                top[0],
            )
        skipped += top
        index = {c: i for i, c in enumerate(classes)}
        entries = [(f, index[f.split("/", 1)[0]]) for f in images if "/" in f]
    else:
        entries = [(f, 0) for f in images]
    return entries, classes, skipped


def _try_load(path: Path, image_size: int) -> np.ndarray | str:
    try:
        return load_image_uint8(path, image_size)
    except Exception as exc:  # any decoder failure means "bad file", never a crash
        return f"{type(exc).__name__}: {exc}"


def scan_images(
    root: Path, entries: list[tuple[str, int]], image_size: int, keep: bool
) -> tuple[list[tuple[str, int]], list[tuple[str, str]], np.ndarray | None]:
    """Decode every image once. Returns ``(good entries, bad [(relpath, reason)], arrays or None)``."""
    workers = max(1, min(8, os.cpu_count() or 1))  # PIL decodes outside the GIL
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda e: _try_load(root / e[0], image_size), entries))
    good, bad, arrays = [], [], []
    for entry, res in zip(entries, results):
        if isinstance(res, str):
            bad.append((entry[0], res))
        else:
            good.append(entry)
            if keep:
                arrays.append(res)
    return good, bad, (arrays if keep else None)


class ImageFolderDataset(Dataset):
    """Items of a scanned folder. ``uint8=False``: ``(x in [-1, 1], y)``; ``uint8=True``: uint8 image only
    (the form torch-fidelity reads). ``keys`` are relative paths, ``labels`` class indices."""

    def __init__(
        self,
        root: str,
        entries: list[tuple[str, int]],
        labels: torch.Tensor,
        image_size: int,
        arrays: list[np.ndarray] | None = None,
        uint8: bool = False,
        hflip: bool = False,
    ):
        self.root, self.image_size, self.uint8, self.hflip = Path(root), image_size, uint8, hflip
        self.keys = [e[0] for e in entries]
        self.labels = labels
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.keys)

    def image_uint8(self, i: int) -> torch.Tensor:
        if self.arrays is not None:
            return torch.from_numpy(self.arrays[i])
        path = self.root / self.keys[i]
        try:
            return torch.from_numpy(load_image_uint8(path, self.image_size))
        except Exception as exc:  # the file changed after the scan
            raise DataPathError(
                f"data.root: {path} became unreadable after the scan ({exc}): restore or remove it and rebuild"
            ) from exc

    def __getitem__(self, i: int):
        u8 = self.image_uint8(i)
        if self.uint8:
            return u8
        x = uint8_to_pixels(u8)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


def _reference(split: str, *, root, entries, labels, image_size, arrays) -> ImageFolderDataset:
    keep = select_split([e[0] for e in entries], split)
    return ImageFolderDataset(
        root,
        [entries[i] for i in keep],
        labels[keep],
        image_size,
        None if arrays is None else [arrays[i] for i in keep],
        uint8=True,
    )


def check_root(root: str | None, key: str = "data.root") -> Path:
    if root is None or str(root) == "":
        raise DataPathError(f"{key} is not set: set {key}=/path/to/images")
    path = Path(os.path.expanduser(str(root)))
    if not path.exists():
        raise DataPathError(f"{key}={root} does not exist: set {key}=/path/to/images")
    if not path.is_dir():
        raise DataPathError(f"{key}={root} is not a directory: set {key}=/path/to/images")
    return path


def _readable_images(root: Path, size: int):
    """``(good, bad, arrays, classes, skipped)`` of ``root``; raises if it holds no readable image."""
    entries, classes, skipped = find_images(root)
    if not entries:
        found = f"{len(skipped)} non-image file(s), e.g. {skipped[:3]}" if skipped else "nothing"
        raise EmptyDataError(
            f"data.root={root} has no image ({'/'.join(IMAGE_EXTENSIONS)}), found {found}: "
            f"set data.root to a folder of images or class subfolders"
        )
    good, bad, arrays = scan_images(root, entries, size, keep=len(entries) <= CACHE_MAX_IMAGES)
    if bad:
        log.warning(
            "data.root=%s: %d unreadable image(s) skipped: %s",
            root,
            len(bad),
            "; ".join(f"{p} ({why})" for p, why in bad),
        )
    if not good:
        raise EmptyDataError(
            f"data.root={root} has {len(bad)} image file(s) but none is readable "
            f"(e.g. {bad[0][0]}: {bad[0][1]}): set data.root to a folder of valid images"
        )
    return good, bad, arrays, classes, skipped


@register_dataset("image_folder", extractor="inception-v3-compat")
def build_image_folder(spec: DataSpec) -> DataSource:
    root = check_root(spec.root)
    size = spec.image_size or DEFAULT_IMAGE_SIZE
    good, bad, arrays, classes, skipped = _readable_images(root, size)
    labels = torch.tensor([e[1] for e in good], dtype=torch.long)
    num_classes, labels = resolve_num_classes(spec, labels, inferred=max(1, len(classes)))
    good = [(key, int(y)) for (key, _), y in zip(good, labels)]
    keep = select_split([e[0] for e in good], spec.split)
    if not keep:
        raise EmptyDataError(
            f"data.split={spec.split} of data.root={root} is empty ({len(good)} images in all): set data.split=all"
        )
    ref = partial(_reference, root=str(root), entries=good, labels=labels, image_size=size, arrays=arrays)
    train = ImageFolderDataset(
        str(root),
        [good[i] for i in keep],
        labels[keep],
        size,
        None if arrays is None else [arrays[i] for i in keep],
        hflip=spec.hflip,
    )
    preprocessing = {
        "crop": "DiT center_crop_arr (BOX halving, BICUBIC, centre crop)",
        "mode": "RGB",
        "scale": "u/127.5-1",
        "hflip": bool(spec.hflip),
        "split_rule": "sha1(relpath) % 5 == 0 -> test",
    }
    # Identity: every usable file's path, size and class (content hashes would mean re-reading the folder).
    files = [(k, (root / k).stat().st_size, y) for k, y in good]
    return DataSource(
        name="image_folder",
        train=train,
        channels=3,
        image_size=size,
        num_classes=num_classes,
        is_latent=False,
        split=spec.split,
        reference_fn=ref,
        identity={
            "source": "image_folder",
            "files": files,
            "classes": classes,
            "image_size": size,
            "split": spec.split,
            "num_classes": num_classes,
            **preprocessing,
        },
        info={
            "root": str(root),
            "classes": classes,
            "n_all": len(good),
            "skipped_non_images": len(skipped),
            "bad_file_list": [p for p, _ in bad],
            "preprocessing": preprocessing,
        },
        bad_files=[p for p, _ in bad],
    )
