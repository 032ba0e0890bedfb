"""The backfill dataflow: what the flow's tables already hold, read in parts, through the flow's destinations.

``wallaby-worker -mode backfill [-tables s.t,...] [-snapshot-workers N] [-partition-count K] [-partition-column C]``
builds it (so does ``python -m bytewax.run dataflows.backfill:flow`` with ``WALLABY_FLOW_FILE`` / ``WALLABY_FLOW_ID``
and ``WALLABY_BACKFILL_TABLES``, the source option ``partition_column`` for the column). Its input partitions are the
(table, part) pairs of :mod:`sources.postgres.snapshot` (ranges of heap blocks, or of the partition column's values);
its rows are changes of op ``read`` and go through the same metadata rewrite, wire formats and destinations as
streamed changes (:func:`dataflows.flow.output_destinations`).

The hand-off to streaming (docs/ARCHITECTURE.md "Backfill"): before anything is read, the flow's publication and
slot are made to exist (the same preparation as streaming, so the slot's consistent point C comes first); then one
snapshot S (``pg_export_snapshot()`` in a REPEATABLE READ transaction held open for the run, at WAL position L >= C)
is imported by every part (``snapshot_consistent=true``). Every change committed after C is in the slot, every row
as of S in the backfill: nothing falls between. Changes committed between C and S are in both; streaming applies
them after the backfill, so a keyed table in target mode passes through older values for a moment and ends equal
to the source (a row's last change wins). Keyless tables and append mode see those changes twice: backfill them
before their writers start, or land them in staging and resolve with ``replace``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from bytewax import operators as op
from bytewax.dataflow import Dataflow

from dataflows.buildable import BACKFILL_DESTINATIONS, check_buildable
from dataflows.flow import entry_flow, output_destinations, spec_from_env
from dataflows.positions import RECOVERY_SOURCE_FILE, Start, open_recovery, prepare_start
from dataflows.preflight import preflight
from sources.postgres.connection import connect, server_name
from sources.postgres.own_tables import own_table
from sources.postgres.pgscan import warm
from sources.postgres.setup import publication_columns, qualified_table, split_table
from sources.postgres.snapshot import (
    KeyColumn,
    Part,
    key_column,
    plan_key_parts,
    plan_parts,
    publication_tables,
    relation_blocks,
)
from sources.postgres.snapshot_source import Progress, SnapshotSource
from sources.postgres.snapshot_state import NoSnapshotState, SnapshotState, open_snapshot_state
from wallaby.core.changes import ChangeBatch, SnapshotMark, parse_lsn
from wallaby.core.errors import ConfigError, FieldProblem, SourceError
from wallaby.core.identity import SourceCheck, SourceIdentity
from wallaby.core.options import did_you_mean
from wallaby.core.spec import FlowSpec
from wallaby.state.checkpoints import open_store

log = logging.getLogger("wallaby.backfill")

@dataclass
class Snapshot:
    """The snapshot a backfill reads (None name: each part reads its own), and the connection that holds it."""

    name: str | None
    lsn: int
    ts_us: int
    conn: psycopg.Connection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def export_snapshot(dsn: str, flow_id: str, consistent: bool) -> Snapshot:
    """One snapshot for every part (``pg_export_snapshot()`` in a REPEATABLE READ transaction kept open until
    :meth:`Snapshot.close`), or with ``consistent=False`` just the current WAL position and time."""
    conn = connect(dsn, application_name=f"wallaby-backfill:{flow_id}")
    try:
        if consistent:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            name, lsn, ts = conn.execute("SELECT pg_export_snapshot(), pg_current_wal_lsn()::text,"
                                         " (extract(epoch FROM now()) * 1000000)::bigint").fetchone()
            return Snapshot(name, parse_lsn(lsn), int(ts), conn)
        lsn, ts = conn.execute("SELECT pg_current_wal_lsn()::text,"
                               " (extract(epoch FROM now()) * 1000000)::bigint").fetchone()
        conn.close()
        return Snapshot(None, parse_lsn(lsn), int(ts))
    except psycopg.Error as exc:
        conn.close()
        raise SourceError(f"could not take the backfill's snapshot: {exc}", server=server_name(dsn)) from None


def _now_us(dsn: str) -> int:
    with connect(dsn) as conn:
        return int(conn.execute("SELECT (extract(epoch FROM now()) * 1000000)::bigint").fetchone()[0])


def check_backfill(spec: FlowSpec) -> None:
    """What a backfill of ``spec`` cannot do in this version, refused by name before anything is created."""
    problems = []
    for i, dest in enumerate(spec.destinations):
        if dest.type not in BACKFILL_DESTINATIONS:
            problems.append(FieldProblem(f"destinations[{i}].type", f"a backfill into {dest.type!r} is not available"
                                         f" in this version (backfill writes to: {', '.join(BACKFILL_DESTINATIONS)});"
                                         " stream into it, or backfill with a flow of the other destinations"))
    if spec.config.ack_policy == "primary":
        problems.append(FieldProblem("config.ack_policy", "a backfill writes every destination at once; use"
                                     " ack_policy=all for the backfill run"))
    if problems:
        raise ConfigError(f"flow {spec.name or spec.id!r} (backfill)", problems)


def backfill_tables(spec: FlowSpec, conn: psycopg.Connection, tables: list[str] | None) -> list[str]:
    """The tables to backfill: ``tables`` (each must be in the flow's publication) or all the publication's but
    wallaby's own (sources/postgres/own_tables.py)."""
    opts = spec.source_options()
    published = publication_tables(conn, opts.publication)
    if not tables:
        own = own_table(opts)
        published = [t for t in published if not own(*split_table(t))]
        if not published:
            raise ConfigError("backfill", [FieldProblem("-tables", f"publication {opts.publication!r} has no tables"
                                                                    " to backfill")])
        return published
    wanted = [".".join(split_table(t.strip())) for t in tables if t.strip()]
    outside = [t for t in wanted if t not in published]
    if outside:
        raise ConfigError("backfill", [FieldProblem(
            "-tables", f"{t} is not in the flow's publication {opts.publication!r}"
            f"{did_you_mean(t, published) or ' (published: ' + (', '.join(published) or 'none') + ')'};"
            " add it (wallaby-admin publication sync) or leave it out") for t in outside])
    return list(dict.fromkeys(wanted))


# Where a partition column comes from, for the errors that name it (wallaby-worker -partition-column says so itself).
PARTITION_COLUMN_OPTION = "source.options.partition_column"


def key_columns(conn: psycopg.Connection, tables: list[str], column: str, field: str) -> dict[str, KeyColumn]:
    """``column`` in each of ``tables`` that has it (the others are left out: their parts are block ranges). One
    :class:`ConfigError` naming table and column when none of them has it, or when its type has no btree ordering in
    one of them (json, point, xml...)."""
    found: dict[str, KeyColumn] = {}
    problems, missing = [], []
    for t in tables:
        key = key_column(conn, t, column)
        if key is None:
            missing.append(t)
        elif not key.orderable:
            problems.append(FieldProblem(field, f"{t}.{column} is of type {key.type}, which has no btree ordering:"
                                                f" {t} cannot be split in ranges of it; name a sortable column"
                                                " (integers, uuid, text, timestamps...) or leave it out (ranges of"
                                                " heap blocks)"))
        else:
            found[t] = key
    if missing and not found and not problems:
        hint = ""
        if len(missing) == 1:
            names = [r[0] for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (qualified_table(missing[0]),)).fetchall()]
            hint = did_you_mean(column, names)
        problems.append(FieldProblem(field, f"table {missing[0]} has no column {column!r}{hint}" if len(missing) == 1
                                     else f"none of the tables to backfill has a column {column!r}"
                                          f" ({', '.join(missing)})"))
    if problems:
        raise ConfigError("backfill", problems)
    return found


