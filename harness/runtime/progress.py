"""Progress bars that keep to their own terminal line when several jobs share the terminal.

With ``hydra/launcher=parallel`` two (or ``n_jobs``) worker processes write to one terminal, and
tqdm bars that all redraw the cursor's line overwrite each other into one garbled line. tqdm draws a
bar ``position`` lines below the cursor, so each worker takes a line of its own: the launcher names
a directory in ``FPDM_PROGRESS_LINES``, and a worker's first bar takes the lowest free slot there by
locking ``<slot>.lock`` (``flock``: the lock dies with the process, so a crashed worker frees its
line). The worker keeps the slot for its life; its bars are cleared when they close, so the lines
show the jobs running now. Outside a parallel launch, bars are plain tqdm bars.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

LINES_ENV = "FPDM_PROGRESS_LINES"
MAX_LINES = 64  # more parallel workers than this share the last line

_held: dict[str, tuple[int, int]] = {}  # lines directory -> (slot, open locked fd) of this process


def terminal_line() -> int | None:
    """This process's line among the parallel workers (0, 1, ...), or None outside a parallel launch."""
    directory = os.environ.get(LINES_ENV)
    if not directory:
        return None
    if directory in _held:
        return _held[directory][0]
    try:
        import fcntl
    except ImportError:  # no flock (Windows): bars share the line, as plain tqdm does
        return None
    for slot in range(MAX_LINES):
        try:
            fd = os.open(Path(directory) / f"{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        except OSError:  # the launch is over and its directory gone
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _held[directory] = (slot, fd)
        return slot
    return MAX_LINES - 1


def progress_bar(**kwargs: Any) -> tqdm:
    """``tqdm.auto.tqdm(**kwargs)``, on this worker's own line in a parallel launch."""
    from tqdm.auto import tqdm as auto_tqdm

    line = terminal_line()
    if line is not None:
        kwargs.setdefault("position", line)
        kwargs.setdefault("leave", False)
    return auto_tqdm(**kwargs)
