"""A durable local queue in front of a secondary destination (``ack_policy=primary``).

The epoch of a secondary destination ends when its batches are appended and
fsync'd here, so the slot advances with the primary. A delivery thread then
applies the spooled batches to the real destination in order, committing each,
and moves a cursor past them; when the destination is down it retries with
backoff (1 s doubling to 60 s) and catches up when it returns. Nothing is lost
as long as the spool directory survives (put ``WALLABY_SPOOL_DIR`` on a
persistent volume); delivery is at least once, and destinations that keep a
high-water position (DuckDB) apply each change once.

Files (``<spool dir>/<flow>/<destination>/``): ``spool.log``, records of
``[u32 length][u64 lsn][u64 ordinal][payloads]`` where payloads are the batch's
segments as arrow wire payloads, each ``[u32 length][bytes]``; ``cursor``, the
offset of the first record not yet delivered (replaced atomically); ``source.json``,
the source the spooled batches were read from (:mod:`wallaby.core.identity`): a spool
of another source is refused at start, not delivered, and a reset empties it. A
torn record at the end (a crash mid-append) is cut off at start. Once everything
is delivered the log is emptied.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sinks.base import HighWater, Writer
from wallaby.core import settings
from wallaby.core.changes import ZERO, ChangeBatch, Position
from wallaby.core.identity import SourceCheck, SourceIdentity
from wallaby.wire import decode, encode

log = logging.getLogger("wallaby.sinks.spool")

_HEAD = struct.Struct(">IQQ")
_LEN = struct.Struct(">I")


def spool_root() -> Path:
    return Path(settings.current().spool_dir).expanduser()  # WALLABY_SPOOL_DIR


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The on-disk log and cursor of one secondary destination."""

    def __init__(self, directory: Path, flow_id: str, source: SourceCheck | None = None, name: str = ""):
        self.dir = directory
        self.flow_id = flow_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path, self.cursor_path = self.dir / "spool.log", self.dir / "cursor"
        self.lock = threading.Lock()
        self.hw = HighWater()  # taken: the last position appended
        self._recover()
        if source is not None:
            self._judge(source, name)
        self._file = open(self.log_path, "ab")  # noqa: SIM115 - kept open for appends

    @property
    def high(self) -> Position:
        """The last position appended."""
        return self.hw.taken

    def _judge(self, source: SourceCheck, name: str) -> None:
        """Spooled batches of another source are refused; a reset empties the spool; then the flow's source is
        recorded as the spool's."""
        path = self.dir / "source.json"
        stored = SourceIdentity.from_json(path.read_text()) if path.exists() else None
        if self.high > ZERO and self.cursor() < self.log_path.stat().st_size:
            judged = HighWater.judged(source, name, self.high, stored, f"the spool {self.dir}")
            if judged.taken == ZERO:
                with open(self.log_path, "r+b") as f:
                    f.truncate(0)
                    os.fsync(f.fileno())
                self._set_cursor(0)
                self.hw = judged
        tmp = path.with_suffix(".tmp")
        tmp.write_text(source.current.to_json())
        tmp.replace(path)

    def _recover(self) -> None:
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        offset, good = 0, 0
        with open(self.log_path, "ab+") as f:
            f.seek(0)
            while offset + _HEAD.size <= size:
                f.seek(offset)
                length, lsn, ordinal = _HEAD.unpack(f.read(_HEAD.size))
                if offset + _HEAD.size + length > size:
                    break
                offset += _HEAD.size + length
                good = offset
                self.hw.advance(Position(lsn, ordinal))
            if good < size:
                log.warning("spool %s: cutting a torn record at offset %d", self.dir, good)
                f.truncate(good)

    def append(self, batch: ChangeBatch) -> bool:
        """Append (not yet durable: see :meth:`sync`). False when the batch is already spooled (a replay)."""
        if self.hw.replayed(batch):
            return False
        body = b"".join(_LEN.pack(len(p.data)) + p.data for p in encode(batch, "arrow"))
        with self.lock:
            self._file.write(_HEAD.pack(len(body), batch.position.lsn, batch.position.ordinal) + body)
        self.hw.advance(batch.position)
        return True

    def sync(self) -> None:
        with self.lock:
            self._file.flush()
            os.fsync(self._file.fileno())

    def cursor(self) -> int:
        try:
            return int(self.cursor_path.read_text())
        except (OSError, ValueError):
            return 0

    def _set_cursor(self, offset: int) -> None:
        tmp = self.cursor_path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(self.cursor_path)
        _fsync_dir(self.dir)

    def read_next(self) -> tuple[ChangeBatch, int] | None:
        """The first undelivered batch and the offset after it."""
        offset = self.cursor()
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            head = f.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return None
            length, lsn, ordinal = _HEAD.unpack(head)
            body = f.read(length)
            if len(body) < length:
                return None
        segments, i = [], 0
        while i < len(body):
            (n,) = _LEN.unpack_from(body, i)
            segments.append(decode(body[i + _LEN.size:i + _LEN.size + n], "arrow").to_segment())
            i += _LEN.size + n
        batch = ChangeBatch(self.flow_id, segments, Position(lsn, ordinal))
        return batch, offset + _HEAD.size + length

    def delivered(self, offset: int) -> None:
        """Everything before ``offset`` is in the destination; empty the log once all of it is."""
        with self.lock:
            self._file.flush()
            if offset >= self.log_path.stat().st_size:
                self._file.truncate(0)
                self._file.seek(0)
                os.fsync(self._file.fileno())
                offset = 0
        self._set_cursor(offset)

    def pending_bytes(self) -> int:
        return max(0, self.log_path.stat().st_size - self.cursor())

    def close(self) -> None:
        with self.lock:
            self._file.close()


