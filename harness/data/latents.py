"""``latents``: precomputed VAE latents plus labels (the data FPDM and DiT actually train on).

The paper trains in the latent space of the Stable Diffusion VAE, 256x256 images -> 32x32x4 latents
(paper Sec. 4.1; official code reads fast-DiT style ``.npy`` features). Two layouts under ``data.root``:

1. fast-DiT (``chuanyangjin/fast-DiT`` ``extract_features.py``): ``<prefix>_features/*.npy`` and
   ``<prefix>_labels/*.npy`` (e.g. ``imagenet256_features``), one file per sample, latent shape
   ``(1, C, h, w)`` or ``(C, h, w)``, label shape ``(1,)`` or ``()``; files are paired by name.
2. ours (``python -m harness.data.encode``): one ``latents.npz`` with ``latents`` ``(N, C, h, w)``
   float32, ``labels`` ``(N,)``, ``keys`` ``(N,)`` (source relative paths), plus
   ``latents_meta.json`` (vae_path, scaling_factor, shift_factor, image_size, source, count, ...).

Either way the stored latents are already ``(z - shift_factor) * scaling_factor`` (fast-DiT:
``* 0.18215``); ``to_uint8_images`` undoes this and decodes with diffusers' ``AutoencoderKL``
loaded from ``data.vae_path`` with ``local_files_only=True`` (as FPDM's sample.py divides by
``vae.config.scaling_factor``). Split: by a hash of each sample's key (source path or file name).
"""

from __future__ import annotations

import json
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .registry import (
    DataConfigError,
    DataPathError,
    DataSource,
    DataSpec,
    EmptyDataError,
    pixels_to_uint8,
    register_dataset,
    resolve_num_classes,
    select_split,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

LATENTS_FILE = "latents.npz"
META_FILE = "latents_meta.json"
VAE_HINT = (
    "download stabilityai/sd-vae-ft-mse (diffusers format) on a machine with network, "
    "copy the folder here and set {key}=/path/to/sd-vae-ft-mse"
)
DECODE_BATCH = 16  # bounds the VAE decoder's activation memory at 256x256


# ----------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------
def load_vae(vae_path: str | None, key: str = "data.vae_path") -> AutoencoderKL:
    """``AutoencoderKL`` from a local folder, eval mode, on CPU; never downloads."""
    if vae_path is None or str(vae_path) == "":
        raise DataPathError(f"{key} is not set (needed to encode/decode latents): {VAE_HINT.format(key=key)}")
    path = Path(str(vae_path)).expanduser()
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json (not a diffusers AutoencoderKL folder)"
        raise DataPathError(f"{key}={vae_path} {what}: {VAE_HINT.format(key=key)}")
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)


class VaeDecoder:
    """Lazily loaded decoder: scaled latents ``(B, C, h, w)`` -> uint8 ``(B, 3, H, W)`` on x's device.

    ``scale`` None means ``vae.config.scaling_factor``; ``shift`` None means ``vae.config.shift_factor``
    (None / 0 for the SD VAEs)."""

    def __init__(self, vae_path: str | None, scale: float | None = None, shift: float | None = None):
        self.vae_path, self.scale, self.shift = vae_path, scale, shift
        self._vae = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # DataLoader workers / spawn: ship the settings, reload lazily
        return {"vae_path": self.vae_path, "scale": self.scale, "shift": self.shift}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def vae(self):
        with self._lock:
            if self._vae is None:
                self._vae = load_vae(self.vae_path)
        return self._vae

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.vae()
        if next(vae.parameters()).device != z.device:
            vae.to(z.device)  # follow the samples (CUDA or CPU), never hard-code a device
        dtype = next(vae.parameters()).dtype
        scale = self.scale if self.scale is not None else vae.config.scaling_factor
        shift = self.shift if self.shift is not None else (getattr(vae.config, "shift_factor", None) or 0.0)
        out = [vae.decode(chunk.to(dtype) / scale + shift).sample for chunk in z.split(DECODE_BATCH)]
        return pixels_to_uint8(torch.cat(out))


