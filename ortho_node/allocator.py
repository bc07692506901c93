"""Keep freed memory for reuse in the processes that prepare images.

glibc's malloc serves large blocks with ``mmap`` (from 128 KiB, a threshold that rises with what
the process frees, up to 32 MiB) and gives the top of its heap back to the kernel once twice
that threshold lies free there. Preparing a radiograph makes and frees a few arrays of several
MiB each (decoded frame, modality values, display values, the resized image), so each image
faults its memory in afresh from the kernel: ~2.5 ms of the ~8.5 ms a 1024 x 1024 radiograph
took to prepare on this project's 2-core machine. Fixed thresholds (``mmap`` only from 32 MiB,
trim only past 128 MiB free) keep freed memory in the heap for the next image: 8.5 -> 5.2 ms per
radiograph, and a compiled ViT-S/16 end to end 24.7 -> 25.9 images/s (``bench/infer --compile``,
2026-12-05). The price: up to 128 MiB of freed memory per malloc arena stays with the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_memory_for_reuse"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20
"""Blocks from this size on are mapped and unmapped on their own (glibc's largest dynamic value)."""

TRIM_THRESHOLD = 128 << 20
"""Free memory at the top of the heap is returned to the kernel only past this much."""


def keep_freed_memory_for_reuse() -> bool:
    """Set the process's malloc thresholds (module docstring); whether the allocator took them
    (False where there is no glibc ``mallopt``, e.g. musl or macOS: nothing changes there)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    taken = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc thresholds for image preparation %s", "set" if taken else "not supported here")
    return taken
