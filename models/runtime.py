"""Process-wide CPU settings for torch work: every entry point (API, worker,
training, evaluation, benchmark) calls `configure` once at start."""

from __future__ import annotations

import ctypes
import ctypes.util

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MB for reuse.

    By default each multi-MB activation of a forward pass is mmap'd fresh and
    unmapped on free, so every pass page-faults and zeroes its memory again, which
    nearly doubled the conv4 forward time on CPU (docs/experiments.md). Returns
    False (and changes nothing) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def configure(threads: int = 0) -> None:
    """Allocator as above and torch's intra-op thread count (0 keeps torch's default)."""
    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