class DecodedLatents(Dataset):
    """Reference images when the source folder is gone: the VAE reconstructions of the latents."""

    def __init__(self, latents: Dataset, decoder: VaeDecoder):
        self.latents, self.decoder = latents, decoder

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.decoder(self.latents[i][0][None])[0].cpu()


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------
class FastDiTLatents(Dataset):
    """One ``.npy`` per sample, read on access (ImageNet-sized sets do not fit in memory)."""

    def __init__(self, feature_files: list[Path], label_files: list[Path], unconditional: bool = False):
        self.feature_files, self.label_files, self.unconditional = feature_files, label_files, unconditional

    def __len__(self) -> int:
        return len(self.feature_files)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.load(self.feature_files[i])).float()
        x = x[0] if x.ndim == 4 else x  # fast-DiT stores (1, C, h, w)
        y = 0 if self.unconditional else int(np.load(self.label_files[i]).reshape(-1)[0])
        return x, torch.tensor(y, dtype=torch.long)


def find_fastdit_dirs(root: Path, image_size: int | None) -> tuple[Path, Path] | None:
    pairs = sorted(
        (f, f.with_name(f.name[: -len("_features")] + "_labels")) for f in root.glob("*_features") if f.is_dir()
    )
    pairs = [(f, l) for f, l in pairs if l.is_dir()]
    if not pairs:
        return None
    preferred = [p for p in pairs if p[0].name == f"imagenet{image_size}_features"]
    if preferred:
        return preferred[0]
    if len(pairs) > 1:
        raise DataConfigError(
            f"data.root={root} has several latent sets {[p[0].name for p in pairs]}: "
            f"set data.root to a folder with one, or data.image_size to pick imagenet<size>"
        )
    return pairs[0]


def _load_npz(root: Path):
    with np.load(root / LATENTS_FILE, allow_pickle=False) as f:
        latents, labels = f["latents"], f["labels"]
        keys = [str(k) for k in f["keys"]] if "keys" in f.files else [str(i) for i in range(len(labels))]
    if latents.ndim != 4 or len(latents) != len(labels):
        raise DataConfigError(
            f"data.root={root}/{LATENTS_FILE}: latents {latents.shape} and labels "
            f"{labels.shape} do not match (N, C, h, w) / (N,): re-run harness.data.encode"
        )
    return torch.from_numpy(latents).float(), torch.from_numpy(labels.astype(np.int64)), keys


def _load_fastdit(root: Path, dirs: tuple[Path, Path]):
    feats = {p.name: p for p in dirs[0].glob("*.npy")}
    labs = {p.name: p for p in dirs[1].glob("*.npy")}
    names = sorted(set(feats) & set(labs), key=lambda n: (len(n), n))  # 2.npy before 10.npy
    missing = sorted(set(feats) ^ set(labs))
    if missing:
        raise DataConfigError(
            f"data.root={root}: {len(missing)} feature/label file(s) without a partner "
            f"(e.g. {missing[0]}): re-extract or remove them"
        )
    labels = torch.tensor([int(np.load(labs[n]).reshape(-1)[0]) for n in names], dtype=torch.long)
    return [feats[n] for n in names], [labs[n] for n in names], labels, names


def read_meta(root: Path) -> dict:
    path = root / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _reference(split: str, *, meta: dict, latents_fn, decoder: VaeDecoder):
    """Real images if the encoded source folder is still there (same crop as the encoder saw),
    else VAE reconstructions of the latents of ``split``."""
    source = meta.get("source")
    if source and Path(source).is_dir():
        from .registry import build_dataset

        src = build_dataset({"name": "image_folder", "root": source, "image_size": meta["image_size"]})
        return src.reference_images(split)
    return DecodedLatents(latents_fn(split), decoder)


def _subset(split: str, *, keys, make):
    return make(select_split(keys, split))


def _open_root(spec: DataSpec) -> tuple[Path, dict]:
    """``data.root`` and its encoder meta, after checking the root, ``data.vae_path`` and ``data.image_size``."""
    if spec.root is None:
        raise DataPathError(
            "data.root is not set: set data.root=/path/to/latents (written by python -m harness.data.encode)"
        )
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise DataPathError(
            f"data.root={spec.root} does not exist: set data.root=/path/to/latents "
            f"(make one with python -m harness.data.encode --images DIR --vae DIR --out DIR)"
        )
    if spec.vae_path is not None and not Path(spec.vae_path).expanduser().is_dir():
        raise DataPathError(f"data.vae_path={spec.vae_path} does not exist: {VAE_HINT.format(key='data.vae_path')}")
    meta = read_meta(root)
    if spec.image_size is not None and meta.get("image_size") not in (None, spec.image_size):
        raise DataConfigError(
            f"data.image_size={spec.image_size} but {root}/{META_FILE} says the latents were "
            f"encoded at {meta['image_size']}: set data.image_size={meta['image_size']}"
        )
    return root, meta


