"""The backfill's bytewax input: one partition per table part (:class:`~sources.postgres.snapshot.Part`).

Each part reads its blocks chunk by chunk (:class:`~sources.postgres.snapshot.PartReader`) and ends
(``StopIteration``) when its last block is read, so the dataflow ends when every part has. A part's state is the
block it has reached: with the worker's recovery store, a run killed at any moment resumes every unfinished part
from the block of the last epoch its destinations committed, and a finished part is not read again.

Parts read at once: ``readers`` (``-snapshot-workers N``, the source option ``snapshot_workers``) per process. A part
takes one of ``readers`` slots when it starts (its connections open then) and gives it back when it ends; the
others wait. A reading part fetches its next chunk in a thread of a pool of ``readers`` threads while the worker
writes the current one (DuckDB's postgres extension parses without the GIL), and the worker never waits on a fetch:
a part whose chunk is not in yet returns nothing and is polled again (:data:`POLL_SECONDS`), so one bytewax worker
keeps every reader busy and writes whichever chunk is ready. Memory is bounded by the slots: at most two chunks per
reading part. ``bytewax.run -w/-p`` still spreads the parts over workers and processes (each process its own slots).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from sources.postgres.snapshot import Chunk, Part, PartReader, TableDroppedError
from wallaby.core.changes import SNAPSHOT_PART_SHIFT, ChangeBatch
from wallaby.core.runtime import tune_gc, tune_memory

log = logging.getLogger("wallaby.backfill")

# A table's progress is logged at most this often (seconds) when no terminal shows it.
PROGRESS_LOG_EVERY = 10.0
# How soon a part whose next chunk is still being fetched (or that waits for a reader slot) is asked again. Short:
# the worker has nothing else to do meanwhile when every part waits; bytewax parks the thread until then.
POLL_SECONDS = 0.001


@dataclass
class TableProgress:
    """How far the backfill of one table is (its parts together)."""

    table: str
    parts: int
    blocks: int = 0  # blocks to read (as planned; the open end of the last part counts as read when done)
    read_blocks: int = 0
    rows: int = 0
    parts_done: int = 0
    started: float = field(default_factory=time.monotonic)
    keyed: bool = False  # parts are key ranges: progress is told in parts, not blocks

    @property
    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self.started, 1e-9)


class Progress:
    """The backfill's progress, per table, fed by the parts (bytewax worker threads of one process). This one logs
    (a structured line per table at most every :data:`PROGRESS_LOG_EVERY` seconds, and when a table is done);
    ``wallaby-worker`` on a terminal shows bars instead (:mod:`wallaby.control.progress`)."""

    def __init__(self, flow_id: str):
        self.flow_id = flow_id
        self.tables: dict[str, TableProgress] = {}
        self.lock = threading.Lock()
        self._logged: dict[str, float] = {}

    def plan(self, parts: list[Part], blocks: dict[str, int]) -> None:
        with self.lock:
            for p in parts:
                t = self.tables.setdefault(p.table, TableProgress(p.table, p.count, blocks.get(p.table, 0)))
                t.parts = p.count
                t.keyed = t.keyed or p.column is not None

    def advance(self, part: Part, blocks: int, rows: int, done: bool) -> None:
        with self.lock:
            t = self.tables.setdefault(part.table, TableProgress(part.table, part.count))
            t.read_blocks += blocks
            t.rows += rows
            t.parts_done += int(done)
            self.changed(t)

    def changed(self, t: TableProgress) -> None:
        now = time.monotonic()
        finished = t.parts_done >= t.parts
        if finished or now - self._logged.get(t.table, t.started) >= PROGRESS_LOG_EVERY:
            self._logged[t.table] = now
            log.info("backfill %s: %d rows (%.0f rows/s), %d of %d parts done%s", t.table, t.rows, t.rate,
                     t.parts_done, t.parts, "" if finished or t.keyed else f", block {t.read_blocks} of ~{t.blocks}",
                     extra={"flow": self.flow_id})

    def close(self) -> None:
        """Nothing to do for logs; a terminal's bars stop here."""


class SnapshotSource(FixedPartitionedSource):
    """Reads the parts of a backfill. Items are ``(flow_id, ChangeBatch)`` of op ``read`` rows."""

    def __init__(self, flow_id: str, dsn: str, publication: str, parts: list[Part], *, snapshot: str | None,
                 snapshot_lsn: int, snapshot_ts: int, progress: Progress | None = None,
                 starts: dict[str, dict] | None = None, readers: int = 1):
        self.flow_id, self.dsn, self.publication = flow_id, dsn, publication
        self.readers = max(1, readers)
        self._shared_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._slots: threading.BoundedSemaphore | None = None
        self.parts = {p.key: p for p in parts}
        self.snapshot, self.snapshot_lsn, self.snapshot_ts = snapshot, snapshot_lsn, snapshot_ts
        self.progress = progress or Progress(flow_id)
        # part -> where it goes on when bytewax has no state for it (from the snapshot state store): {"next", ...}
        self.starts = starts or {}

    def shared(self) -> tuple[ThreadPoolExecutor, threading.BoundedSemaphore]:
        """This process's fetch pool and reader slots (made by the first part that asks)."""
        with self._shared_lock:
            if self._pool is None or self._slots is None:
                self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix=f"wallaby-backfill-{self.flow_id}")
                self._slots = threading.BoundedSemaphore(self.readers)
            return self._pool, self._slots

    def list_parts(self) -> list[str]:
        return list(self.parts)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _PartPartition:
        tune_gc()
        tune_memory()
        return _PartPartition(self, self.parts[for_part], resume_state or self.starts.get(for_part))


