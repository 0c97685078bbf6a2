"""Keep freed buffers mapped for reuse: page faults, not copies, were the kernel time.

Backups and restores allocate and free MiB-sized buffers all the time (blocks
read from the database, frames, packs, ranges fetched). glibc serves large ones
with fresh mappings and trims its heaps after frees, so each new buffer is
faulted in and zero-filled by the kernel again. On the 600 MiB bench folder an
initial backup took 58-66k page faults and 1.05-1.73 s of system time; with
freed memory kept, 46-47k and 0.79-1.20 s. The trim threshold is per arena (one
per thread): 128 MiB let a 2 GiB restore peak at 205 MiB RSS, 8 MiB trimmed so
often that backups took 80-83k faults; 32 MiB keeps 46-47k faults with peaks of
185-189 MiB (2 GiB backup) and 188 MiB (2 GiB restore). Called once by each
process that runs the engine.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's ceiling; packs (4 MiB) stay below it
_TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024  # per arena (each thread has one)


def keep_freed_memory() -> None:
    """Best effort, glibc only: elsewhere the defaults stay."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # musl and others have no mallopt
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