def _load(root: Path, spec: DataSpec, meta: dict):
    """``(latents, labels, keys, layout, files)`` from ``latents.npz`` or a fast-DiT feature/label folder pair."""
    if (root / LATENTS_FILE).is_file():
        latents, labels, keys = _load_npz(root)
        layout, files = "npz", None
    else:
        dirs = find_fastdit_dirs(root, spec.image_size or meta.get("image_size") or 256)
        if dirs is None:
            raise EmptyDataError(
                f"data.root={root} holds neither {LATENTS_FILE} nor <prefix>_features/ + "
                f"<prefix>_labels/: set data.root to a folder written by harness.data.encode or fast-DiT"
            )
        feature_files, label_files, labels, keys = _load_fastdit(root, dirs)
        latents, layout, files = None, "fast-dit", (feature_files, label_files)
    return latents, labels, keys, layout, files


@register_dataset("latents", extractor="inception-v3-compat")
def build_latents(spec: DataSpec) -> DataSource:
    root, meta = _open_root(spec)
    latents, labels, keys, layout, files = _load(root, spec, meta)
    if len(labels) == 0:
        raise EmptyDataError(f"data.root={root} holds 0 latents: re-run python -m harness.data.encode")
    # Flipped copies share their source key, so both land in the same split.
    inferred = int(meta.get("num_classes") or int(labels.max()) + 1)
    num_classes, labels = resolve_num_classes(spec, labels, inferred)

    def make(idx: list[int]) -> Dataset:
        if files is None:
            return TensorDataset(latents[idx], labels[idx])
        return FastDiTLatents([files[0][i] for i in idx], [files[1][i] for i in idx], num_classes == 1)

    latents_fn = partial(_subset, keys=keys, make=make)
    train = latents_fn(spec.split)
    if len(train) == 0:
        raise EmptyDataError(
            f"data.split={spec.split} of data.root={root} is empty ({len(keys)} latents in all): set data.split=all"
        )
    x0 = train[0][0]
    if x0.ndim != 3 or x0.shape[-1] != x0.shape[-2]:
        raise DataConfigError(f"data.root={root}: latents must be square (C, h, h), got {tuple(x0.shape)}")
    scale = spec.latent_scale if spec.latent_scale is not None else meta.get("scaling_factor")
    decoder = VaeDecoder(spec.vae_path or meta.get("vae_path"), scale, meta.get("shift_factor"))
    shape = list(x0.shape)
    return DataSource(
        name="latents",
        train=train,
        channels=shape[0],
        image_size=shape[-1],
        num_classes=num_classes,
        is_latent=True,
        split=spec.split,
        reference_fn=partial(_reference, meta=meta, latents_fn=latents_fn, decoder=decoder),
        identity={
            "source": "latents",
            "layout": layout,
            "keys_sha": _keys_hash(keys, labels, latents),
            "shape": shape,
            "split": spec.split,
            "num_classes": num_classes,
            "scaling_factor": scale,
            "encoder": {k: meta.get(k) for k in ("vae_path", "image_size", "posterior", "flip", "source")},
        },
        info={
            "root": str(root),
            "layout": layout,
            "latent_shape": shape,
            "n_all": len(keys),
            "vae_path": decoder.vae_path,
            "latent_scale": scale,
            "meta": meta,
        },
        decode_fn=decoder,
    )


def _keys_hash(keys: list[str], labels: torch.Tensor, latents: torch.Tensor | None) -> str:
    """Hash of keys and labels, plus (in-memory layout) a strided sample of latent values, so a
    re-encode with other settings changes the fingerprint without hashing gigabytes."""
    import hashlib

    h = hashlib.sha256()
    for k, y in zip(keys, labels.tolist()):
        h.update(f"{k}\t{y}\n".encode())
    if latents is not None:
        step = max(1, len(latents) // 256)
        h.update(latents[::step].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
