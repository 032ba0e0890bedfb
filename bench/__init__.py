"""`make bench`: wallaby beside the baselines it is measured against (bench/run.py)."""

from __future__ import annotations

import os
import resource


def vm_hwm(pid: int | str = "self") -> int | None:
    """A process's peak resident set size in bytes: the kernel's ``VmHWM`` of its memory since its ``exec`` (None
    without /proc or the process)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def own_peak_rss() -> int:
    """This process's peak resident set size in bytes (:func:`vm_hwm`). Not ``ru_maxrss``: Linux sets that at
    ``exec`` from the memory the process had before, and a child that Python's subprocess starts by ``vfork`` has
    its parent's then (a bench parent holding 1 GB made a 360 MB worker report 962 MB)."""
    hwm = vm_hwm()
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def busy_cpu_seconds(before, after) -> float:
    """CPU seconds the machine's cores were busy between two ``psutil.cpu_times()`` (every process's)."""
    return sum(getattr(after, f) - getattr(before, f) for f in ("user", "nice", "system", "irq", "softirq"))


# The machine counts as quiet once fewer than this many cores were busy over a QUIET_WINDOW. A fresh bench
# database left to itself was not: autovacuum woke within its naptime of the generated changes and vacuumed and
# analyzed the table during whichever leg ran then (one such run: 1M narrow changes into DuckDB in 6.6 s, against
# 3.8-4.1 s in four runs after it on the same slot data).
QUIET_CORES = 0.3
QUIET_WINDOW = 0.5
QUIET_WAIT = 30.0


def settle(dsn: str | None = None) -> float:
    """Leave nothing for the server to do in the background, then wait (up to QUIET_WAIT seconds) for a quiet
    machine; returns the seconds waited. With ``dsn``: ``VACUUM ANALYZE`` of that database (autovacuum then has no
    changed rows to wake for) and a ``CHECKPOINT`` (the next leg's writes do not pay for this one's). Always
    ``os.sync()``: the kernel writes out what earlier legs left dirty (a Kafka leg leaves hundreds of MB of
    segments), which otherwise it did during the next leg, where every fsync waited for it on the one disk.
    Measured (the latency group right after a 1M-change Kafka leg, DuckDB, default settings, 10k changes/s): p99 282
    and 344 ms, with DuckDB commits and detaches taking 60-300 ms, against 189 ms with the sync (153-229 ms when the
    group runs alone)."""
    import time

    import psutil

    if dsn is not None:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("VACUUM ANALYZE")
            c.execute("CHECKPOINT")
    t0 = time.perf_counter()
    os.sync()  # every file's dirty pages written out: the next leg's fsyncs do not wait for another leg's writes
    while time.perf_counter() - t0 < QUIET_WAIT:
        c0 = psutil.cpu_times()
        time.sleep(QUIET_WINDOW)
        if busy_cpu_seconds(c0, psutil.cpu_times()) / QUIET_WINDOW < QUIET_CORES:
            break
    return time.perf_counter() - t0
