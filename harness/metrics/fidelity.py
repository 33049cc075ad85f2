"""Sample quality through torch-fidelity: FID, KID, precision/recall, Inception Score.

Features come from torch-fidelity's extractors (`create_feature_extractor`,
`get_featuresdict_from_dataset`) and KID / precision-recall / IS from its metric functions
(Binkowski et al. 2018; Kynkaanniemi et al. 2019; Salimans et al. 2016). FID (Heusel et al. 2017)
is computed from float64 statistics (`fid_stats.fid_from_stats`) so that the reference side can be
computed once per (data set, split, extractor, weights, preprocessing) and cached as `.npz` with
its provenance; upstream `calculate_metrics` has no precomputed-statistics input (toshas/torch-fidelity; see LTH14's fork for the usual workaround).

Every FID carries its protocol, e.g. "FID-1k, digits-cnn, vs train split"; only exactly 50,000
samples are called FID-50K (DiT#94). Several seed ranges give mean and standard deviation (and the
minimum, marked as such; edm#16). No step downloads anything: Inception weights come from
`metrics.weights` (see harness.metrics.inception).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch_fidelity
from filelock import FileLock
from torch.utils.data import Dataset
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from harness.metrics.extractors import ExtractorSpec, WeightsInfo, default_cache_dir, get_extractor
from harness.metrics.fid_stats import features_to_stats, fid_from_stats
from harness.metrics.reference_file import ReferenceFile, iter_file_images, pick_file_stats, read_reference_file
from harness.runtime.io import atomic_write

__all__ = [
    "ImageChunks",
    "ReferenceSpec",
    "ReferenceStats",
    "UInt8Images",
    "fid_label",
    "extract_features",
    "reference_stats",
    "reference_path",
    "compute_metrics",
    "fid_over_seed_ranges",
    "SeedRangeFID",
]

_REF_FORMAT = 1  # bump when the cached reference layout changes


# ----------------------------------------------------------------------------------------------
# Inputs


def _as_uint8_tensor(images, what: str) -> torch.Tensor:
    # np.require copies only what must be copied: a read-only array (memory-mapped or streamed
    # shards of samples.npz) made torch.from_numpy warn in the user's console
    x = images if torch.is_tensor(images) else torch.from_numpy(np.require(images, requirements=["C", "W"]))
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"{what}: expected uint8 (N, C, H, W) images, got {x.dtype} {tuple(x.shape)}")
    return x


class UInt8Images(Dataset):
    """Dataset of uint8 CxHxW tensors as torch-fidelity wants; grey is repeated to RGB when the
    extractor takes 3 channels (the Inception network)."""

    def __init__(self, images: torch.Tensor, channels: int) -> None:
        self.images, self.channels = images, channels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(self.channels, -1, -1).contiguous() if x.shape[0] == 1 and self.channels == 3 else x


@dataclass(frozen=True)
class ReferenceSpec:
    """The real data a metric compares against. `fingerprint` identifies its content (e.g. a data
    set version or a file hash); `images_fn()` returns uint8 (N, C, H, W), called only on a cache miss."""

    name: str
    split: str
    fingerprint: str
    images_fn: Callable[[], object]

    @property
    def label(self) -> str:
        return f"{self.split} split"


class ReferenceStats(NamedTuple):
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    n: int
    features: np.ndarray  # (n, D) float32, for KID and precision/recall
    provenance: dict


# ----------------------------------------------------------------------------------------------
# Labels


def _count(n: int) -> str:
    if n == 50_000:
        return "50K"  # the conventional name, reserved for exactly 50,000 samples
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def fid_label(n: int, extractor: str, reference: str) -> str:
    """fid_label(1000, "digits-cnn", "train split") -> "FID-1k, digits-cnn, vs train split"."""
    return f"FID-{_count(int(n))}, {extractor}, vs {reference}"


# ----------------------------------------------------------------------------------------------
# Features and reference statistics


def _use_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


class ImageChunks(NamedTuple):
    """``n`` uint8 (N, C, H, W) images that arrive as row chunks: ``chunks()`` yields arrays or
    tensors in order. Features are extracted chunk by chunk, so only one chunk of images and the
    (n, D) features are in memory (FID-50K at 256x256: 9.8 GB of images, 0.4 GB of features)."""

    n: int
    chunks: Callable[[], Iterable]


def extract_features(
    images: torch.Tensor | np.ndarray | ImageChunks,
    spec: ExtractorSpec,
    weights: WeightsInfo,
    layers: Sequence[str],
    *,
    device: torch.device | str | None = None,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """uint8 (N, C, H, W) or ``ImageChunks`` -> {layer: (N, D) float32 CPU tensor} through
    torch-fidelity's extractor, run in batches of ``batch_size`` on ``device``."""
    chunked = isinstance(images, ImageChunks)
    first = None if chunked else _as_uint8_tensor(images, "images")
    device = device if device is not None else (first.device if first is not None else "cpu")
    cuda = _use_cuda(device)
    kw = {"feature_extractor_weights_path": weights.path, "verbose": False}
    fe = create_feature_extractor(spec.tf_name or spec.name, list(dict.fromkeys(layers)), cuda=cuda, **kw)  # built once

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return get_featuresdict_from_dataset(
            UInt8Images(x.cpu(), spec.in_channels), fe, batch_size, cuda, True, False
        )  # save_cpu_ram: no DataLoader workers

    if not chunked:
        return run(first)
    parts = [run(_as_uint8_tensor(c, "images")) for c in images.chunks()]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if not parts or next(iter(out.values())).shape[0] != images.n:
        raise ValueError(
            f"images: the chunks hold {0 if not parts else next(iter(out.values())).shape[0]} "
            f"images, expected {images.n}"
        )
    return out


