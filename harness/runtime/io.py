"""Atomic file writes and file hashing: the one place the project writes a file.

A write goes to a temporary file in the same directory, is flushed and fsynced, then moved into
place with ``os.replace``, so a reader (or a crash) never sees a half-written file and the
previous version survives a failure. The temporary file is created with ``open(..., "x")`` so the
result gets the usual umask permissions (``tempfile.mkstemp`` would make it owner-only).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

Writer = Callable[[Any], None]


def atomic_write(path: str | os.PathLike, data: bytes | str | Writer, mode: str = "wb") -> Path:
    """Write ``data`` (bytes, text, or a function called with the open file) to ``path`` atomically.

    ``mode`` ("wb" or "w") only matters for a writer function; bytes and text pick their own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, (bytes, bytearray)):
        write, mode = (lambda fh: fh.write(data)), "wb"
    elif isinstance(data, str):
        write, mode = (lambda fh: fh.write(data)), "w"
    else:
        write = data
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, mode.replace("w", "x")) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (weights files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
