"""Keep freed large blocks in the process instead of handing them back to the OS (glibc only).

Why: torch's CPU allocator has no cache, so every tensor is a ``malloc``/``free``. glibc serves blocks
above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with a fresh ``mmap`` and unmaps them
on ``free``, so the next tensor of the same size pays a page fault per 4 KiB page. The emulator and the
training loop allocate tens of MiB per time step (a 512-image batch of 32x32x32 spikes is 64 MiB as
float32): measured on the CIFAR-sized emulator bench, a bool->float32 copy took 21 ms instead of ~3 ms,
and the whole run went from 440 to 800 images/s with the settings below. The cost is memory that stays
mapped after a peak (peak RSS is what the benchmarks report anyway).

Written by hand: torch has no switch for this; jemalloc/tcmalloc via ``LD_PRELOAD`` would do the same but
must be set before the process starts and installed separately.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap and are reused
_TRIM_THRESHOLD = 1 << 31  # free memory at the top of the heap kept up to 2 GiB

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True if they are in effect (Linux with glibc), else False."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and other libcs have no mallopt
                return False
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            )
    return _applied