def check_partition_column(spec: FlowSpec, tables: list[str] | None, column: str, field: str) -> None:
    """Before anything is created (the publication, the slot): ``column`` judged by :func:`key_columns` in the
    tables a backfill would read as far as they are known now: ``tables``, else the publication's and those the
    source options name. :func:`plan` judges the tables it finds again."""
    opts = spec.source_options()
    with connect(opts.dsn, application_name=f"wallaby-backfill:{spec.id}") as conn:
        known = {t for t, cols in publication_columns(conn, opts).items() if cols}  # the ones that exist
        if tables:
            wanted = [".".join(split_table(t.strip())) for t in tables if t.strip()]
            known = {t for t in wanted if t in known or conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (qualified_table(t),)).fetchone()[0]}
        if known:
            key_columns(conn, sorted(known), column, field)


def plan(spec: FlowSpec, tables: list[str] | None, count: int | None, column: str | None = None,
         field: str = PARTITION_COLUMN_OPTION) -> list[Part]:
    """Every part of every table to backfill (``count`` parts per table, default the source's
    ``partition_count``): ranges of heap blocks, or with ``column`` ranges of its values (a table without that
    column: block ranges, with a warning)."""
    opts = spec.source_options()
    per_table = count or opts.partition_count
    with connect(opts.dsn, application_name=f"wallaby-backfill:{spec.id}") as conn:
        names = backfill_tables(spec, conn, tables)
        if not column:
            return [p for t in names for p in plan_parts(conn, t, per_table)]
        keys = key_columns(conn, names, column, field)
        parts: list[Part] = []
        for t in names:
            key = keys.get(t)
            if key is None:
                log.warning("backfill %s: no column %r: its %d parts are ranges of heap blocks", t, column,
                            per_table, extra={"flow": spec.id})
                parts += plan_parts(conn, t, per_table)
                continue
            planned, method = plan_key_parts(conn, t, per_table, key)
            ranges = [p for p in planned if not p.nulls]
            log.info("backfill %s: %d ranges of %s%s%s", t, len(ranges), column,
                     f" (split points from {method}: {', '.join(repr(p.hi) for p in ranges[:-1])})"
                     if len(ranges) > 1 else "",
                     "" if key.not_null else f", and a part for the rows where {column} is NULL",
                     extra={"flow": spec.id})
            if not key.indexed:
                log.warning("backfill %s: no btree index leads with %s: every chunk of its key ranges scans the"
                            " table (index the column, or leave partition_column out for ranges of heap blocks)",
                            t, column, extra={"flow": spec.id})
            parts += planned
        return parts


