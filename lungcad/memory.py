"""The process's allocator, tuned for a pipeline of large short-lived arrays.

A scan's stages make and drop many arrays of hundreds of MB (the volume as float32, the
probability map, label volumes, the SEG's frames).  glibc's malloc serves each of them with a
fresh ``mmap`` and gives it back with ``munmap`` when it is freed, so every new array pays the
kernel's page faults again on first touch: on the 2-core benchmark machine about 2 s per GB,
4 s of the 300-slice scan's 32 s (``benchmarks/run.py --only detect``, docs/results.md).

:func:`reuse_freed_memory` asks glibc to serve large blocks from its heap instead
(``M_MMAP_MAX = 0``) and to keep freed memory for the next array (``M_TRIM_THRESHOLD = -1``:
no trimming).  The cost is that memory freed after the peak is not returned to the system until
the process ends; the peak itself is what a job's memory limit must hold either way.  It is
what the environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` do, set
from inside the process.

The ``lungcad`` command calls it once at start-up.  It does nothing on another C library
(musl, macOS, Windows), when the user has set any ``MALLOC_*`` tunable of glibc's (theirs
win), or when ``LUNGCAD_MALLOC=system`` asks for the system's default.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["reuse_freed_memory", "OPT_OUT"]

#: ``LUNGCAD_MALLOC`` set to this keeps the C library's default behaviour.
OPT_OUT = "system"

_M_TRIM_THRESHOLD = -1   # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4
_TUNABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
             "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version          # glibc only (musl has mallopt as a stub)
        return libc
    except (OSError, AttributeError):
        return None


def reuse_freed_memory(environ=os.environ) -> bool:
    """Have glibc keep freed memory for reuse (see the module's text); True when it is now so.

    False, with nothing changed, off glibc, with ``LUNGCAD_MALLOC=system``, or when one of
    glibc's own malloc tunables is set in ``environ``.
    """
    if environ.get("LUNGCAD_MALLOC", "").strip().lower() == OPT_OUT:
        return False
    if any(name in environ for name in _TUNABLES):
        return False
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; a trim threshold of -1 turns trimming off (mallopt(3))
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
