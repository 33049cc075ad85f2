"""Encode an image folder into VAE latents: ``python -m harness.data.encode --images DIR --vae DIR --out DIR``.

The offline counterpart of fast-DiT's ``extract_features.py`` (the step FPDM's code assumes but does
not ship, docs/paper-notes.md §3.2): images are loaded through the ``image_folder`` source (DiT centre
crop, RGB, [-1, 1]; unreadable files are reported and skipped), encoded with diffusers'
``AutoencoderKL`` from a local folder, and stored as ``(z - shift_factor) * scaling_factor``.

Posterior: fast-DiT stores ``latent_dist.sample()``; our default ``--posterior mode`` stores the
mean, so the same folder always gives the same latents (and the same cache fingerprint).
``--posterior sample --seed S`` draws from the posterior with a seeded generator instead.
``--flip`` also stores every image's horizontal mirror (DiT trains with random flips; with fixed
latents the flip has to happen before encoding). Output, written atomically into ``--out``:
``latents.npz`` (``latents`` float32 (N, C, h, w), ``labels`` int64 (N,), ``keys`` (N,) source
relative paths, ``flipped`` bool (N,)) and ``latents_meta.json``. Everything is held in memory
(16 KiB per 256x256 image); for ImageNet-sized sets use fast-DiT's per-file layout.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from harness.runtime.io import atomic_write
from harness.runtime.progress import progress_bar

from .latents import LATENTS_FILE, META_FILE, load_vae
from .registry import DataError, build_dataset

log = logging.getLogger(__name__)
POSTERIORS = ("mode", "sample")


def encode_folder(
    images: str,
    vae: str,
    out: str,
    image_size: int = 256,
    batch_size: int = 16,
    flip: bool = False,
    posterior: str = "mode",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Encode every readable image of ``images``; write ``out/latents.npz`` + meta; return the meta."""
    if posterior not in POSTERIORS:
        raise DataError(f"--posterior={posterior!r} is not one of {POSTERIORS}: use mode or sample")
    if batch_size < 1:
        raise DataError(f"--batch-size={batch_size} must be >= 1")
    model = load_vae(vae, key="--vae")  # first: a wrong --vae fails before a long folder scan
    source = _image_source(images, image_size)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    scale = float(model.config.scaling_factor)
    shift = float(getattr(model.config, "shift_factor", None) or 0.0)
    generator = torch.Generator(device=device).manual_seed(seed) if posterior == "sample" else None
    latents = _encode(
        model,
        source.train,
        scale=scale,
        shift=shift,
        batch_size=batch_size,
        flip=flip,
        generator=generator,
        device=device,
        progress=progress,
    )
    n = len(source.train)
    out_dir = Path(out).expanduser()
    _write_latents(out_dir, latents, source.train, flip)
    meta = {
        "format": 1,
        "vae_path": str(Path(vae).expanduser().resolve()),
        "scaling_factor": scale,
        "shift_factor": shift,
        "stored_as": "(z - shift_factor) * scaling_factor",
        "image_size": image_size,
        "source": str(Path(images).expanduser().resolve()),
        "count": int(len(latents)),
        "num_images": n,
        "num_classes": source.num_classes,
        "classes": source.info["classes"],
        "latent_shape": list(latents.shape[1:]),
        "posterior": posterior,
        "seed": seed if posterior == "sample" else None,
        "flip": flip,
        "bad_files": source.bad_files,
        "preprocessing": source.info["preprocessing"],
    }
    atomic_write(out_dir / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    log.info("wrote %d latents %s to %s", len(latents), tuple(latents.shape[1:]), out_dir)
    return meta


def _image_source(images: str, image_size: int):
    """The ``image_folder`` source of ``--images`` (all splits), its errors naming ``--images``."""
    try:  # the image_folder source reports bad files; its errors name our flag, not data.root
        return build_dataset({"name": "image_folder", "root": images, "image_size": image_size, "split": "all"})
    except DataError as exc:
        raise type(exc)(str(exc).replace("data.root", "--images")) from exc


def _encode(
    model, dataset, *, scale: float, shift: float, batch_size: int, flip: bool, generator, device, progress: bool
) -> np.ndarray:
    """Stored latents ``(z - shift) * scale`` of every image (and, with ``flip``, its mirror right after it)."""
    dtype = next(model.parameters()).dtype
    chunks: list[np.ndarray] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    with torch.no_grad():
        for x, _ in progress_bar(iterable=loader, desc="encode", unit="batch", disable=not progress):
            views = [x, x.flip(-1)] if flip else [x]
            for v in views:
                dist = model.encode(v.to(device, dtype)).latent_dist
                z = dist.sample(generator=generator) if generator is not None else dist.mode()
                chunks.append(((z - shift) * scale).float().cpu().numpy())
    if flip:  # interleave to [img0, img0 mirrored, img1, ...]: each copy sits beside its source
        chunks = [np.stack([a, b], axis=1).reshape(-1, *a.shape[1:]) for a, b in zip(chunks[::2], chunks[1::2])]
    return np.concatenate(chunks)


def _write_latents(out_dir: Path, latents: np.ndarray, dataset, flip: bool) -> None:
    """Write ``latents.npz`` (latents, labels, keys, flipped) atomically into ``out_dir``."""
    reps = 2 if flip else 1
    labels = np.repeat(dataset.labels.numpy().astype(np.int64), reps)
    keys = np.repeat(np.array(dataset.keys, dtype=np.str_), reps)
    flipped = np.tile(np.array([False, True][:reps]), len(dataset))
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, latents=latents.astype(np.float32), labels=labels, keys=keys, flipped=flipped)
    atomic_write(out_dir / LATENTS_FILE, buf.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.data.encode", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="image folder (class subfolders optional)")
    p.add_argument("--vae", required=True, help="local diffusers AutoencoderKL folder (e.g. sd-vae-ft-mse)")
    p.add_argument("--out", required=True, help="output folder for latents.npz + latents_meta.json")
    p.add_argument("--image-size", type=int, default=256, help="centre-crop size in pixels (default 256)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--flip", action="store_true", help="also encode each image's horizontal mirror")
    p.add_argument(
        "--posterior",
        choices=POSTERIORS,
        default="mode",
        help="mode: deterministic posterior mean (default); sample: seeded draw, as fast-DiT",
    )
    p.add_argument("--seed", type=int, default=0, help="generator seed for --posterior sample")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        meta = encode_folder(
            args.images,
            args.vae,
            args.out,
            image_size=args.image_size,
            batch_size=args.batch_size,
            flip=args.flip,
            posterior=args.posterior,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: meta[k] for k in ("count", "latent_shape", "scaling_factor", "bad_files")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
