"""Reading the source's identity from the server, before anything is created.

``IDENTIFY_SYSTEM`` (any replication user may run it) gives the system
identifier, the timeline and the current WAL position; ``TIMELINE_HISTORY``
gives where each earlier timeline ended; ``pg_replication_slots`` and the
source-state table (:mod:`sources.postgres.source_state`) give the slot, its confirmed
position, its identity and its owner. See :mod:`wallaby.core.identity` for how a
stored position is judged against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from sources.postgres.connection import connect, server_name, simple_query
from sources.postgres.source_state import SlotRow, read_slot_rows, slot_id_of
from wallaby.core.changes import parse_lsn
from wallaby.core.errors import SourceError
from wallaby.core.identity import SourceIdentity


@dataclass
class SourceFacts:
    """What the server says about the flow's source right now."""

    identity: SourceIdentity  # slot_id: the recorded identity of the existing slot (None: no slot, or unknown)
    wal_end: int
    switches: dict[int, int] = field(default_factory=dict)
    slot_exists: bool = False
    slot_confirmed: int | None = None
    slot_rows: list[SlotRow] = field(default_factory=list)


def parse_timeline_history(content: str) -> dict[int, int]:
    """``{timeline: LSN where it ended}`` from a timeline history file (``1\\t0/3000158\\treason`` lines)."""
    out: dict[int, int] = {}
    for line in content.splitlines():
        parts = line.strip().split("\t") if "\t" in line else line.split()
        if len(parts) < 2 or not parts[0].isdigit():
            continue  # comments and blank lines
        out[int(parts[0])] = parse_lsn(parts[1])
    return out


def _text(value: str | None) -> str:
    """A replication command's text field; older servers send the history file's content as bytea (hex)."""
    if value is None:
        return ""
    if value.startswith("\\x"):
        return bytes.fromhex(value[2:]).decode("utf-8", errors="replace")
    return value


def read_source(opts, flow_id: str) -> SourceFacts:
    """The source's identity and the state of the flow's slot. Creates nothing."""
    server = server_name(opts.dsn)
    with connect(opts.dsn, replication=True, application_name=f"wallaby-setup:{flow_id}") as rconn:
        try:
            system_id, timeline, xlogpos, dbname = simple_query(rconn, "IDENTIFY_SYSTEM")[0][:4]
            tli = int(timeline or 1)
            switches = {}
            if tli > 1:
                rows = simple_query(rconn, f"TIMELINE_HISTORY {tli}")
                switches = parse_timeline_history(_text(rows[0][1])) if rows else {}
        except psycopg.Error as exc:
            raise SourceError(f"could not identify source Postgres {server}: {exc}", server=server) from None
    with connect(opts.dsn, application_name=f"wallaby-setup:{flow_id}") as conn:
        slot = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                            (opts.slot,)).fetchone()
        rows = read_slot_rows(conn, opts) if opts.ensure_state else []
        db = conn.info.dbname
    owner = opts.flow_id or flow_id
    identity = SourceIdentity(system_id=str(system_id), timeline=tli, database=str(dbname or db),
                              slot=opts.slot, slot_id=slot_id_of(rows, owner) if slot is not None else None)
    return SourceFacts(identity=identity, wal_end=parse_lsn(xlogpos or "0/0"), switches=switches,
                       slot_exists=slot is not None,
                       slot_confirmed=parse_lsn(slot[0]) if slot is not None and slot[0] else None, slot_rows=rows)
