"""Process-wide tuning for wallaby's worker processes."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import threading

import pyarrow as pa

log = logging.getLogger("wallaby.runtime")

# The source holds tens of thousands of small tuples per batch (one per row) until
# the batch is built. With CPython's default gen-0 threshold (700) the cyclic GC
# runs every few hundred rows and rescans them: measured, it more than halves
# the source's throughput. None of these objects form cycles, so collect rarely.
GC_THRESHOLDS = (100_000, 50, 1000)

_tuned = False


def tune_gc() -> None:
    """Raise the GC thresholds and freeze what start-up allocated (idempotent)."""
    global _tuned
    if _tuned:
        return
    gc.collect()
    gc.freeze()  # modules, classes, config: never garbage, never rescanned
    gc.set_threshold(*GC_THRESHOLDS)
    _tuned = True


# Memory of a worker catching up a backlog (`make bench`, 1M narrow changes into DuckDB, peak
# RSS): the decoded Arrow columns, the destination's buffers and DuckDB's transaction are
# allocated and freed again every batch, from the source's thread and the worker's thread.
# With pyarrow's default mimalloc pool and glibc's one-arena-per-thread malloc, what was
# freed stays resident: 413 MB. Arrow on the system allocator, a single malloc arena and
# returning free heap pages after every epoch: 358 MB, at the same rate. Each can be
# overridden the usual way (ARROW_DEFAULT_MEMORY_POOL, MALLOC_ARENA_MAX); wallaby/__init__.py
# sets ARROW_DEFAULT_MEMORY_POOL=system for Arrow's C++ code too.
_M_ARENA_MAX = -8  # glibc's mallopt parameter number
_libc: ctypes.CDLL | None = None
_memory_tuned = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
        except OSError:
            lib = None
        _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else False  # type: ignore[assignment]
    return _libc or None


def tune_memory() -> None:
    """Allocator settings for a worker process (idempotent; before its threads start, where possible)."""
    global _memory_tuned
    if _memory_tuned:
        return
    _memory_tuned = True
    # wallaby/__init__.py asks for "system" before pyarrow loads; when pyarrow was imported before that (an
    # embedding program, tests), at least pyarrow's own allocations move to it.
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system") == "system":
        pa.set_memory_pool(pa.system_memory_pool())
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, 1)


def release_memory() -> None:
    """Give free heap pages back to the OS (after an epoch's buffers are gone). A few ms."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# Set by SIGTERM (and by the API server's graceful stop): the source stops reading, the epoch in flight is
# finished and checkpointed, then the worker exits 0.
STOP = threading.Event()


def install_stop_handler() -> None:
    """SIGTERM -> a graceful stop (:data:`STOP`). Only from the main thread."""

    def _on_term(signum, frame) -> None:
        STOP.set()

    signal.signal(signal.SIGTERM, _on_term)