def _ref_key(
    ref: ReferenceSpec, spec: ExtractorSpec, weights: WeightsInfo, layer: str | None = None
) -> tuple[str, dict]:
    ident = {
        "format": _REF_FORMAT,
        "dataset": ref.name,
        "fingerprint": ref.fingerprint,
        "split": ref.split,
        "extractor": spec.name,
        "layer": layer or spec.feature_layer,
        "weights_sha256": weights.sha256,
        "preprocessing": spec.preprocessing,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest(), ident


def _load_ref(path: Path) -> ReferenceStats:
    with np.load(path, allow_pickle=False) as z:
        return ReferenceStats(z["mu"], z["sigma"], int(z["n"]), z["features"], json.loads(str(z["provenance"])))


def reference_path(
    ref: ReferenceSpec,
    spec: ExtractorSpec,
    weights: WeightsInfo,
    cache_dir: str | Path | None = None,
    layer: str | None = None,
) -> Path:
    """Where `reference_stats` caches these statistics (the noise floor is cached beside them)."""
    key = _ref_key(ref, spec, weights, layer)[0]
    return default_cache_dir(cache_dir) / "reference" / f"{ref.name}-{ref.split}-{spec.name}-{key[:16]}.npz"


def reference_stats(
    ref: ReferenceSpec,
    spec: ExtractorSpec,
    weights: WeightsInfo,
    *,
    cache_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    layer: str | None = None,
) -> ReferenceStats:
    """Reference statistics of ``layer`` (default: the FID layer), computed once per (data, split,
    extractor, weights, preprocessing, layer) and cached under <cache>/reference/ (file-locked, atomic)."""
    layer = layer or spec.feature_layer
    key, ident = _ref_key(ref, spec, weights, layer)
    path = reference_path(ref, spec, weights, cache_dir, layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return _load_ref(path)
        f = extract_features(ref.images_fn(), spec, weights, [layer], device=device)[layer]
        mu, sigma = features_to_stats(f)
        prov = {
            **ident,
            "key": key,
            "n": int(f.shape[0]),
            "torch_fidelity": torch_fidelity.__version__,
            "torch": torch.__version__,
            "created_unix": int(time.time()),
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            mu=mu,
            sigma=sigma,
            n=np.int64(f.shape[0]),
            features=f.numpy().astype(np.float32),
            provenance=np.array(json.dumps(prov, sort_keys=True)),
        )
        atomic_write(path, buf.getvalue())
        return ReferenceStats(mu, sigma, int(f.shape[0]), f.numpy(), prov)


def file_as_reference(ref: ReferenceFile, rows: int = 1000) -> ReferenceSpec:
    """The images of a reference file as a ``ReferenceSpec`` keyed by the file's hash (so its
    statistics are cached like a data set's)."""
    from harness.runtime.npz_stream import npz_shape

    n = npz_shape(ref.path, "arr_0")[0][0]
    return ReferenceSpec(ref.name, "file", ref.sha256, lambda: ImageChunks(n, lambda: iter_file_images(ref, rows)))


def resolve_reference(
    reference: ReferenceSpec | ReferenceFile, spec: ExtractorSpec, weights: WeightsInfo, layer: str, **kw
) -> ReferenceStats:
    """Statistics of ``layer`` for a data split (``reference_stats``) or a reference file: the file's
    own mu/sigma when it has them for this layer (as ADM's evaluator uses them), its images for the
    features KID, precision/recall and the noise floor need; ``features`` is None without images."""
    if not isinstance(reference, ReferenceFile):
        return reference_stats(reference, spec, weights, layer=layer, **kw)
    contents = read_reference_file(reference)
    role = "spatial" if layer == spec.spatial_layer else "pool"
    stats = pick_file_stats(reference, contents, spec, layer, role)
    prov = {"reference_file": reference.record(), "format": contents.fmt, "layer": layer}
    if contents.images is None:
        return ReferenceStats(stats[0], stats[1], 0, None, {**prov, "stats_from": "file"})
    ref = reference_stats(file_as_reference(reference), spec, weights, layer=layer, **kw)
    if stats is None:
        return ref._replace(provenance={**ref.provenance, **prov, "stats_from": "images"})
    return ref._replace(mu=stats[0], sigma=stats[1], provenance={**ref.provenance, **prov, "stats_from": "file"})


# ----------------------------------------------------------------------------------------------
# Metrics


def _ranges(n: int, seed_ranges) -> list[tuple[int, int]]:
    """None -> [(0, n)]; int K -> K equal contiguous chunks; else explicit [start, end) index pairs."""
    if seed_ranges is None:
        return [(0, n)]
    if isinstance(seed_ranges, int):
        if seed_ranges < 1 or n // seed_ranges < 2:
            raise ValueError(f"seed_ranges={seed_ranges}: need >= 1 range of >= 2 samples each (have {n})")
        k = n // seed_ranges
        return [(i * k, (i + 1) * k) for i in range(seed_ranges)]
    out = [(int(a), int(b)) for a, b in seed_ranges]
    if any(not 0 <= a < b <= n or b - a < 2 for a, b in out):
        raise ValueError(f"seed_ranges={out}: each (start, end) must satisfy 0 <= start < end <= {n}, end-start >= 2")
    return out


_PRC_BYTES = 1 << 26  # one block of precision/recall distances (float32): 64 MiB


def prc_rows(n: int) -> int:
    """Rows of each block of k-NN distances in precision/recall (torch-fidelity's ``prc_batch_size``).

    torch-fidelity (``save_cpu_ram``) holds a (rows, n) block of distances to all ``n`` features at
    once, twice while it concatenates: with its default 10,000 rows that is 2 GB at FID-50K and grows
    with n. Capping a block at ``_PRC_BYTES`` keeps it flat; up to 1,677 images (the default 1,000
    included) the rows stay torch-fidelity's 10,000, so those scores are unchanged."""
    return min(10_000, max(1, _PRC_BYTES // (4 * int(n))))


def _one_range(
    feats: dict, ref: ReferenceStats, spec: ExtractorSpec, *, kid: bool, prc: bool, isc: bool, tf_kw: dict
) -> dict:
    f = feats[spec.feature_layer]
    mu, sigma = features_to_stats(f)
    out = {"fid": fid_from_stats(mu, sigma, ref.mu, ref.sigma)}
    real = {spec.feature_layer: torch.from_numpy(ref.features)} if kid or prc else {}
    if kid:
        size = min(1000, f.shape[0], ref.n)  # torch-fidelity's default subset, capped by the sample count
        m = kid_featuresdict_to_metric(feats, real, spec.feature_layer, kid_subset_size=size, **tf_kw)
        out.update(
            kid_mean=m[torch_fidelity.KEY_METRIC_KID_MEAN],
            kid_std=m[torch_fidelity.KEY_METRIC_KID_STD],
            kid_subset_size=size,
        )
    if prc:  # torch-fidelity convention: input1 = generated, input2 = real
        rows = prc_rows(max(f.shape[0], ref.n))
        m = prc_featuresdict_to_metric(feats, real, spec.feature_layer, prc_batch_size=rows, **tf_kw)
        out.update(precision=m[torch_fidelity.KEY_METRIC_PRECISION], recall=m[torch_fidelity.KEY_METRIC_RECALL])
    if isc:
        m = isc_featuresdict_to_metric(feats, spec.logits_layer, **tf_kw)
        out.update(isc_mean=m[torch_fidelity.KEY_METRIC_ISC_MEAN], isc_std=m[torch_fidelity.KEY_METRIC_ISC_STD])
    return out


ISC_WEIGHTS = (
    "metrics.isc needs Inception weights with a classifier: torch-fidelity's "
    "weights-inception-2015-12-05-6726825d.pth; set metrics.weights=PATH"
)


def isc_wanted(spec: ExtractorSpec, winfo: WeightsInfo, isc: bool | None) -> bool:
    """metrics.isc: None -> when the weights have a classifier; True -> required (one-line refusal
    naming the weights it needs); False -> off."""
    has_logits = spec.logits_layer is not None and winfo.has_logits
    if isc and not has_logits:
        if spec.logits_layer is None:
            raise ValueError(
                f"metrics.isc=true: metrics.extractor={spec.name} has no classifier; use inception-v3-compat"
            )
        raise ValueError(ISC_WEIGHTS + " (these weights have a zero classifier: FID-only weights)")
    return has_logits if isc is None else bool(isc)


def _cache_path(reference, spec: ExtractorSpec, winfo: WeightsInfo, cache_dir) -> Path:
    """Where the reference's statistics are cached (the noise floor goes beside them)."""
    if isinstance(reference, ReferenceFile):  # one with images: they are cached like a data split
        reference = file_as_reference(reference)
    return reference_path(reference, spec, winfo, cache_dir)


def compute_metrics(
    samples_uint8: torch.Tensor | np.ndarray | ImageChunks,
    reference: ReferenceSpec | ReferenceFile,
    *,
    extractor: str = "digits-cnn",
    weights: str | Path | None = None,
    weights_sha256: str | None = None,
    kid: bool = True,
    prc: bool = True,
    isc: bool | None = None,
    sfid: bool = False,
    seed_ranges: Sequence[tuple[int, int]] | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    rng_seed: int = 2020,
    keep: dict | None = None,
) -> dict:
    """Score uint8 (N, C, H, W) samples against `reference` (a data split or a reference file,
    harness.metrics.reference_file).

    Returns fid, fid_std (None for one range), fid_min, fid_values, kid_mean, kid_std, precision,
    recall (only when the reference has images), isc_mean/isc_std (see `isc_wanted`), sfid (when
    `sfid`), and `protocol` {num_samples (per range), num_ranges, extractor, reference, label, ...}.
    With several seed ranges every metric is the mean over ranges. A `keep` dict receives the sample
    features (`features`, (N, D) float32), the `reference` statistics and their cache `reference_path`,
    so callers (bootstrap, noise floor) never extract twice.
    """
    spec = get_extractor(extractor)
    x = samples_uint8 if isinstance(samples_uint8, ImageChunks) else _as_uint8_tensor(samples_uint8, "samples_uint8")
    n_samples = x.n if isinstance(x, ImageChunks) else x.shape[0]
    sha = {"expected_sha256": weights_sha256} if weights_sha256 else {}
    winfo = spec.resolve_weights(weights=weights, cache_dir=cache_dir, **sha)
    isc = isc_wanted(spec, winfo, isc)
    if sfid and spec.spatial_layer is None:
        raise ValueError(
            f"metrics.sfid=true: metrics.extractor={extractor} has no spatial layer; use inception-v3-compat"
        )
    ref_kw = {"cache_dir": cache_dir, "device": device}
    ref = resolve_reference(reference, spec, winfo, spec.feature_layer, **ref_kw)
    ref_s = resolve_reference(reference, spec, winfo, spec.spatial_layer, **ref_kw) if sfid else None
    layers = [spec.feature_layer] + ([spec.logits_layer] if isc else []) + ([spec.spatial_layer] if sfid else [])
    feats = extract_features(x, spec, winfo, layers, device=device)
    ranges = _ranges(n_samples, seed_ranges)
    if keep is not None:
        path = None if ref.features is None else _cache_path(reference, spec, winfo, cache_dir)
        keep.update(features=feats[spec.feature_layer].numpy().astype(np.float32), reference=ref, ranges=ranges)
        keep.update(reference_path=path)
    has_real = ref.features is not None  # KID and precision/recall need the reference's features
    tf_kw = {"verbose": False, "save_cpu_ram": True, "rng_seed": rng_seed}
    one = {"kid": kid and has_real, "prc": prc and has_real, "isc": isc, "tf_kw": tf_kw}
    per = [_one_range({k: v[a:b] for k, v in feats.items()}, ref, spec, **one) for a, b in ranges]
    if sfid:
        for p, (a, b) in zip(per, ranges):
            p["sfid"] = fid_from_stats(*features_to_stats(feats[spec.spatial_layer][a:b]), ref_s.mu, ref_s.sigma)
    out = {k: float(np.mean([p[k] for p in per])) for k in per[0] if k != "kid_subset_size"}
    fids = [p["fid"] for p in per]
    out.update(
        fid_std=float(np.std(fids, ddof=1)) if len(fids) > 1 else None, fid_min=float(min(fids)), fid_values=fids
    )
    out["protocol"] = _protocol(ranges, per, extractor=extractor, reference=reference, ref=ref, winfo=winfo, spec=spec)
    return out


def _protocol(ranges, per, *, extractor: str, reference, ref: ReferenceStats, winfo, spec) -> dict:
    """The ``protocol`` block of ``compute_metrics``: what was measured, against which reference, and how."""
    n = min(b - a for a, b in ranges)
    name = f"{extractor} ({spec.label})" if spec.label else extractor
    out = {
        "num_samples": n,
        "num_ranges": len(ranges),
        "extractor": extractor,
        "reference": reference.label,
        "reference_dataset": reference.name,
        "reference_n": ref.n or None,  # None: statistics from a file that does not say
        "weights_sha256": winfo.sha256,
        "preprocessing": spec.preprocessing,
        "fid_dtype": "float64",
        "kid_subset_size": per[0].get("kid_subset_size"),
        "torch_fidelity": torch_fidelity.__version__,
        "label": fid_label(n, name, reference.label)
        + (f", mean of {len(ranges)} seed ranges" if len(ranges) > 1 else ""),
    }
    if isinstance(reference, ReferenceFile):
        out["reference_file"] = reference.record()
        out["reference_stats_from"] = ref.provenance.get("stats_from")
    if "sfid" in per[0]:
        out["sfid_layer"] = f"{spec.spatial_layer} (first 7 channels, {spec.dims[spec.spatial_layer]}-d, as ADM)"
    return out


class SeedRangeFID(NamedTuple):
    mean: float
    std: float | None
    values: list

    @property
    def min(self) -> float:  # papers often report the min over seed ranges (edm#16): report it as such
        return min(self.values)


def fid_over_seed_ranges(sample_sets: Sequence, reference: ReferenceSpec, **kw) -> SeedRangeFID:
    """One uint8 array per seed range -> (mean, std, values) of FID (std with ddof=1)."""
    if len(sample_sets) < 1:
        raise ValueError("sample_sets: need at least one array of samples")
    kw = {"kid": False, "prc": False, "isc": False, **kw}
    vals = [compute_metrics(s, reference, **kw)["fid"] for s in sample_sets]
    return SeedRangeFID(float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None, vals)
