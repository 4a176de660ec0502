"""glibc malloc settings for training on a CPU: keep freed activation memory for the next step.

PyTorch's CPU allocator has no cache of its own (unlike its CUDA one): every step mallocs its activations and frees
them. With glibc's defaults, large buffers come from fresh ``mmap``s and the top of the heap is trimmed back to the
OS after each free, so every step faults its activations in again; with these settings it does not, and the CPU
config's step is faster (docs/benchmarks.md, "glibc malloc thresholds"). It is what
the usual advice to run PyTorch on a CPU with jemalloc or tcmalloc buys, without a preload. Peak RSS is the same:
the memory was needed at the peak anyway; it is just not returned to the OS between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>: free memory at the top of the heap above this is returned to the OS
M_MMAP_THRESHOLD = -3  # <malloc.h>: allocations above this get their own mmap, unmapped again on free
KEEP_UP_TO = 1 << 30  # trim only past 1 GiB of free memory at the heap's top
MMAP_ABOVE = 32 << 20  # glibc's largest allowed threshold on 64-bit: buffers under 32 MiB come from the heap


def reuse_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process; True if they were set.

    Left alone: other C libraries (musl, macOS), another allocator preloaded (jemalloc, tcmalloc), and thresholds
    the user set (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``), which win.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    own = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
    if any(k in os.environ for k in own) or "malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    # mallopt returns 1 on success; setting the thresholds also stops glibc from moving them on its own.
    return bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE))
