"""Keep freed CPU memory for reuse instead of handing it back to the OS after every tensor.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, a freed
multi-megabyte temporary is soon returned to the OS (``munmap`` above the dynamic mmap threshold,
heap trimming above twice that), so the next temporary of that size starts on fresh pages and pays
one page fault per 4 KiB on its first write. A sampling step at the main job's shape (250 images x
16 tokens x width 256 in the MLP) allocates many such temporaries; there the faults were a quarter
of DiT's and a third of FPDM's sampling time (docs/performance.md, "The allocator, and GELU outside training"). Fixing both
thresholds (which also turns off glibc's dynamic adjustment) keeps freed memory in the heap for the
next allocation: what jemalloc or tcmalloc preloaded with ``LD_PRELOAD`` give PyTorch on CPU, with
no library to install. The price is that the process keeps its peak heap until it exits.

``run.reuse_freed_memory`` (default true) applies it once per process, before a job's first tensor;
it is skipped where the C library is not glibc, and where the user set glibc's own
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variables or preloaded another allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> parameter numbers
MMAP_THRESHOLD = 64 << 20  # allocations below this come from the heap (glibc's dynamic cap is 32 MiB)
TRIM_THRESHOLD = 1 << 30  # free heap kept before any is returned to the OS

_applied: bool | None = None  # this process's outcome, once decided


def why_not_tuned() -> str | None:
    """Why the allocator is left as it is in this process, or None when it can be tuned."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return "glibc's MALLOC_*_THRESHOLD_ variables are set: the user's choice stands"
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "another allocator is preloaded (LD_PRELOAD)"
    if _glibc() is None:
        return "the C library is not glibc"
    return None


def reuse_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once); returns whether they are set."""
    global _applied
    if _applied is None:
        libc = _glibc() if why_not_tuned() is None else None
        _applied = bool(
            libc is not None
            and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        )
    return _applied


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # glibc only: musl and macOS's libc have no gnu_get_libc_version (and other mallopt numbers)
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None
