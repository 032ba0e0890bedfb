"""The Postgres logical replication source: a bytewax ``FixedPartitionedSource``.

One partition is one replication slot. Its snapshot state is
``{"position": [lsn, ordinal], "covered": lsn, "shapes": [...], "source": {...}}``: the position of
the last change it emitted, the end LSN up to which every change has been emitted, the relation
shapes emitted so far (what schema drift is judged against), and the source they were read from
(judged at start like every stored position, :mod:`wallaby.core.identity`).

When the slot may advance (docs/ARCHITECTURE.md): bytewax calls
``next_batch`` again after ``snapshot()`` of epoch k only once every sink has
finished epoch k and (with recovery on) the recovery store holds it. So the
``covered`` LSN of the last snapshot is confirmed to Postgres at the start of
the following ``next_batch``, after it is written to the checkpoint store (so the
store is never behind the slot: a slot confirmed further was advanced by someone else).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from sources.postgres.batcher import Batcher
from sources.postgres.connection import connect, is_transient, server_name
from sources.postgres.ddl_gate import DROP, HOLD, POLL_SECONDS, DDLGate
from sources.postgres.heartbeat import Heartbeat
from sources.postgres.own_tables import own_table
from sources.postgres.pgoutput import DecodeError
from sources.postgres.rds_iam import register
from sources.postgres.reader import StreamReader, drain
from sources.postgres.replication import ReplicationStream, StreamClosed, binary_mode
from sources.postgres.resolver import TypeResolver
from sources.postgres.setup import ExportedSnapshot, create_slot, prepare_source, proto_version_for
from sources.postgres.snapshot import Part, PartReader
from wallaby.core.changes import (
    LSN_COL,
    OP_DDL,
    OP_MESSAGE,
    OP_TRUNCATE,
    ZERO,
    ChangeBatch,
    Column,
    Event,
    Position,
    TableChanges,
    TableSchema,
    format_lsn,
    parse_lsn,
)
from wallaby.core.errors import SourceError
from wallaby.core.identity import DISCARD, SourceCheck, SourceIdentity
from wallaby.core.metrics import last_commit_us, watch_source
from wallaby.core.runtime import STOP, tune_gc, tune_memory
from wallaby.core.spec import DDLPolicy
from wallaby.state.checkpoints import Checkpoint, CheckpointStore
from wallaby.state.flowstore import FlowStore

log = logging.getLogger("wallaby.source")

# Reconnect backoff after the walsender goes away: first wait, cap.
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0
# How long an idle partition sleeps between polls. Short enough that a new
# change is picked up within a few ms, long enough not to spin a core.
IDLE_POLL = 0.005
# Batches (or covered-LSN updates) one next_batch takes from the reader at most.
DRAIN_ITEMS = 4
# PostgresSource(resume=...): take the checkpoint store's position as it is (no start-up check ran).
READ_CHECKPOINT = object()
# A run-once worker's (-max-empty-reads) empty read: this long without WAL data (or batch_timeout, if shorter). What
# makes it the end is the other half of the rule: the stream has covered the WAL the server had flushed when the
# quiet stretch began; the window only keeps a read that is still arriving from counting. A whole batch_timeout
# (1 s by default) here was a second of every catch-up run (3.2-3.7 s in all with nothing to read, 2 cores); 0.2 s
# was a fifth of one once the run stopped without waiting for an epoch (1.04-1.09 s in all, with 0.05 s 0.86-0.9 s).
RUN_ONCE_EMPTY_READ = 0.05


@dataclass
class SlotPart:
    """One slot of a flow (source option ``slots``): its source options
    (:meth:`~wallaby.core.options.PostgresSourceOptions.slot_views`), the source as judged at start, where to
    resume without recovery state, and its index (None when the flow has one slot)."""

    opts: Any
    source_check: SourceCheck | None = None
    resume: Checkpoint | object | None = READ_CHECKPOINT
    index: int | None = None


# The partitions that ended their input at once when their stream was done, their last epoch still to confirm
# (confirms_after_run); None outside that block.
_AFTER_RUN: list[_PostgresPartition] | None = None


@contextmanager
def confirms_after_run() -> Iterator[None]:
    """Run a dataflow inside this block to let a source whose stream is done (``-max-empty-reads``, a stop LSN, a
    requested stop) end its input at once. Otherwise it waits for its last epoch to close on bytewax's clock (up to
    an epoch interval: the default 2 s was most of a catch-up run's end, measured with 200k changes into DuckDB:
    1.28 s from the stream's end to the process's, 0.17 s with 200 ms epochs) and confirms it before it ends.
    Ending the input closes that epoch at once: every destination commits it before the dataflow completes, so it
    is confirmed here, when the block ends without an error (the checkpoint store first, then the slot, through the
    replication connection kept open until then). With an error nothing more is confirmed: the next start reads that
    epoch again and the destinations skip what they hold."""
    global _AFTER_RUN
    pending: list[_PostgresPartition] = []
    _AFTER_RUN = pending
    ok = False
    try:
        yield
        ok = True
    finally:
        _AFTER_RUN = None
        errors: list[BaseException] = []
        for part in pending:
            try:
                part.finish(confirm=ok)
            except BaseException as exc:  # every partition closed; the first error raised
                errors.append(exc)
        if errors and ok:
            raise errors[0]


class PostgresSource(FixedPartitionedSource):
    """Reads one flow's replication slots, one input partition each. Items are ``(slot, ChangeBatch)``: keyed by
    the slot, so each slot's changes reach its own part of every destination (:mod:`sinks.fanout`)."""

    def __init__(self, flow_id: str, options: Any, *, start_lsn: int | None = None,
                 max_empty_reads: int | None = None, checkpoints: CheckpointStore | None = None,
                 prepared: bool = False, stop_at_lsn: int | None = None, generation: int | None = None,
                 ddl_policy: Any = None, keep_wal: bool = False, source_check: SourceCheck | None = None,
                 resume: Checkpoint | object | None = READ_CHECKPOINT, flows: FlowStore | None = None,
                 resync: bool = False, parts: list[SlotPart] | None = None):
        self.flow_id = flow_id
        # every destination takes a snapshot's rows: a keyed table rewritten at the source is read again in the
        # stream (its rows as of now, as reads after the DDL); else the rewrite is only said (docs/ddl.md)
        self.resync = resync
        # the flow store: the DDL gate's events and the generation fence (None: no gate events, no fence)
        self.flows = flows
        # the source as found at start: stored positions are judged against it, and written with it
        self.source_check = source_check
        # where to resume without recovery state: a checkpoint vetted at start (dataflows.positions), None for
        # the slot's own position, or READ_CHECKPOINT to take the store's as it is
        self.resume = resume
        self.keep_wal = keep_wal  # a destination wants raw pgoutput messages (payload_mode=wal)
        self.ddl_policy = ddl_policy  # the flow's effective config.ddl (None: gate off)
        self.generation = generation  # the worker's generation in the flow store: fenced when it is no longer
        self.stop_at_lsn = stop_at_lsn  # stop once every change below this LSN is emitted (bench, run-once)
        self.opts = options
        self.start_lsn = start_lsn
        self.max_empty_reads = max_empty_reads
        self.checkpoints = checkpoints
        self.prepared = prepared
        views = options.slot_views()
        if parts is None:
            parts = [SlotPart(views[0], source_check, resume)] if len(views) == 1 else \
                [SlotPart(v, None, resume, i) for i, v in enumerate(views)]
        self.parts = {p.opts.slot: p for p in parts}

    def list_parts(self) -> list[str]:
        return list(self.parts)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _PostgresPartition:
        tune_gc()
        tune_memory()
        return _PostgresPartition(self, resume_state, self.parts[for_part])


