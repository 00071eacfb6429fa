"""Give multi-megabyte buffers back to the operating system as soon as they are freed.

glibc serves a big allocation with its own mmap, but the first time such a block is freed it
raises its mmap threshold to that block's size (up to 32 MiB). After one 6 MiB message, every
later message, frame and copy of that size comes from the heap instead, whose freed middle
glibc keeps: ten 6 MiB messages left the eventlet server 138–170 MiB larger 12 s later (+60–76
with the threshold fixed). 4 MiB keeps a 640×480 frame (0.9 MB) and most CPU activations on the
heap, where reuse is cheaper than fresh pages (SmolVLM-256M `generate` on this CPU: no change).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
BIG_BUFFER_BYTES = 4 << 20


def unmap_big_buffers_when_freed() -> bool:
    """Fix glibc's mmap threshold at ``BIG_BUFFER_BYTES``; False where the C library has no ``mallopt`` (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, BIG_BUFFER_BYTES) == 1
