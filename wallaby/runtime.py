"""Process-wide tuning for wallaby's worker processes."""

from __future__ import annotations

import gc
import signal
import threading

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


# Set by SIGTERM (and by the API server's graceful stop): the source stops reading, the epoch in flight is
# finished and checkpointed, then the worker exits 0.
STOP = threading.Event()


def install_stop_handler() -> None:
    """SIGTERM -> a graceful stop (:data:`STOP`). Only from the main thread."""

    def _on_term(signum, frame) -> None:
        STOP.set()

    signal.signal(signal.SIGTERM, _on_term)
