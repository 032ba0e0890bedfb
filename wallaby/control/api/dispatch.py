"""Local worker dispatch: one ``wallaby-worker -flow-id ID -generation N`` process per running flow.

The API server launches a worker when a flow starts or resumes, stops it
gracefully (SIGTERM: the epoch in flight is finished and checkpointed; SIGKILL
after ``WALLABY_WORKER_STOP_TIMEOUT`` seconds, default 60) when the flow is paused
or stopped, and reports every exit to its owner (``on_exit``), which decides
between FAILED and a restart. Workers inherit the server's environment, so they
open the same flow and checkpoint store. Their output goes to
``WALLABY_WORKER_LOG_DIR`` (default ``~/.wallaby/logs``), ``<flow id>.log``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wallaby.core import settings
from wallaby.core.errors import redact_dsn

log = logging.getLogger("wallaby.api.dispatch")


@dataclass
class WorkerProcess:
    flow_id: str
    generation: int
    once: bool
    proc: subprocess.Popen
    log_path: Path
    started_at: float
    stopping: bool = False


@dataclass(frozen=True)
class WorkerExit:
    flow_id: str
    generation: int
    once: bool
    returncode: int
    reason: str  # the worker's last error line, or how it ended
    stopped_by_us: bool


def last_error(path: Path, limit: int = 64 << 10) -> str:
    """The worker's own error report from the end of its log (:func:`worker_error`)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return worker_error(f.read().decode("utf-8", "replace"))
    except OSError:
        return ""


def worker_error(text: str) -> str:
    """The worker's own error report in its output (``wallaby-worker: ...``, with the ``- problem`` lines of a bad
    flow spec after it, joined by "; "), else its last line; DSNs redacted."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("wallaby-worker:"):
            problems = []
            for ln in lines[i + 1:]:
                if not ln.startswith("- "):
                    break
                problems.append(ln.removeprefix("- "))
            head = lines[i].removeprefix("wallaby-worker:").strip()
            return redact_dsn(f"{head} {'; '.join(problems)}" if problems else head)
    return redact_dsn(lines[-1][-500:]) if lines else ""


class LocalDispatcher:
    """Runs flow workers as local processes and watches them."""

    def __init__(self, on_exit: Callable[[WorkerExit], None], log_dir: str | Path | None = None,
                 stop_timeout: float | None = None):
        self.on_exit = on_exit
        tuned = settings.current()  # WALLABY_WORKER_LOG_DIR, _STOP_TIMEOUT, WALLABY_RUN_ONCE_EMPTY_READS
        self.log_dir = Path(log_dir or tuned.worker_log_dir).expanduser()
        self.stop_timeout = stop_timeout if stop_timeout is not None else tuned.worker_stop_timeout
        self.run_once_empty_reads = tuned.run_once_empty_reads
        self._workers: dict[tuple[str, int], WorkerProcess] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="wallaby-dispatch", daemon=True)
        self._watcher.start()

    def command(self, flow_id: str, generation: int, once: bool, backfill: list[str] | None = None) -> list[str]:
        cmd = [sys.executable, "-m", "wallaby.control.worker", "-flow-id", flow_id, "-generation", str(generation)]
        if backfill is not None:
            cmd += ["-mode", "backfill", "-tables", ",".join(backfill)]
        elif once:
            cmd += ["-max-empty-reads", str(self.run_once_empty_reads)]
        return cmd

    def launch(self, flow_id: str, generation: int, *, once: bool = False,
               backfill: list[str] | None = None) -> WorkerProcess:
        """Start a worker of the flow at ``generation``: streaming, or until caught up (``once``), or a backfill of
        the ``backfill`` tables (a one-off too)."""
        once = once or backfill is not None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{flow_id}.log"
        with open(log_path, "ab") as out:
            what = " (backfill)" if backfill is not None else " (run once)" if once else ""
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} worker generation {generation}"
                      f"{what}\n".encode())
            out.flush()
            proc = subprocess.Popen(self.command(flow_id, generation, once, backfill), stdout=out,
                                    stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=dict(os.environ), start_new_session=True)
        worker = WorkerProcess(flow_id, generation, once, proc, log_path, time.time())
        with self._lock:
            self._workers[(flow_id, generation)] = worker
        log.info("flow %s: worker generation %d started (pid %d)%s", flow_id, generation, proc.pid,
                 " to run once" if once else "", extra={"flow": flow_id})
        return worker

    def running(self, flow_id: str) -> WorkerProcess | None:
        with self._lock:
            alive = [w for (fid, _), w in self._workers.items() if fid == flow_id and w.proc.poll() is None]
        return max(alive, key=lambda w: w.generation) if alive else None

    def stop(self, flow_id: str, timeout: float | None = None) -> bool:
        """Stop the flow's workers gracefully (SIGTERM, then SIGKILL after ``timeout``). True if one was running."""
        stopped = False
        while (w := self.running(flow_id)) is not None:
            self._stop_one(w, timeout)
            stopped = True
        self._reap()
        return stopped

    def _stop_one(self, w: WorkerProcess, timeout: float | None) -> None:
        flow_id = w.flow_id
        w.stopping = True
        timeout = self.stop_timeout if timeout is None else timeout
        try:
            w.proc.send_signal(signal.SIGTERM)
            w.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("flow %s: worker did not stop within %.0fs; killing it", flow_id, timeout,
                        extra={"flow": flow_id})
            w.proc.kill()
            w.proc.wait()
        except ProcessLookupError:
            pass

    def stop_all(self, timeout: float | None = None) -> None:
        with self._lock:
            ids = sorted({fid for fid, _ in self._workers})
        threads = [threading.Thread(target=self.stop, args=(i, timeout)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def close(self, timeout: float | None = None) -> None:
        self.stop_all(timeout)
        self._closed.set()
        self._watcher.join(5)

    def _reap(self) -> None:
        ended: list[WorkerProcess] = []
        with self._lock:
            for key, w in list(self._workers.items()):
                if w.proc.poll() is not None:
                    ended.append(w)
                    del self._workers[key]
        for w in ended:
            rc = w.proc.returncode
            reason = last_error(w.log_path) if rc else "worker finished"
            if rc and rc < 0:
                reason = f"worker killed by signal {-rc}" + (f" ({reason})" if reason else "")
            log.info("flow %s: worker generation %d exited with %s", w.flow_id, w.generation, rc,
                     extra={"flow": w.flow_id})
            try:
                self.on_exit(WorkerExit(w.flow_id, w.generation, w.once, rc, reason, w.stopping))
            except Exception:  # the watcher must survive its owner's bugs
                log.exception("flow %s: handling the worker's exit failed", w.flow_id, extra={"flow": w.flow_id})

    def _watch(self) -> None:
        while not self._closed.wait(0.5):
            self._reap()
