"""Write and read one large array of an ``.npz`` in row chunks, never whole in memory.

50,000 samples at 256x256x3 are 9.8 GB of uint8: the sample stage merges its shards into
``samples.npz`` chunk by chunk, and the evaluation streams them through the feature extractor.
The file is an ordinary ``.npz`` (``np.load`` reads it): each member is an ``.npy`` stream
(``numpy.lib.format``) inside a zip64 archive.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from harness.runtime.io import atomic_write


def write_npz_chunked(
    path: str | Path,
    chunked: dict[str, tuple[tuple, np.dtype, Iterable[np.ndarray]]],
    small: dict[str, np.ndarray] | None = None,
    compress: bool = True,
) -> Path:
    """``chunked[name] = (shape, dtype, chunks)``: C-order row chunks whose concatenation along
    axis 0 has ``shape``; ``small`` arrays are written whole. Atomic (temp file, then rename)."""

    def write(fh) -> None:
        mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(fh, "w", compression=mode, allowZip64=True) as zf:
            for name, (shape, dtype, chunks) in chunked.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                    npy.write_array_header_2_0(
                        out,
                        {"descr": npy.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)},
                    )
                    rows = 0
                    for chunk in chunks:
                        chunk = np.ascontiguousarray(chunk, dtype=dtype)
                        if chunk.shape[1:] != tuple(shape[1:]):
                            raise ValueError(f"{name}: chunk of shape {chunk.shape} does not fit {tuple(shape)}")
                        out.write(chunk.tobytes())
                        rows += len(chunk)
                    if rows != shape[0]:
                        raise ValueError(f"{name}: chunks hold {rows} rows, the header says {shape[0]}")
            for name, arr in (small or {}).items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                    npy.write_array(out, np.asarray(arr), allow_pickle=False)

    return atomic_write(path, write)


def npz_shape(path: str | Path, name: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of member ``name`` without reading its data."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as fh:
        return _header(fh)


def _header(fh) -> tuple[tuple, np.dtype]:
    version = npy.read_magic(fh)
    read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f".npy format version {version} cannot be streamed")
    shape, fortran, dtype = read(fh)
    if fortran:
        raise ValueError("Fortran-ordered arrays cannot be streamed by rows")
    return tuple(shape), dtype


def iter_npz_rows(path: str | Path, name: str, rows: int) -> Iterator[np.ndarray]:
    """Member ``name`` of ``path`` in chunks of at most ``rows`` rows along axis 0."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as fh:
        shape, dtype = _header(fh)
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            buf = fh.read(n * row_bytes)
            if len(buf) != n * row_bytes:
                raise ValueError(f"{path}: member {name} ends early at row {start}")
            yield np.frombuffer(buf, dtype=dtype).reshape(n, *shape[1:])
