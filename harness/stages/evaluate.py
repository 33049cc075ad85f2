"""The evaluation stage: sample quality through torch-fidelity against the data's reference split,
or against a reference file (``metrics.reference``, docs/metrics.md).

The protocol (sample count, extractor, reference split, seed ranges) travels with every number:
a FID computed from 1,000 digits samples with the digits CNN is labelled
"FID-1k, digits-cnn, vs train split", never FID-50K. Reference statistics are computed once per
(data set, split, extractor, preprocessing) and cached with their provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from harness.data import DataSource

EVAL_CHUNK_IMAGES = 1000  # images read and extracted at a time (196 MB at 256x256x3 uint8)


def _check_samples(images: np.ndarray, path: Path, n: int | None = None) -> None:
    """Refuse to score samples that are not uint8 images (DiT #27: NaNs inside the evaluator).
    ``n``: the image count when ``images`` only carries the dtype and per-image shape."""
    n = len(images) if n is None else n
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: samples must be uint8 (N, C, H, W), got {images.dtype} {(n, *images.shape[1:])}")
    if n < 2:
        raise ValueError(f"{path}: need at least 2 samples to score, got {n}; raise sample.num_images")


def _stored_images(samples_path: Path):
    """The samples as ``ImageChunks``, streamed from disk through the extractor: the images are never
    all in memory at once."""
    from harness.metrics.fidelity import ImageChunks
    from harness.runtime.npz_stream import iter_npz_rows, npz_shape

    shape, dtype = npz_shape(samples_path, "images")
    _check_samples(np.empty((0, *shape[1:]), dtype), samples_path, n=shape[0])
    return ImageChunks(shape[0], lambda: iter_npz_rows(samples_path, "images", EVAL_CHUNK_IMAGES))


def _reference(data: DataSource, cfg: DictConfig):
    """The reference: ``metrics.reference`` (a file, harness/metrics/reference_file.py) when set,
    else the data's ``metrics.reference_split`` as a ``ReferenceSpec``."""
    from harness.metrics import ReferenceSpec

    mc = cfg.metrics
    if mc.get("reference"):
        from harness.metrics.reference_file import open_reference_file

        return open_reference_file(mc.reference)
    split = mc.reference_split
    return ReferenceSpec(
        name=data.name,
        split=split,
        fingerprint=f"{data.fingerprint()}:{split}",
        images_fn=lambda: data.reference_images(split),
    )


def _device(cfg: DictConfig) -> str:
    return "cuda" if torch.cuda.is_available() and cfg.run.device != "cpu" else "cpu"


def selection_fid(samples_path: Path, data: DataSource, cfg: DictConfig) -> dict:
    """FID of the held-out selection set (harness/stages/selection.py) under the primary extractor
    only: it ranks settings and is never reported as a result, so no KID, precision/recall, second
    ruler, bootstrap or noise floor. Returns ``fid`` and the ``protocol`` it was measured under."""
    from harness.metrics import compute_metrics
    from harness.metrics.choice import extractor_name

    out = compute_metrics(
        _stored_images(samples_path),
        _reference(data, cfg),
        extractor=extractor_name(cfg),
        weights=cfg.metrics.weights,
        weights_sha256=cfg.metrics.weights_sha256,
        kid=False,
        prc=False,
        isc=False,
        cache_dir=cfg.paths.extractor_cache or cfg.paths.cache_dir,
        device=_device(cfg),
    )
    return {"fid": out["fid"], "protocol": out["protocol"]}


def evaluate_samples(samples_path: Path, data: DataSource, cfg: DictConfig, work_dir: Path) -> dict:
    from harness.metrics import compute_metrics
    from harness.metrics.choice import extractor_name

    images = _stored_images(samples_path)
    mc = cfg.metrics
    reference = _reference(data, cfg)
    cache_dir = cfg.paths.extractor_cache or cfg.paths.cache_dir  # extractors/ and reference/ go below it
    weights = mc.weights
    seed_ranges = cfg.sample.seed_ranges if cfg.sample.seed_ranges > 1 else None
    device = _device(cfg)
    keep: dict = {}
    out = compute_metrics(
        images,
        reference,
        extractor=extractor_name(cfg),
        weights=weights,
        weights_sha256=mc.weights_sha256,
        kid=mc.kid,
        prc=mc.prc,
        isc=mc.isc,
        sfid=mc.sfid,
        seed_ranges=seed_ranges,
        cache_dir=cache_dir,
        device=device,
        keep=keep,
    )
    out.pop("fid_values", None)
    _add_evidence(out, keep, images, reference, cfg, work_dir, seed_ranges, cache_dir, device)
    out["protocol"]["sampler"] = cfg.sample.sampler
    if not mc.fid:
        out.pop("fid", None)
    return out


def _add_evidence(
    out: dict, keep: dict, images, reference, cfg, work_dir: Path, seed_ranges, cache_dir, device
) -> None:
    """Features kept for reports, the noise floor and bootstrap interval, under both rulers
    (harness.metrics.evidence)."""
    from harness.metrics import compute_metrics
    from harness.metrics.choice import extractor_name
    from harness.metrics.evidence import ruler_evidence, second_ruler, store_features

    mc = cfg.metrics
    first = extractor_name(cfg)
    kw = {"resamples": mc.bootstrap, "seed": mc.bootstrap_seed, "floor_splits": mc.noise_floor_splits}
    out["features"] = {first: store_features(work_dir, first, keep)}
    out.update(
        ruler_evidence(keep, out["fid"], **kw), bootstrap_resamples=mc.bootstrap, bootstrap_seed=mc.bootstrap_seed
    )
    second = second_ruler(first, mc.second_extractor)
    if second is None or mc.reference:  # a reference file's statistics belong to one network
        return
    keep2: dict = {}
    fid2 = compute_metrics(
        images,
        reference,
        extractor=second,
        kid=False,
        prc=False,
        isc=False,
        seed_ranges=seed_ranges,
        cache_dir=cache_dir,
        device=device,
        keep=keep2,
    )["fid"]
    out["features"][second] = store_features(work_dir, second, keep2)
    out.update(fid_second=fid2, **ruler_evidence(keep2, fid2, suffix="_second", **kw))
    out["protocol"]["second_extractor"] = second
