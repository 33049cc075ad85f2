"""Reference statistics from a file (``metrics.reference=PATH``), so a number can be compared with
published ones computed against the same file (docs/metrics.md "Scoring against a published
reference batch").

Two formats are read:

- an ADM reference batch (``.npz``, the format of guided-diffusion's ``evaluations/evaluator.py``
  that DiT and most ImageNet papers score against): ``arr_0`` holds uint8 NHWC reference images and
  ``mu``/``sigma`` the Inception pool_3 (2048-d) statistics, ``mu_s``/``sigma_s`` those of the
  spatial features behind sFID (2023-d). Either part may be missing. Statistics in the file are used
  as they are (as ADM's evaluator does); the images, when present, give the reference features that
  KID, precision/recall and the noise floor need.
- torch-fidelity's cached statistics (``<input>-<extractor>-stat-fid-<layer>.pt``, a dict of numpy
  ``mu``/``sigma``); the extractor and layer come from the name and must match the job's.

The file's SHA-256 goes into the protocol and keys the reference-statistics cache. A file whose
statistics do not fit the extractor (another network or feature size) is refused in one line
before any image is scored.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from harness.runtime.io import sha256_file

if TYPE_CHECKING:
    from harness.metrics.extractors import ExtractorSpec

__all__ = [
    "file_sha256",
    "ADM_IMAGES",
    "ADM_STATS",
    "ReferenceFile",
    "FileContents",
    "open_reference_file",
    "read_reference_file",
]

ADM_IMAGES = "arr_0"  # uint8 (N, H, W, 3) reference images
ADM_STATS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}  # role -> (mean key, covariance key)
_TF_STAT = re.compile(r"-stat-fid-(?P<layer>[^-]+)\.pt$")
SUFFIXES = (".npz", ".pt")


@dataclass(frozen=True)
class ReferenceFile:
    """A reference read from a file; ``label`` names it in every protocol ("FID-50K, ..., vs VIRTUAL_imagenet256_labeled.npz")."""

    path: str
    sha256: str

    @property
    def label(self) -> str:
        return Path(self.path).name

    @property
    def name(self) -> str:  # cache-file prefix, like a data set name
        return "file-" + re.sub(r"[^A-Za-z0-9_.-]", "_", Path(self.path).stem)[:40]

    def record(self) -> dict:
        return {"path": str(Path(self.path).expanduser().resolve()), "sha256": self.sha256}


class FileContents(NamedTuple):
    images: tuple[int, ...] | None  # shape of arr_0 (read lazily), None when absent
    stats: dict[str, tuple[np.ndarray, np.ndarray]]  # role ('pool' | 'spatial') or layer -> (mu, sigma)
    extractor: str | None  # the network the statistics belong to, when the file says
    fmt: str  # "adm-npz" | "torch-fidelity"


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime key the cache: a changed file re-hashes
    return sha256_file(path)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a (possibly multi-GB) reference file, hashed once per process while it is unchanged."""
    st = Path(path).expanduser().stat()
    return _sha256(str(Path(path).expanduser().resolve()), st.st_size, st.st_mtime_ns)