class _PostgresPartition(StatefulSourcePartition):
    def __init__(self, src: PostgresSource, resume_state: Any, part: SlotPart):
        self.src = src
        self.opts = opts = part.opts
        self.part = part
        self.check = part.source_check
        self.flow_id = src.flow_id
        self.key = opts.slot  # what items are keyed by: each slot's part of the destinations takes them
        self._fence()
        self.server = server_name(opts.dsn)
        if opts.aws_rds_iam:
            register(opts, self.flow_id)
        plan = prepare_source(opts, self.flow_id) if not src.prepared else None
        version = plan.server_version if plan else _server_version(opts.dsn)
        self.proto_version = proto_version_for(version)

        # Where to resume: bytewax's recovery state, else the checkpoint store.
        position, covered = ZERO, 0
        check = self.check
        if resume_state and check is not None and check.judge(
                SourceIdentity.from_json(resume_state.get("source")), int(resume_state.get("covered", 0)),
                "the bytewax recovery store") == DISCARD:
            resume_state = None
        # the checkpoint store's position, as vetted at start (None: none, or discarded by a reset)
        cp = part.resume
        if cp is READ_CHECKPOINT:
            cp = src.checkpoints.get(self.flow_id, opts.slot) if src.checkpoints is not None else None
        if resume_state:
            position = Position.from_state(resume_state["position"])
            covered = int(resume_state.get("covered", 0))
        elif isinstance(cp, Checkpoint):
            position, covered = cp.position, cp.confirmed_lsn
        if src.start_lsn is not None:
            slot_confirmed = (plan.confirmed_flush if plan else None) or _slot_confirmed(opts.dsn, opts.slot)
            if slot_confirmed is not None and src.start_lsn < slot_confirmed:
                raise SourceError(
                    f"cannot replay from {format_lsn(src.start_lsn)}: slot {opts.slot!r} on {self.server} has"
                    f" confirmed up to {format_lsn(slot_confirmed)} and no longer retains the changes before it",
                    server=self.server)
            position, covered = Position(src.start_lsn, 0), src.start_lsn
        self.position = position  # last change emitted
        self.covered = covered  # every change below this end LSN has been emitted
        # What we told the server (at least what it already has). Never below the checkpoint store: the recovery
        # store can resume an epoch before one whose covered LSN was confirmed (killed after the epoch's snapshot was
        # written and confirmed, before bytewax recorded the epoch as the one to resume from); the replay is skipped
        # by every destination, but confirming it again would move the store back below the slot, and the next
        # start would refuse the flow (fresh-clone CI, Snowflake kill -9 test: slot 0/2615EA70, store 0/2612D150).
        self.confirmed = max(covered, cp.confirmed_lsn if isinstance(cp, Checkpoint) and src.start_lsn is None else 0)
        self.to_confirm: int | None = None
        self.snapshot_position = position
        self.resets_cleared = False

        self.resolver = TypeResolver(opts.dsn, opts.resolve_types, self.flow_id)
        # Relation shapes as of what was emitted (schema drift is judged against them): kept across reconnects and
        # in the snapshot, so a drift read but not emitted (read ahead, a reconnect, a held DDL, a restart) is
        # found again when its Relation message comes again.
        self.shapes: dict[int, TableSchema] = shapes_from_state(resume_state.get("shapes") if resume_state else None)
        self.gate = DDLGate(self.flow_id, src.ddl_policy or DDLPolicy(gate=False), src.flows, rereads=src.resync)
        self.held: Event | None = None  # a ddl event the gate holds the flow at
        self.held_check = 0.0
        self.reader: StreamReader | None = None  # reads and decodes the stream on its own thread
        self.backoff = BACKOFF_FIRST
        self.reconnect_at = 0.0
        self.empty_reads = 0
        self.last_empty = time.monotonic()
        # -max-empty-reads: the server's flushed WAL when this quiet stretch began; empty reads count once the stream
        # has covered it (a walsender still decoding a large transaction under load sends nothing for a while, and
        # its keepalives tell only what it has sent so far)
        self.quiet_target: int | None = None
        self.done = False  # max-empty-reads reached: drain, confirm, stop
        self.ending = False  # ended its input before its last epoch was confirmed (confirms_after_run)
        self.emitted = False  # a batch was handed on since the last snapshot (an epoch still to make durable)
        self.next_wake: datetime | None = None
        # tables to read again after a rewrite (the first being read by resync_reader); kept in the snapshot, so a
        # restart reads them again from the start
        self.resyncs: list[str] = list(resume_state.get("resync") or []) if resume_state else []
        # table -> the WAL position the stream must have covered before it is read again: where the server stood
        # when the rewrite was found (the storage is read as it is now: a rewrite found at an earlier drift may come
        # later in the WAL, and reading before the stream passed it would miss it)
        self.resync_after: dict[str, int] = dict(resume_state.get("resync_after") or {}) if resume_state else {}
        self.resync_reader: PartReader | None = None
        # a little WAL while the slot is idle (source option heartbeat); not in a run-once worker, whose stream
        # must go quiet to end
        self.heartbeat = Heartbeat(opts, self.flow_id) if opts.heartbeat != "off" and \
            src.max_empty_reads is None else None
        self.resync_rows = 0
        # a table without a key is replaced, as of an exact snapshot (a temporary slot's exported snapshot, held
        # open by resync_export while it is read): the stream then skips that table's changes committed before
        # the snapshot's consistent point (skip_before: table -> that LSN, kept in the snapshot until covered)
        self.resync_export: ExportedSnapshot | None = None
        self.skip_before: dict[str, int] = dict(resume_state.get("skip_before") or {}) if resume_state else {}
        self.last_commit_us: int | None = None  # commit time of the last change emitted (the lag gauges)
        self.wal_end = covered  # the server's WAL end as last reported (the lag gauges)
        watch_source(self)
        log.info("source %s: resuming at %s (covered %s)", opts.slot, position, format_lsn(covered),
                 extra={"flow": self.flow_id})

    # -- connection -----------------------------------------------------------------------
    def _open(self) -> None:
        batcher = Batcher(self.flow_id, self.opts.batch_size, self.resolver, self.position, self.proto_version,
                          ddl_prefix=self.opts.ddl_message_prefix, known=dict(self.shapes),
                          drift=not self.opts.capture_ddl, keep_wal=self.src.keep_wal,
                          leave_out=own_table(self.opts))
        stream = ReplicationStream(self.opts.dsn, self.opts.slot, self.opts.publication, self.proto_version,
                                   self.covered, self.flow_id,
                                   binary=binary_mode(self.opts.binary, self.src.keep_wal, self.opts.resolve_types))
        self.resolver.utf8_valid = stream.utf8_valid  # before the reader resolves any Relation message
        self.reader = StreamReader(stream, batcher, covered=self.covered, confirmed=self.confirmed,
                                   status_interval=self.opts.status_interval, batch_timeout=self.opts.batch_timeout,
                                   stop_at_lsn=self.src.stop_at_lsn, name=self.opts.slot)
        self.reader.start()
        log.info("source %s: streaming from %s (protocol %d)", self.opts.slot, format_lsn(self.covered),
                 self.proto_version, extra={"flow": self.flow_id})

    def _stop_reader(self) -> None:
        """Stop reading: what the reader built but was not emitted is read again from ``covered``."""
        if self.reader is not None:
            self.reader.stop()
            self.reader = None

    def _lost(self, exc: Exception) -> None:
        """The stream broke: drop what was not emitted; it will be sent again from `covered`."""
        self._stop_reader()
        self.reconnect_at = time.monotonic() + self.backoff
        log.warning("source %s: %s; reconnecting in %.1fs", self.opts.slot, exc, self.backoff,
                    extra={"flow": self.flow_id})
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def _ensure_stream(self) -> bool:
        if self.reader is not None:
            return True
        if time.monotonic() < self.reconnect_at:
            return False
        try:
            self._open()
            return True
        except SourceError as exc:
            if getattr(exc, "transient", False):
                self._lost(exc)
                return False
            raise
        except psycopg.Error as exc:
            if is_transient(exc):
                self._lost(exc)
                return False
            raise

    # -- status -------------------------------------------------------------------------
    def _fence(self) -> None:
        """Stop here if a newer worker of this flow took over (before the slot or the checkpoint moves)."""
        if self.src.generation is not None and self.src.flows is not None:
            self.src.flows.check_generation(self.flow_id, self.src.generation)

    def _confirm(self, lsn: int) -> None:
        self._fence()
        if lsn <= self.confirmed:
            return
        check = self.check
        if self.src.checkpoints is not None:  # first: the store is never behind the slot
            self.src.checkpoints.put(Checkpoint(self.flow_id, self.opts.slot, lsn, self.snapshot_position,
                                                time.time(), check.current if check else None),
                                     generation=self.src.generation)
            if check is not None and check.reset and not self.resets_cleared:
                self.src.checkpoints.clear_resets(self.flow_id, check.reset)  # in effect: every writer took it
                self.resets_cleared = True
        self.confirmed = lsn
        if self.reader is not None:
            self.reader.confirmed = lsn  # the reader reports it to the server at once

    # -- bytewax ------------------------------------------------------------------------
    def next_batch(self) -> list[tuple[str, ChangeBatch]]:
        out = self._next_batch()
        if out:
            self.emitted = True
        return out

    def _next_batch(self) -> list[tuple[str, ChangeBatch]]:
        if self.to_confirm is not None:  # the epoch of the last snapshot is durable
            self._confirm(self.to_confirm)
            self.to_confirm = None
        if STOP.is_set() and not self.done:
            log.info("source %s: stop requested, stopping after the final checkpoint", self.opts.slot,
                     extra={"flow": self.flow_id})
            self.done = True
        if self.done:
            if not self.emitted:
                # Nothing handed on since the last durable epoch (confirmed just above, or earlier): no epoch to
                # wait for. What the stream covered since holds nothing for the flow, so the slot may move past it.
                if self.covered > self.confirmed:
                    self._confirm(self.covered)
                self.close()
                raise StopIteration()
            if _AFTER_RUN is not None:  # bytewax snapshots the last epoch at the end of input: confirmed after
                self.ending = True
                _AFTER_RUN.append(self)
                raise StopIteration()
            self._pause(0.05)
            return []
        if self.resyncs and (self.resync_reader is not None
                             or self.covered >= self.resync_after.get(self.resyncs[0], 0)):
            return self._resync_step()
        if self.held is not None and not self._release():
            return []
        if not self._ensure_stream():
            self._pause(max(0.0, self.reconnect_at - time.monotonic()))
            return []
        before = self.position
        out: list[tuple[str, ChangeBatch]] = []
        reader = self.reader
        assert reader is not None

        tail = False  # the last batch taken was cut with nothing more waiting in the stream (ChangeBatch.caught_up)

        def on_batch(batch: ChangeBatch, covered: int) -> None:
            nonlocal tail
            tail = batch.caught_up
            out.append((self.key, batch))
            self.position = batch.position
            self.covered = max(self.covered, covered)

        def on_covered(covered: int) -> None:
            self.covered = max(self.covered, covered)

        err = drain(reader, DRAIN_ITEMS, IDLE_POLL, on_batch, on_covered)
        if self.skip_before:
            out = self._skip_replaced(out)
        if self.part.index:  # every slot decodes every logical message: the first slot passes them on, once
            out = [(k, _without_messages(b)) for k, b in out]
        if any(isinstance(s, Event) and s.op == OP_DDL for _, b in out for s in b.segments):
            out = self._gate(out, before)
        for _, b in out:
            self._note_shapes(b.segments)
            if self.src.resync:
                self._plan_resync(b)
        if err is not None and self.reader is not None:
            if isinstance(err, StreamClosed):
                self._lost(err)
            elif isinstance(err, DecodeError):
                raise SourceError(f"cannot decode the replication stream of slot {self.opts.slot!r}: {err}",
                                  server=self.server) from err
            else:
                raise err
        elif out:
            self.backoff = BACKOFF_FIRST
        if out:
            self.last_commit_us = last_commit_us(out[-1][1]) or self.last_commit_us
            # The filters above may have rebuilt the last batch: it is caught up when the stream had nothing more
            # and the reader has handed nothing since.
            key, last = out[-1]
            caught_up = tail and err is None and reader.queue.empty()
            if last.caught_up != caught_up:
                out[-1] = (key, dataclasses.replace(last, caught_up=caught_up))
        self._after_drain(out)
        return out

    def _after_drain(self, out: list[tuple[str, ChangeBatch]]) -> None:
        now = time.monotonic()
        if self.heartbeat is not None and self.reader is not None and not out:
            self.heartbeat.maybe(self.reader.last_activity, now)
        if self.src.stop_at_lsn is not None and self.covered >= self.src.stop_at_lsn and not self.done:
            log.info("source %s: reached %s, stopping after the final checkpoint", self.opts.slot,
                     format_lsn(self.src.stop_at_lsn), extra={"flow": self.flow_id})
            self.done = True
        self._pause(0)
        if out or self.reader is None or self.resyncs:  # a table still to read again is not idle
            self.empty_reads = 0
            if out and self.quiet_target is not None and self.reader is not None:
                self.quiet_target = None
                self.reader.want_covered(None)
            return
        idle_since = max(self.reader.last_activity, self.last_empty)
        window = self.opts.batch_timeout if self.src.max_empty_reads is None else \
            min(self.opts.batch_timeout, RUN_ONCE_EMPTY_READ)
        if now - idle_since < window or self.reader.received > self.reader.covered:
            return  # data came lately, or the server reported WAL not read yet (a long transaction being decoded)
        # An empty read: a whole window with no WAL data, and everything the server reported is covered.
        self.last_empty = now
        if self.opts.emit_empty:
            out.append((self.key, ChangeBatch(self.flow_id, [], self.position)))
        if self.src.max_empty_reads is not None:
            if self.quiet_target is None:
                self.quiet_target = _wal_end(self.opts.dsn, self.server, flushed=True)
            if self.reader.covered < self.quiet_target:
                self.reader.want_covered(self.quiet_target)
                return  # the server has WAL the stream has not covered yet: not the end of it
            self.empty_reads += 1
            if self.empty_reads >= self.src.max_empty_reads and not self.reader.holding:
                log.info("source %s: %d empty reads, stopping after the final checkpoint", self.opts.slot,
                         self.empty_reads, extra={"flow": self.flow_id})
                self.done = True

    # -- resync of a rewritten table --------------------------------------------------------
    def _plan_resync(self, batch: ChangeBatch) -> None:
        """A table rewritten with a new shape (its stored values changed with no row change) is read again once
        what came with it is emitted. Keyed: upserted after the changes before it, the rows as of a snapshot taken
        now are right for every key; the stream then applies again what changed since (it converges). Without a
        key (a reread would add rows twice): replaced, as of an exact snapshot (:meth:`_resync_step`)."""
        for seg in batch.segments:
            if not (isinstance(seg, Event) and seg.op == OP_DDL and seg.payload.get("rewritten") and seg.tables):
                continue
            t = seg.tables[0]
            if t.qualified not in self.resyncs:
                self.resyncs.append(t.qualified)
            if not (self.resync_reader is not None and self.resyncs[0] == t.qualified):
                self.resync_after[t.qualified] = max(self.resync_after.get(t.qualified, 0),
                                                     _wal_end(self.opts.dsn, self.server))

    def _resync_step(self) -> list[tuple[str, ChangeBatch]]:
        """One chunk of the table being read again (a batch of ``read`` rows, a snapshot mark ``resync:<table>``)."""
        table = self.resyncs[0]
        replace: Event | None = None
        if self.resync_reader is None:
            snapshot, lsn = None, self.position.lsn
            if self._keyless(table):
                # exact: the table as of a temporary slot's consistent point L; the destinations empty it first (a
                # truncate), and the stream skips its changes committed before L (they are in the snapshot)
                export: list[ExportedSnapshot] = []
                create_slot(self.opts.dsn, f"{self.opts.slot[:48]}_resync", self.flow_id, export, temporary=True)
                if not export:
                    raise SourceError(f"could not take a snapshot to replace {table} (rewritten at the source, no"
                                      f" key): the temporary slot gave none", server=self.server)
                self.resync_export = export[0]
                snapshot, lsn = export[0].name, export[0].lsn
                self.skip_before[table] = lsn
            reader = PartReader(self.opts.dsn, Part(table, 0, 1, 0, None), self.opts.publication,
                                snapshot=snapshot, snapshot_lsn=lsn, snapshot_ts=int(time.time() * 1_000_000),
                                flow_id=self.flow_id)
            self.resync_reader, self.resync_rows = reader, 0
            if snapshot is not None:
                replace = Event(OP_TRUNCATE, Position(lsn, 0), int(time.time() * 1_000_000), 0,
                                (reader.state.schema,), {"resync": "replace"})
            log.info("source %s: reading %s again (rewritten at the source%s)", self.opts.slot, table,
                     f"; no key: replaced as of {format_lsn(lsn)}" if snapshot else "", extra={"flow": self.flow_id})
        batch, chunk, rows = self.resync_reader.next_batch(self.flow_id, f"resync:{table}", self.resync_rows)
        if replace is not None:
            batch = ChangeBatch(batch.flow_id, [replace, *batch.segments], batch.position, snapshot=batch.snapshot)
        self.resync_rows += rows
        if chunk.done:
            self.resync_reader.close()
            self.resync_reader = None
            if self.resync_export is not None:
                self.resync_export.close()  # the temporary slot goes with it
                self.resync_export = None
            self.resync_after.pop(self.resyncs.pop(0), None)
            log.info("source %s: %s read again (%d rows)", self.opts.slot, table, self.resync_rows,
                     extra={"flow": self.flow_id})
        return [(self.key, batch)]

    def _keyless(self, table: str) -> bool:
        shape = next((t for t in self.shapes.values() if t.qualified == table), None)
        return shape is not None and (shape.replica_identity == "f" or not shape.key_names)

    def _skip_replaced(self, out: list[tuple[str, ChangeBatch]]) -> list[tuple[str, ChangeBatch]]:
        """Drop the changes of a replaced table committed before its snapshot's consistent point (the snapshot
        holds them); forget a table once the stream has passed that point."""
        kept_out = []
        for key, batch in out:
            segments = []
            for seg in batch.segments:
                tables = (seg.table,) if isinstance(seg, TableChanges) else seg.tables
                cut = max((self.skip_before.get(t.qualified, 0) for t in tables), default=0)
                if isinstance(seg, TableChanges) and cut and seg.first.lsn < cut:
                    lsns = seg.rows.column(LSN_COL)
                    later = seg.rows.filter(pc.greater_equal(lsns, pa.scalar(cut, lsns.type)))
                    if later.num_rows:
                        segments.append(TableChanges(seg.table, later))
                elif not isinstance(seg, TableChanges) and cut and seg.position.lsn < cut:
                    continue
                else:
                    segments.append(seg)
            kept_out.append((key, ChangeBatch(batch.flow_id, segments, batch.position, snapshot=batch.snapshot)))
        for table, lsn in list(self.skip_before.items()):
            if self.covered >= lsn:
                del self.skip_before[table]
        return kept_out

    # -- DDL gate ---------------------------------------------------------------------------
    def _gate(self, out: list[tuple[str, ChangeBatch]], before: Position) -> list[tuple[str, ChangeBatch]]:
        """Apply the DDL gate to the batches of one pump: drop rejected DDL; cut at a held one."""
        emitted: list[tuple[str, ChangeBatch]] = []
        last = before
        for key, batch in out:
            kept: list = []
            for seg in batch.segments:
                if isinstance(seg, Event) and seg.op == OP_DDL:
                    decision = self.gate.decide(seg)
                    if decision == HOLD:
                        if kept:
                            emitted.append((key, ChangeBatch(self.flow_id, kept, _last_position(kept))))
                            last = _last_position(kept)
                        self._hold(seg, last)
                        return emitted
                    if decision == DROP:
                        self._note_shapes([seg])  # decided: the new shape is the baseline from here on
                        log.info("source %s: DDL at %s rejected: not passed on", self.opts.slot, seg.position,
                                 extra={"flow": self.flow_id})
                        continue
                kept.append(seg)
            if kept:
                emitted.append((key, ChangeBatch(self.flow_id, kept, batch.position)))
            last = batch.position
        return emitted

    def _note_shapes(self, segments: list) -> None:
        for seg in segments:
            for t in (seg.table,) if isinstance(seg, TableChanges) else seg.tables:
                before = self.shapes.get(t.relid)
                if before is t:  # the usual case: the shape of the batch before
                    continue
                # a shape keeps the storage it was first seen with, unless a column was dropped and added alike
                if before is None or not before.same_shape(t) or t.storage_moved(before):
                    self.shapes[t.relid] = t

    def _hold(self, ev: Event, last: Position) -> None:
        """Stop before ``ev``: emitted up to ``last``; the DDL's transaction is read again on release."""
        self.held, self.held_check = ev, time.monotonic()
        self.position = last
        self.covered = min(self.covered, ev.position.lsn)  # below the DDL's commit: all emitted
        self._stop_reader()
        log.warning("source %s: holding at %s for a DDL awaiting approval", self.opts.slot, ev.position,
                    extra={"flow": self.flow_id})

    def _release(self) -> bool:
        """While held: look at the DDL's record now and then; True once the flow may go on."""
        now = time.monotonic()
        if now - self.held_check < POLL_SECONDS:
            self._pause(POLL_SECONDS - (now - self.held_check))
            return False
        self.held_check = now
        assert self.held is not None
        if self.gate.decide(self.held) == HOLD:
            self._pause(POLL_SECONDS)
            return False
        log.info("source %s: DDL at %s decided; streaming again", self.opts.slot, self.held.position,
                 extra={"flow": self.flow_id})
        self.held = None
        return True

    def _pause(self, seconds: float) -> None:
        self.next_wake = datetime.now(UTC) + timedelta(seconds=seconds) if seconds > 0 else None

    def next_awake(self) -> datetime | None:
        return self.next_wake

    def metrics_view(self) -> tuple[str, int, int, int | None, bool]:
        """What the lag gauges read when metrics are collected (:mod:`wallaby.core.metrics`, another thread): the
        slot, the server's WAL end, the confirmed LSN, the commit time of the last change emitted, and whether
        everything the server reported is read and handed over."""
        reader = self.reader
        if reader is not None:
            self.wal_end = max(self.wal_end, reader.received)
        caught_up = reader is not None and self.held is None and not self.resyncs and not reader.holding and \
            reader.covered >= reader.received
        return self.opts.slot, max(self.wal_end, self.covered), self.confirmed, self.last_commit_us, caught_up

    def snapshot(self) -> dict:
        self.to_confirm = self.covered
        self.emitted = False
        self.snapshot_position = self.position
        check = self.check
        return {"position": self.position.to_state(), "covered": self.covered, "shapes": shapes_to_state(self.shapes),
                "source": check.current.to_json() if check else None, "resync": list(self.resyncs),
                "skip_before": dict(self.skip_before), "resync_after": dict(self.resync_after)}

    def finish(self, confirm: bool) -> None:
        """The end of a partition that ended its input early (:func:`confirms_after_run`): its last epoch confirmed
        when ``confirm`` (the dataflow completed: every destination committed it), then closed."""
        self.ending = False
        try:
            if confirm and self.to_confirm is not None:
                self._confirm(self.to_confirm)
                self.to_confirm = None
        finally:
            self.close()

    def close(self) -> None:
        if self.ending:  # the replication connection confirms the last epoch when the run ends (finish)
            return
        if self.heartbeat is not None:
            self.heartbeat.close()
        self._stop_reader()
        if self.resync_reader is not None:
            self.resync_reader.close()
        if self.resync_export is not None:
            self.resync_export.close()
        self.resolver.close()


