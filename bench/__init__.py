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