class _PartPartition(StatefulSourcePartition):
    def __init__(self, src: SnapshotSource, part: Part, resume_state: Any):
        self.src, self.part = src, part
        state = resume_state or {}
        self.done = bool(state.get("done", False))
        self.rows = int(state.get("rows", 0))
        self.resume_block: int | None = state.get("next")
        # a key-range part goes on after the last key committed (text of the column's type; None: from its start)
        self.resume_key: str | None = state.get("key") if part.by_key else None
        self.resumed = bool(state) and not part.by_key  # resumed at a block (a key-range part logs its key)
        self.resumed_at_key = bool(state) and part.by_key and not self.done
        self.reader: PartReader | None = None
        self.slot: threading.BoundedSemaphore | None = None
        self.awake: datetime | None = None
        if self.done:
            src.progress.advance(part, 0, 0, True)
        self.started = time.monotonic()

    def _later(self) -> list:
        self.awake = datetime.now(UTC) + timedelta(seconds=POLL_SECONDS)
        return []

    def _open(self) -> bool:
        """Take a reader slot and open the part's reader; False when every slot is taken.

        The part's table is locked (ACCESS SHARE, what its reads take anyway) as the reader opens, so a DROP TABLE
        from then on waits for the part's end. A table already gone (dropped since the plan or the snapshot) gives
        a reader of nothing: the part ends with 0 rows and a warning, and the other parts go on."""
        pool, slots = self.src.shared()
        if not slots.acquire(blocking=False):
            return False
        self.slot = slots
        src = self.src
        try:
            self.reader = PartReader(src.dsn, self.part, src.publication, snapshot=src.snapshot,
                                     snapshot_lsn=src.snapshot_lsn, snapshot_ts=src.snapshot_ts, flow_id=src.flow_id,
                                     next_block=self.resume_block, pool=pool)
        except (TableDroppedError, psycopg.errors.UndefinedTable):  # the catalog names only the part's table
            if self.reader is not None:
                self.reader.close()
            self.reader = _NothingToRead(src, self.part, self.resume_block)
            log.warning("backfill %s: table %s does not exist any more (dropped during the backfill): the part"
                        " ends with 0 rows", self.part.key, self.part.table, extra={"flow": src.flow_id})
        except BaseException:
            self._release()
            raise
        if self.resumed:
            log.info("backfill %s: resuming at block %d (%d rows read before)", self.part.key,
                     self.reader.next_block, self.rows, extra={"flow": src.flow_id})
        self.started = time.monotonic()
        return True

    def _release(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.slot is not None:
            self.slot.release()
            self.slot = None

    def next_batch(self) -> list[tuple[str, ChangeBatch]]:
        self.awake = None
        if self.done:
            raise StopIteration()
        if self.reader is None:
            if not self._open():
                return self._later()
            if self.resumed_at_key:
                if self.resume_key is not None:
                    self.reader.seek(self.resume_key)
                log.info("backfill %s: resuming %s (%d rows read before)", self.part.key,
                         "from its start" if self.resume_key is None else f"at key {self.resume_key!r}", self.rows,
                         extra={"flow": self.src.flow_id})
        elif not self.reader.ready():
            return self._later()
        assert self.reader is not None
        before = self.reader.next_block
        batch, chunk, rows = self.reader.next_batch(self.src.flow_id, self.part.key, self.rows,
                                                    consistent=self.src.snapshot is not None, by_key=self.part.by_key)
        self.done = chunk.done
        self.rows += rows
        out = [(self.src.flow_id, batch)]
        self.src.progress.advance(self.part, max(chunk.next_block - before, 0), rows, self.done)
        if self.done:
            log.info("backfill %s: read %d rows in %.1fs", self.part.key, self.rows, time.monotonic() - self.started,
                     extra={"flow": self.src.flow_id})
            self._release()
        return out

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> dict:
        """``{"next": block, "done", "rows"}``; a key-range part adds ``"key"``: the last key read (its text)."""
        state = {"next": self.reader.next_block if self.reader is not None else self.resume_block,
                 "done": self.done, "rows": self.rows}
        if self.part.by_key:
            state["key"] = self.reader.next_key if self.reader is not None else self.resume_key
        return state

    def close(self) -> None:
        self._release()


class _NothingToRead(PartReader):
    """The reader of a part whose table is gone: no connection, no rows, done at its first read."""

    def __init__(self, src: SnapshotSource, part: Part, next_block: int | None):  # nothing asked of the server
        self.part, self.pool, self._ahead = part, None, None
        self.snapshot_lsn, self.snapshot_ts = src.snapshot_lsn, src.snapshot_ts
        self.ordinal_base = (part.index + 1) << SNAPSHOT_PART_SHIFT
        self.next_block = part.first_block if next_block is None else next_block
        self.next_key: str | None = None  # a key-range part: where it stands (seek sets it when resumed)

    def ready(self) -> bool:
        return True

    def read(self, first_row: int = 1) -> Any:
        return Chunk(None, self.next_block, True, self.next_key)

    def close(self) -> None:
        pass