def shapes_to_state(shapes: dict[int, TableSchema]) -> list:
    """Relation shapes for a snapshot: what schema drift is judged by (names, types, keys)."""
    return [[t.relid, t.schema, t.name, t.replica_identity, t.version,
             [[c.name, c.type_oid, c.type_name, c.typmod, c.key] for c in t.columns], t.filenode, t.storage_after,
             t.dropped, list(t.attnums) if t.attnums is not None else None]
            for t in shapes.values()]


def shapes_from_state(state: list | None) -> dict[int, TableSchema]:
    out: dict[int, TableSchema] = {}
    for relid, schema, name, ri, version, cols, *rest in state or []:  # rest: the storage (none before 0.1.0)
        out[relid] = TableSchema(relid, schema, name, tuple(Column(n, oid, tn, mod, key) for n, oid, tn, mod, key
                                                             in cols), ri, version,
                                 filenode=rest[0] if rest else None, storage_after=bool(rest[1:] and rest[1]),
                                 dropped=rest[2] if rest[2:] else None,
                                 attnums=tuple(rest[3]) if rest[3:] and rest[3] is not None else None)
    return out


def _without_messages(batch: ChangeBatch) -> ChangeBatch:
    if not any(isinstance(seg, Event) and seg.op == OP_MESSAGE for seg in batch.segments):
        return batch
    kept = [seg for seg in batch.segments if not (isinstance(seg, Event) and seg.op == OP_MESSAGE)]
    return ChangeBatch(batch.flow_id, kept, batch.position, snapshot=batch.snapshot)


def _last_position(segments: list) -> Position:
    s = segments[-1]
    return s.position if isinstance(s, Event) else s.last


def _server_version(dsn: str) -> int:
    with connect(dsn) as conn:
        return conn.info.server_version


def _wal_end(dsn: str, server: str, *, flushed: bool = False) -> int:
    """The server's WAL position now: where it inserts, or (``flushed``) what it has flushed, which is what a
    walsender can send; a standby's: what it has replayed."""
    now = "pg_current_wal_flush_lsn()" if flushed else "pg_current_wal_lsn()"
    try:
        with connect(dsn) as conn:
            row = conn.execute(f"SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE {now} END"
                               "::text").fetchone()
    except psycopg.Error as exc:
        raise SourceError(f"could not read the WAL position of {server}: {exc}", server=server) from exc
    return parse_lsn(row[0]) if row and row[0] else 0


def _slot_confirmed(dsn: str, slot: str) -> int | None:
    with connect(dsn) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
    return parse_lsn(row[0]) if row and row[0] else None
