"""Training checkpoints: model, EMA, optimiser, step, RNG states and data position.

Written atomically (temporary file, then rename) so a kill during a write leaves the previous
checkpoint intact; loaded with ``torch.load(weights_only=True)`` so a checkpoint never executes
code. A run always resumes from the newest checkpoint in its own directory, never from a path
frozen into a submitted job (a requeued submitit job reuses its pickle: FAIR-Chem/fairchem PR #1055).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from harness.runtime.io import atomic_write

PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")
FORMAT = "fpdm-bench-checkpoint-v1"


class CheckpointError(RuntimeError):
    pass


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def rng_states() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {k: v for k, v in zip(("kind", "keys", "pos", "has_gauss", "cached"), np.random.get_state())},
    }
    state["numpy"]["keys"] = torch.from_numpy(np.asarray(state["numpy"]["keys"]).astype(np.int64))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, step: int, payload: dict, keep: int = 2) -> Path:
    """Write ``ckpt-<step>.pt`` atomically, then prune all but the newest ``keep``."""
    path = checkpoint_path(Path(directory), step)
    blob = {"format": FORMAT, "step": step, "rng": rng_states(), **payload}
    atomic_write(path, lambda fh: torch.save(blob, fh))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load one checkpoint without executing code; a truncated, corrupt or foreign file raises a
    ``CheckpointError`` naming the file."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / non-zip / pickled-code files
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a weights-only file ({type(exc).__name__}); "
            "delete it to resume from the previous checkpoint"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an fpdm-bench training checkpoint (format {FORMAT} expected)")
    return blob


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None
