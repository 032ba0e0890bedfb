"""What a flow's backfill has done (FlowService.GetBackfillStatus, ``wallaby-admin backfill status``).

Read from the flow's snapshot state store (:mod:`sources.postgres.snapshot_state`, the source option
``snapshot_state_backend``) without creating anything, and from the source's ``pg_stat_activity``: a backfill
worker's sessions carry ``application_name`` ``wallaby-backfill:<flow id>`` (its snapshot and its part readers), so a
backfill started anywhere (``wallaby-worker -mode backfill`` on another machine included) shows as running while it
reads. A backfill this server launched (``publication sync -snapshot``) counts as running from its launch.

Per table: the parts every destination has committed whole, the rows read (the least over the destinations; each
destination's own when they differ) and the times the store keeps. The backfill as a whole is ``running``,
``unfinished`` (stored, not finished, nothing reading it: killed or failed; the next ``-mode backfill`` resumes it),
``finished``, ``never ran``, or ``unknown`` with ``snapshot_state_backend=none`` (nothing kept: the worker's log is
where its progress is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sources.postgres.connection import connect, server_name
from sources.postgres.snapshot_state import BackfillTimes, FileSnapshotState, open_snapshot_state, read_backfill

NEVER_RAN, RUNNING, UNFINISHED, FINISHED, UNKNOWN = "never_ran", "running", "unfinished", "finished", "unknown"
# The application_name of a backfill worker's sessions (dataflows/backfill.py, sources/postgres/snapshot.py); the
# server keeps its first 63 bytes (NAMEDATALEN - 1).
SESSION_PREFIX = "wallaby-backfill:"


@dataclass
class PartStatus:
    part: str
    first_block: int
    end_block: int | None
    next_block: int  # the least over the destinations
    rows: int
    done: bool
    next_key: str | None = None  # a key-range part: the last key read


@dataclass
class TableStatus:
    table: str
    state: str
    parts_total: int
    parts_done: int
    rows: int  # the least over the destinations
    destinations: dict[str, tuple[int, int]]  # destination -> (rows, parts done)
    started_at: float | None = None
    updated_at: float | None = None
    parts: list[PartStatus] = field(default_factory=list)

    @property
    def destinations_differ(self) -> bool:
        return len(set(self.destinations.values())) > 1


@dataclass
class BackfillStatus:
    flow_id: str
    state: str
    backend: str
    location: str
    tables: list[TableStatus] = field(default_factory=list)
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    running_detail: str = ""
    note: str = ""


def session_name(flow_id: str) -> str:
    """The application_name a backfill worker of ``flow_id`` shows in pg_stat_activity (cut as the server cuts it)."""
    return (SESSION_PREFIX + flow_id).encode()[:63].decode("utf-8", "ignore")


def backfill_sessions(dsn: str, flow_id: str) -> int:
    """How many sessions of a backfill worker of ``flow_id`` the source has now (in the flow's database)."""
    with connect(dsn, application_name=f"wallaby-api:{flow_id}") as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                           " AND datname = current_database() AND pid <> pg_backend_pid()",
                           (session_name(flow_id),)).fetchone()
    return int(row[0])


def _location(opts) -> str:
    if opts.snapshot_state_backend == "none":
        return ""
    if opts.snapshot_state_backend == "file":
        return str(FileSnapshotState(opts.snapshot_state_path).path.resolve())
    return f"{opts.snapshot_state_schema}.{opts.snapshot_state_table} in {server_name(opts.dsn)}"


def backfill_status(flow_id: str, opts, destinations: list[str], *, launched: bool = False,
                    log_hint: str = "") -> BackfillStatus:
    """The status of flow ``flow_id``'s backfill: ``opts`` its source options, ``destinations`` its destinations'
    names (whose progress counts), ``launched`` whether this server runs a backfill worker of it now, ``log_hint``
    where such a worker logs."""
    backend = opts.snapshot_state_backend
    out = BackfillStatus(flow_id, NEVER_RAN, backend, _location(opts))
    stored, times = (None, BackfillTimes()) if backend == "none" else read_backfill(open_snapshot_state(opts), flow_id)
    sessions = backfill_sessions(opts.dsn, flow_id)
    running = launched or sessions > 0
    if sessions:
        out.running_detail = (f"{sessions} session{'s' if sessions != 1 else ''} {session_name(flow_id)!r} on"
                              f" {server_name(opts.dsn)}")
    elif launched:
        out.running_detail = "a backfill worker launched by this API server"
    logs = "the output (stderr) of the wallaby-worker -mode backfill that ran it"
    if log_hint:
        logs = f"{log_hint} for a backfill this API server launched, else {logs}"
    if backend == "none":
        out.state = RUNNING if running else UNKNOWN
        out.note = (f"snapshot_state_backend=none: no backfill state is kept for flow {flow_id!r}; its progress is in"
                    f" {logs}: a line per table at most every 10 s and one when the table is done ('backfill"
                    " schema.table: N rows ..., k of K parts done'), then 'backfill done'. Set snapshot_state_backend"
                    " to postgres or file to keep it")
        return out
    if stored is None:
        out.state = RUNNING if running else NEVER_RAN
        where = out.location if backend == "postgres" else f"{out.location} (as this API server reads it)"
        out.note = f"no backfill of flow {flow_id!r} is stored in {where}" + \
            ("; the running backfill has not planned its parts yet" if running else "")
        return out
    out.started_at, out.finished_at = times.started_at, times.finished_at
    out.state = RUNNING if running else FINISHED if stored.finished else UNFINISHED
    if running and stored.finished:
        out.note = "a new backfill is starting: the figures are the previous one's until it has planned its parts"
    elif out.state == UNFINISHED:
        out.note = (f"not finished and not running (killed or failed): `wallaby-worker -flow-id {flow_id} -mode"
                    " backfill` resumes it (finished parts are not read again); why it stopped is in " + logs)
    names = destinations or sorted(stored.progress)
    by_table: dict[str, list] = {}
    for part in stored.parts:
        by_table.setdefault(part.table, []).append(part)
    for table, parts in by_table.items():
        t = TableStatus(table, UNFINISHED, len(parts), 0, 0, {d: (0, 0) for d in names}, times.started_at,
                        times.updated_at.get(table))
        for part in parts:
            point = stored.resume_point(part, names)
            status = PartStatus(part.key, part.first_block, part.end_block,
                                point.next_block if point else part.first_block, point.rows if point else 0,
                                bool(point and point.done), getattr(point, "next_key", None))
            t.parts.append(status)
            t.parts_done += int(status.done)
            for d in names:
                mine = stored.progress.get(d, {}).get(part.key)
                if mine is not None:
                    rows, done = t.destinations[d]
                    t.destinations[d] = (rows + mine.rows, done + int(mine.done))
        t.rows = min((rows for rows, _ in t.destinations.values()), default=0)
        t.state = FINISHED if stored.finished or t.parts_done == t.parts_total else RUNNING if running else UNFINISHED
        out.tables.append(t)
    updated = [t.updated_at for t in out.tables if t.updated_at is not None]
    out.updated_at = max(updated) if updated else None
    return out