def open_reference_file(path: str | Path) -> ReferenceFile:
    """Check that ``path`` is a readable reference file and hash it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"metrics.reference={path} does not exist: point it to an ADM .npz or a torch-fidelity .pt"
        )
    if p.suffix not in SUFFIXES:
        raise ValueError(
            f"metrics.reference={path}: expected an ADM reference batch (.npz) or torch-fidelity statistics "
            f"(<input>-<extractor>-stat-fid-<layer>.pt), got a {p.suffix or 'suffix-less'} file"
        )
    return ReferenceFile(str(p), file_sha256(p))


def _read_npz(path: str) -> FileContents:
    from harness.runtime.npz_stream import npz_shape

    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        stats = {
            role: (np.asarray(z[m], np.float64), np.asarray(z[s], np.float64))
            for role, (m, s) in ADM_STATS.items()
            if m in keys and s in keys
        }
    images = npz_shape(path, ADM_IMAGES)[0] if ADM_IMAGES in keys else None
    return FileContents(images, stats, None, "adm-npz")


def _read_torch_fidelity(path: str) -> FileContents:
    import numpy
    import torch
    from torch.serialization import safe_globals
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    extractors = list(FEATURE_EXTRACTORS_REGISTRY)  # torch-fidelity's and ours (registered on import)
    name = Path(path).name
    m = _TF_STAT.search(name)
    ext = next((e for e in sorted(extractors, key=len, reverse=True) if f"-{e}-stat-fid-" in name), None)
    if m is None or ext is None:
        raise ValueError(
            f"metrics.reference={path}: not a torch-fidelity statistics file "
            f"(<input>-<extractor>-stat-fid-<layer>.pt with a registered extractor: {', '.join(extractors)})"
        )
    allowed = [numpy._core.multiarray._reconstruct, numpy.ndarray, numpy.dtype]
    allowed += [numpy.dtypes.Float64DType, numpy.dtypes.Float32DType]
    with safe_globals(allowed):  # numpy arrays only, never arbitrary pickled code
        d = torch.load(path, map_location="cpu", weights_only=True)
    mu, sigma = (np.asarray(d[k], np.float64) for k in ("mu", "sigma"))
    return FileContents(None, {m["layer"]: (mu, sigma)}, ext, "torch-fidelity")


def read_reference_file(ref: ReferenceFile) -> FileContents:
    """The file's images (shape only) and statistics."""
    if ref.path.endswith(".pt"):
        return _read_torch_fidelity(ref.path)
    out = _read_npz(ref.path)
    if out.images is None and not out.stats:
        raise ValueError(
            f"metrics.reference={ref.path} holds neither {ADM_IMAGES} (reference images) nor mu/sigma: "
            "not an ADM reference batch"
        )
    return out


def iter_file_images(ref: ReferenceFile, rows: int) -> Iterator[np.ndarray]:
    """arr_0 as uint8 (N, C, H, W) chunks (ADM stores NHWC)."""
    from harness.runtime.npz_stream import iter_npz_rows

    for chunk in iter_npz_rows(ref.path, ADM_IMAGES, rows):
        yield np.ascontiguousarray(np.asarray(chunk).transpose(0, 3, 1, 2))


def pick_file_stats(
    ref: ReferenceFile, contents: FileContents, spec: ExtractorSpec, layer: str, role: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """The file's (mu, sigma) for ``layer`` of ``spec`` (``role``: 'pool' for the FID layer, 'spatial'
    for sFID's), None when the file has none for it but holds images to compute them from.
    Statistics of another network or feature size are refused in one line."""
    tf_name = spec.tf_name or spec.name
    if contents.fmt == "torch-fidelity" and contents.extractor not in (tf_name, spec.name):
        raise ValueError(
            f"metrics.reference={ref.path} holds statistics of extractor {contents.extractor}, not of "
            f"metrics.extractor={spec.name}: set metrics.extractor={contents.extractor} or use a reference made with {spec.name}"
        )
    got = contents.stats.get(layer if contents.fmt == "torch-fidelity" else role)
    want = spec.dims.get(layer)
    if got is not None and want is not None and got[0].shape != (want,):
        if contents.images is not None:
            return None  # statistics of another network: the images give this network's
        raise ValueError(
            f"metrics.reference={ref.path}: its mu has {got[0].size} values, metrics.extractor={spec.name} "
            f"gives {want}-d features at layer {layer}: the statistics were made with another network"
        )
    if got is None and contents.images is None:
        have = ", ".join(sorted(contents.stats)) or "none"
        raise ValueError(
            f"metrics.reference={ref.path} has no statistics for metrics.extractor={spec.name} layer {layer} "
            f"(it has: {have}) and no {ADM_IMAGES} images to compute them from"
        )
    return got
