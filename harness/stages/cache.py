"""Content-addressed artifact cache for the stages of a job (design.md, data flow).

An artifact's key is a hash of the resolved sub-configs that determine it, so a sweep over
sampling settings trains each model once and a re-run sweep recomputes nothing. A stage works in
``<cache>/<stage>/<key>/`` under a file lock: two jobs that need the same checkpoint at once train
it once (the second waits, then finds it complete). Completion is a ``complete.json`` marker
written last and atomically, so a crashed stage is never mistaken for a finished one.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from harness.runtime.io import atomic_write_json, read_json

COMPLETE = "complete.json"


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-able config parts (key order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ArtifactCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def is_complete(self, stage: str, key: str) -> bool:
        return (self.dir(stage, key) / COMPLETE).is_file()

    def read_complete(self, stage: str, key: str) -> dict:
        return read_json(self.dir(stage, key) / COMPLETE)

    def mark_complete(self, stage: str, key: str, info: dict) -> None:
        atomic_write_json(self.dir(stage, key) / COMPLETE, info)

    @contextmanager
    def lock(self, stage: str, key: str, timeout: float = -1) -> Iterator[Path]:
        """Exclusive lock on one artifact; yields its directory (created)."""
        d = self.dir(stage, key)
        d.mkdir(parents=True, exist_ok=True)
        with FileLock(str(d) + ".lock", timeout=timeout):
            yield d

    def status(self, stage: str, key: str) -> str:
        if self.is_complete(stage, key):
            return "cached"
        return "partial" if self.dir(stage, key).exists() else "to run"
