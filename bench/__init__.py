"""`make bench`: wallaby beside the baselines it is measured against (bench/run.py)."""

from __future__ import annotations

import resource


def own_peak_rss() -> int:
    """This process's peak resident set size in bytes: the kernel's ``VmHWM`` of its memory since its ``exec``.
    Not ``ru_maxrss``: Linux sets that at ``exec`` from the memory the process had before, and a child that
    Python's subprocess starts by ``vfork`` has its parent's then (a bench parent holding 1 GB made a 360 MB worker
    report 962 MB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: KiB on Linux


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
    changed rows to wake for) and a ``CHECKPOINT`` (the next leg's writes do not pay for this one's)."""
    import time

    import psutil

    if dsn is not None:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("VACUUM ANALYZE")
            c.execute("CHECKPOINT")
    t0 = time.perf_counter()
    fields = ("user", "nice", "system", "irq", "softirq")
    while time.perf_counter() - t0 < QUIET_WAIT:
        c0 = psutil.cpu_times()
        time.sleep(QUIET_WINDOW)
        c1 = psutil.cpu_times()
        if sum(getattr(c1, f) - getattr(c0, f) for f in fields) / QUIET_WINDOW < QUIET_CORES:
            break
    return time.perf_counter() - t0