class SpooledWriter(Writer):
    """A secondary destination behind a :class:`Spool` and a delivery thread."""

    def __init__(self, name: str, flow_id: str, make_writer: Callable[[Any], Writer], directory: Path,
                 source: SourceCheck | None = None):
        self.name, self.flow_id = name, flow_id
        self._make_writer = make_writer
        self.spool = Spool(directory, flow_id, source, name)
        self._writer: Writer | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.last_error: str | None = None
        self.failures = 0  # delivery attempts that failed
        self._thread = threading.Thread(target=self._deliver, name=f"wallaby-spool-{name}", daemon=True)
        self._thread.start()

    def write(self, batch: ChangeBatch) -> None:
        self.spool.append(batch)

    def commit(self) -> Any:
        self.spool.sync()
        self._wake.set()
        return {"spooled": str(self.spool.high)}

    def _deliver(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                item = self.spool.read_next()
                if item is None:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                if self._writer is None:
                    self._writer = self._make_writer(None)
                batch, after = item
                self._writer.write(batch)
                self._writer.commit()
                self.spool.delivered(after)
                if self.last_error:
                    log.info("destination %s: delivering again (caught up from its spool)", self.name,
                             extra={"flow": self.flow_id})
                self.last_error, delay = None, 1.0
            except Exception as exc:  # the destination is down or refused: keep the spool, retry later
                self.last_error = str(exc)
                self.failures += 1
                log.warning("destination %s (secondary): %s; %d bytes spooled, retrying in %.0fs", self.name, exc,
                            self.spool.pending_bytes(), delay, extra={"flow": self.flow_id})
                if self._writer is not None:
                    try:
                        self._writer.close()
                    except Exception:
                        pass
                    self._writer = None
                self._stop.wait(delay)
                delay = min(delay * 2, 60.0)

    def drain(self, timeout: float) -> bool:
        """Wait until everything spooled is delivered, while deliveries succeed (a graceful stop); what is left
        stays spooled for the next run. A destination that fails twice while it drains is taken as down (one
        failure may be a slow answer under load: its retry comes a second later)."""
        deadline = time.monotonic() + timeout
        failed_before = self.failures
        while time.monotonic() < deadline:
            if self.spool.pending_bytes() == 0:
                return True
            if self.failures - failed_before >= 2 or (self.last_error is not None and failed_before >= 2
                                                      and self.failures > failed_before):
                return False
            self._wake.set()
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.drain(settings.current().spool_drain_timeout)  # WALLABY_SPOOL_DRAIN_TIMEOUT
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        if self._writer is not None:
            self._writer.close()
        self.spool.close()
