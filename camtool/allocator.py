"""glibc's malloc tuned for camtool's batch work (Linux only).

Each forward pass on the CPU allocates the same large activation buffers again. With glibc's
default thresholds, blocks over 128 KiB are mapped with ``mmap`` and unmapped on ``free``, so
every batch pays page faults on fresh zeroed pages: on EfficientNet-Lite0 at 224x224 on 2 cores,
half the CPU time went to the kernel and a forward pass ran at 28 images/s, against 88 with the
blocks kept (docs/performance.md). The batch entry points (:func:`camtool.export`,
:func:`camtool.evaluate`, :func:`camtool.metrics.pixel_forward`, the CLI) therefore raise the
thresholds once per process. The cost: memory freed after a batch stays with the process (its
RSS stays at the peak) instead of going back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import cache

#: ``CAMTOOL_DEFAULT_MALLOC=1`` keeps glibc's defaults (the benchmarks use it to measure the
#: difference); so does setting ``MALLOC_MMAP_THRESHOLD_`` yourself.
OPT_OUT = "CAMTOOL_DEFAULT_MALLOC"

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap threshold to 1 GiB and its trim threshold to 2 GiB, once per process,
    so that freed batch buffers are reused instead of unmapped and faulted in again.

    Takes effect for allocations from then on (earlier ones are unaffected), so it may run at
    any time. Does nothing off Linux/glibc, when ``CAMTOOL_DEFAULT_MALLOC=1`` or
    ``MALLOC_MMAP_THRESHOLD_`` is set, or after the first call.

    Returns:
        True when the thresholds are (now or already) raised by camtool.
    """
    if (
        sys.platform != "linux"
        or "MALLOC_MMAP_THRESHOLD_" in os.environ
        or os.environ.get(OPT_OUT, "") not in ("", "0")
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(
        mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
    )