def table_blocks(dsn: str, tables: set[str]) -> dict[str, int]:
    """Each table's size in heap blocks now (what its progress counts to; 0 for a table dropped since the plan:
    its parts end empty, docs/backfill.md)."""
    with connect(dsn) as conn:
        return {t: relation_blocks(conn, t) if conn.execute("SELECT to_regclass(%s)", (qualified_table(t),)
                                                            ).fetchone()[0] is not None else 0
                for t in sorted(tables)}


class ProgressWriter:
    """A destination's writer that records, once the destination committed, how far each part got in it
    (the snapshot state store): the marks of the batches it wrote since its last commit."""

    def __init__(self, flow_id: str, name: str, inner: Any, state: SnapshotState):
        self.flow_id, self.name, self.inner, self.state = flow_id, name, inner, state
        self.WHOLE_BATCHES = getattr(inner, "WHOLE_BATCHES", False)
        self.marks: dict[str, SnapshotMark] = {}

    def write(self, batch: ChangeBatch) -> None:
        self.inner.write(batch)
        if batch.snapshot is not None:
            self.marks[batch.snapshot.part] = batch.snapshot

    def commit(self) -> Any:
        state = self.inner.commit()
        if self.marks:
            self.state.record(self.flow_id, self.name, list(self.marks.values()))
            self.marks.clear()
        return state

    def flush(self) -> None:
        self.inner.flush()  # progress is recorded at the commit only (a flush may make nothing durable)

    def close(self) -> None:
        self.inner.close()


def build_backfill(spec: FlowSpec, parts: list[Part], snapshot: Snapshot, start: Start | None = None,
                   progress: Progress | None = None, state: SnapshotState | None = None,
                   starts: dict[str, dict] | None = None, readers: int | None = None) -> Dataflow:
    """The backfill dataflow of ``spec`` over ``parts``, reading ``snapshot``; ``progress`` is told how far
    each table is (default: structured log lines); ``state`` records each destination's progress after its
    commits; ``starts``: where parts go on when the recovery store has nothing for them; ``readers``: parts read
    at once per process (default: the source option ``snapshot_workers``)."""
    check_buildable(spec)
    check_backfill(spec)
    opts = spec.source_options()
    progress = progress or Progress(spec.id)
    progress.plan(parts, table_blocks(opts.dsn, {p.table for p in parts}))
    flow = Dataflow(f"wallaby-backfill-{spec.id}")
    source = SnapshotSource(spec.id, opts.dsn, opts.publication, parts, snapshot=snapshot.name,
                            snapshot_lsn=snapshot.lsn, snapshot_ts=snapshot.ts_us, progress=progress, starts=starts,
                            readers=readers or opts.snapshot_workers)
    rows = op.input("snapshot", flow, source)
    wrap = None
    if state is not None and not isinstance(state, NoSnapshotState):
        def wrap(name: str, make: Any) -> Any:
            return lambda resume_state: ProgressWriter(spec.id, name, make(resume_state), state)
    output_destinations(spec, rows, start.check if start is not None else None, wrap)
    return flow


PLAN_FILE = "wallaby-backfill-plan.json"


