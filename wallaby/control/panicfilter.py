"""Keep the dataflow runtime's panic reports off a worker's stderr.

bytewax 0.21.1 turns a Python exception raised in a step (a sink's
``build_part``/``write_batch``/``snapshot``, a source's ``next_batch``) into a
Rust panic: Rust's default panic hook writes ``thread '<unnamed>' panicked at
src/outputs.rs:321:49:`` / ``Box<dyn Any>`` (and a stack backtrace when
``RUST_BACKTRACE`` is set) straight to file descriptor 2, before the exception
comes back to Python as ``BytewaxRuntimeError`` with the original as its
``__cause__``. The worker reports that original itself, in one line
(``wallaby.control.worker``), so the report of the panic is noise that hides it.

:func:`filtered_stderr` points fd 2 at a pipe read by a small child process
(this file run as a script, standard library only) that copies every line to
the real stderr except such a report: the ``thread '...' panicked at`` line, the
line after it (the payload), and the backtrace and ``note:`` lines that follow.
A child, not a thread: it needs no GIL, and it still drains the pipe when the
worker dies (SIGKILL, a fatal error: faulthandler's dump reaches the log). It
ignores SIGINT/SIGTERM/SIGHUP and ends when the pipe closes. With
``WALLABY_DEBUG`` set nothing is filtered.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

# Searched, not matched at the line's start: another thread's write can land in the middle of Rust's (seen under
# load: a line ending in "thread '" and the next starting "<unnamed>' panicked at"), and the report is dropped all
# the same.
_PANIC = re.compile(rb"' (?:panicked|attempted to panic) at ")
_FRAME = re.compile(rb"^(?:stack backtrace:|\s+\d+: |\s+at |note: |\s*$)")
# Lines other threads write while a report is being written (our JSON logs, librdkafka's "%3|..." lines): kept,
# and they do not end the report.
_FOREIGN = re.compile(rb"^(?:\{|%\d\|)")
_MAX_FOREIGN = 20  # this many of them in a row end a report all the same (a safety net)
_PIPE_SIZE = 1 << 20  # room for a burst while the child is scheduled out
_DRAIN_TIMEOUT = 5.0


class PanicFilter:
    """Line by line: :meth:`keep` is False for the lines of a Rust panic report.

    A report is ``thread '...' panicked at <file>:<line>:<col>:``, its payload (``Box<dyn Any>`` for bytewax's
    re-raised Python errors), with RUST_BACKTRACE ``stack backtrace:`` and frame lines (``  12: symbol``,
    ``      at file:line``), ``note: ...`` lines and blank ones. Lines of other threads may come in between: they are
    kept and the report goes on. Any other line ends it (and is kept)."""

    def __init__(self) -> None:
        self._in_report = False
        self._payload_pending = False
        self._foreign_run = 0

    def keep(self, line: bytes) -> bool:
        if _PANIC.search(line):
            self._in_report, self._payload_pending, self._foreign_run = True, True, 0
            return False
        if not self._in_report:
            return True
        if _FOREIGN.match(line):
            self._foreign_run += 1
            if self._foreign_run >= _MAX_FOREIGN:
                self._in_report = False
            return True
        self._foreign_run = 0
        if self._payload_pending:
            self._payload_pending = False
            return False
        if _FRAME.match(line):
            return False
        self._in_report = False
        return True


def _serve() -> None:
    """The child: stdin (the pipe) to stdout (the worker's real stderr), without panic reports."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    f = PanicFilter()
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if f.keep(line):
            try:
                out.write(line)
                out.flush()
            except OSError:
                pass  # nobody reads the real stderr any more: keep draining the pipe


@contextlib.contextmanager
def filtered_stderr(enabled: bool = True) -> Iterator[None]:
    """While inside, whatever this process writes to fd 2 (Python, Rust, C) passes the panic filter. On leaving,
    fd 2 is the real stderr again and every line written before has reached it (waiting up to 5 s). Without a
    filter process (it cannot start), stderr stays as it is."""
    child = _start() if enabled else None
    if child is None:
        yield
        return
    proc, saved = child
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes our end of the pipe: the child reads to its end and exits
        os.close(saved)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_DRAIN_TIMEOUT)  # else another process holds the pipe open; the child ends with it


def _start() -> tuple[subprocess.Popen, int] | None:
    """Start the filter and point fd 2 at it: (the child, a descriptor of the real stderr), or None."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return None
    try:
        r, w = os.pipe()
    except OSError:
        os.close(saved)
        return None
    with contextlib.suppress(ImportError, AttributeError, OSError):
        import fcntl

        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)], stdin=r, stdout=saved,
                                stderr=saved, close_fds=True, start_new_session=True)
    except OSError:
        for fd in (r, w, saved):
            os.close(fd)
        return None
    os.close(r)
    os.dup2(w, 2)
    os.close(w)
    return proc, saved


if __name__ == "__main__":
    _serve()
