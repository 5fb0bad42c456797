"""Host-memory policy of latte's processes: freed memory stays in the heap for the next tensor.

glibc serves every allocation above its mmap threshold (at most 32 MB) from a fresh mmap(), whose
pages fault in one by one when first written and go back to the kernel on free. CPU tensors of a
sampling batch or a training step are that large and are freed and allocated again every step, so
a CPU process spends a large share of its time in page faults (measured: sampling 64 videos of the
built-in model's shape took 32.3 s with glibc's default and 22.3 s with this policy; README, Performance).
The `latte` command sets it at start; LATTE_SYSTEM_MALLOC=1 keeps glibc's default.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Serve allocations from the heap (no mmap) and return at most what exceeds 2 GB of free heap top
    to the kernel. True when set; False on other C libraries or when LATTE_SYSTEM_MALLOC=1."""
    if sys.platform != "linux" or os.environ.get("LATTE_SYSTEM_MALLOC", "") not in ("", "0"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # non-main arenas still fall back to mmap when their heaps cannot grow, so no allocation can fail here
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
