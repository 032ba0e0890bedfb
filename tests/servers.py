"""Running a test server in a subprocess: started, waited for, failed with its output, stopped.

The session fixtures of the servers the suite starts itself (tests/s3_server.py: moto; tests/chserver.py: ClickHouse
from chdb; tests/snowserver.py: fakesnow) share this: a server that cannot start, exits, or does not answer in time
fails the run with the tail of its output; it is never skipped.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


@contextmanager
def running(name: str, command: list[str], ready: Callable[[], bool], *, timeout: float,
            env: dict[str, str] | None = None, cwd: str | None = None) -> Iterator[tuple[subprocess.Popen, object]]:
    """``command`` running until the block ends, once ``ready()``; yields the process and its log (a temp file)."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the block ends
    try:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd)
    except OSError as exc:
        log.close()
        pytest.fail(f"{name} could not be started: {exc}", pytrace=False)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with status {proc.returncode}" if proc.poll() is not None else \
                    f"did not answer within {timeout:.0f}s"
                pytest.fail(f"{name} {why}:\n{log_tail(log)}", pytrace=False)
            time.sleep(0.1)
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