def _same_source(rdir: Path, check: SourceCheck) -> bool:
    """Whether the recovery store ``rdir`` was written reading this source (same cluster and database)."""
    try:
        stored = SourceIdentity.from_json((rdir / RECOVERY_SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stored is not None and (stored.system_id, stored.database) == (check.current.system_id,
                                                                          check.current.database)


def _load_plan(rdir: Path) -> list[Part] | None:
    try:
        return [Part(**p) for p in json.loads((rdir / PLAN_FILE).read_text())]
    except (OSError, ValueError, TypeError):
        return None


def _save_plan(rdir: Path, parts: list[Part]) -> None:
    tmp = rdir / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps([dataclasses.asdict(p) for p in parts]))
    tmp.replace(rdir / PLAN_FILE)


def prepare_backfill(spec: FlowSpec, checkpoints, tables: list[str] | None, count: int | None, *,
                     reset_all: bool = False, recovery_dir: Path | None = None,
                     progress: Progress | None = None, readers: int | None = None, column: str | None = None
                     ) -> tuple[Dataflow, Snapshot, list[Part]]:
    """Preflight, the flow's source prepared (publication, slot: before the snapshot), the snapshot, the plan.
    With ``recovery_dir`` (the backfill's bytewax recovery store), an unfinished backfill of this source found there
    resumes with the parts it planned first (a part's resume point is a block of its own range, or the last key it
    read). ``column`` (``-partition-column``, default the source option ``partition_column``): parts are ranges of
    its values; checked before anything is created."""
    warm(any(d.type in ("duckdb", "ducklake") for d in spec.destinations))  # loads while the flow is set up
    preflight(spec)
    check_backfill(spec)
    opts = spec.source_options()
    field = "-partition-column" if column else PARTITION_COLUMN_OPTION
    column = column or opts.partition_column
    if column:
        check_partition_column(spec, tables, column, field)
    start = prepare_start(spec, checkpoints, reset_all=reset_all, export=opts.snapshot_consistent)
    stored = None
    if recovery_dir is not None:
        keep = not reset_all and _same_source(recovery_dir, start.check)
        open_recovery(recovery_dir, start.check, keep)
        stored = _load_plan(recovery_dir) if keep else None
    state = open_snapshot_state(opts)
    kept = None if reset_all else state.load(spec.id)
    starts: dict[str, dict] = {}
    if kept is not None and not kept.finished and kept.parts:
        stored = stored or kept.parts
        names = [d.name for d in spec.destinations]
        for p in stored:
            point = kept.resume_point(p, names)
            if point is not None:
                starts[p.key] = {"next": point.next_block, "rows": point.rows, "done": point.done,
                                 "key": point.next_key}
    if start.plan.snapshot is not None:  # the slot was created now, in this snapshot: the hand-off is exact
        exported = start.plan.snapshot
        snapshot = Snapshot(exported.name, exported.lsn, _now_us(opts.dsn), exported.conn)
    else:
        snapshot = export_snapshot(opts.dsn, spec.id, opts.snapshot_consistent)
    try:
        if stored:
            parts = stored
            log.info("flow %s: resuming an unfinished backfill (%s)%s", spec.id,
                     ", ".join(sorted({p.table for p in parts})),
                     f"; {len(starts)} parts from the snapshot state" if starts else "", extra={"flow": spec.id})
            if (not any(p.column == column for p in parts)) if column else any(p.column for p in parts):
                log.warning("flow %s: the unfinished backfill goes on with the parts it planned first (partition"
                            " column %s), not by %s", spec.id, ", ".join(sorted({p.column for p in parts if p.column})),
                            repr(column) if column else "heap blocks", extra={"flow": spec.id})
        else:
            parts = plan(spec, tables, count, column, field)
            state.start(spec.id, parts)
            if recovery_dir is not None:
                _save_plan(recovery_dir, parts)
        log.info("flow %s: backfill of %d tables in %d parts from snapshot %s at %s", spec.id,
                 len({p.table for p in parts}), len(parts), snapshot.name or "(one per part)",
                 f"{snapshot.lsn >> 32:X}/{snapshot.lsn & 0xFFFFFFFF:X}", extra={"flow": spec.id})
        return build_backfill(spec, parts, snapshot, start, progress, state, starts, readers), snapshot, parts
    except BaseException:
        snapshot.close()
        raise


def flow_from_env() -> Dataflow:
    """The backfill dataflow for ``WALLABY_FLOW_FILE`` or ``WALLABY_FLOW_ID`` and ``WALLABY_BACKFILL_TABLES``
    (comma-separated; default: the publication's tables)."""
    checkpoints = open_store()
    spec, _ = spec_from_env(checkpoints, "dataflows.backfill")
    tables = [t for t in os.environ.get("WALLABY_BACKFILL_TABLES", "").split(",") if t.strip()] or None
    flow, snapshot, _parts = prepare_backfill(spec, checkpoints, tables, None)
    _HELD.append(snapshot)  # the snapshot's connection stays open as long as this process runs (not collected)
    return flow


# What bytewax.run's backfill holds for its whole run: the snapshot (its connection, hence the exported snapshot the
# parts import: closed when garbage-collected, and every part would then fail to import it).
_HELD: list[Snapshot] = []


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        globals()["flow"] = value = entry_flow(flow_from_env, "dataflows.backfill")
        return value
    raise AttributeError(name)


