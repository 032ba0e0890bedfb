"""Where a WAL position lies in what a slot will stream next, as a wallaby :class:`~wallaby.core.changes.Position`.

Another program that read the slot (the Go WALlaby) recorded how far it got as the WAL position of the last change
it delivered (the ``XLogData`` start of the change's message, which for a change is the LSN of its WAL record). A
wallaby position is the commit LSN of the change's transaction and the change's ordinal in it
(:mod:`sources.postgres.batcher`). :func:`locate` peeks at the slot's pending stream
(``pg_logical_slot_peek_binary_changes``: nothing is consumed, the slot does not move) with the options the source
streams with, and finds the change recorded there: resuming at its position emits exactly the changes after it,
in the stream's order (commit order): the rest of its transaction, and every transaction committed after it.

The slot must not be in use (Postgres refuses to peek at an active slot).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import psycopg

from sources.postgres.connection import connect, quote_ident, server_name
from sources.postgres.setup import proto_version_for
from wallaby.core.changes import Position, format_lsn, parse_lsn
from wallaby.core.errors import SourceError

log = logging.getLogger("wallaby.source")

# How many messages one peek decodes at most; a peek that finds nothing decodes again with the next bound (a peek
# always starts at the slot's position). None: everything pending.
PEEK_BOUNDS: tuple[int | None, ...] = (20_000, 2_000_000, None)
# pgoutput message kinds that take an ordinal (a row change, a truncate, a transactional logical message)
_CHANGES = {ord("I"), ord("U"), ord("D"), ord("T")}


@dataclass(frozen=True)
class Located:
    """The change at a WAL position: resume at ``position`` to emit what follows it. ``shared``: how many changes
    carry that LSN (more than one for the rows of one multi-insert, COPY; then ``position`` is before the first of
    them, since which of them were delivered is not known)."""

    position: Position
    shared: int = 1


def locate(opts, lsn: int, flow_id: str) -> Located | None:
    """The change at ``lsn`` among those ``opts.slot`` will stream next, or None when none is there (``lsn`` is not
    a change's position, or its transaction was confirmed already). Raises :class:`SourceError` (the slot in use,
    no such slot or publication, no permission)."""
    server = server_name(opts.dsn)
    with connect(opts.dsn, application_name=f"wallaby-migrate:{flow_id}") as conn:
        proto = proto_version_for(conn.info.server_version)
        for bound in PEEK_BOUNDS:
            rows = _peek(conn, opts, proto, bound, server)
            found = _find(rows, lsn)
            if found is not None or bound is None or len(rows) < bound:
                return found
    return None


def _peek(conn: psycopg.Connection, opts, proto: int, bound: int | None, server: str) -> list[tuple[str, bytes]]:
    args = ["proto_version", str(proto), "publication_names", quote_ident(opts.publication), "messages", "true"]
    if proto >= 2:
        args += ["streaming", "off"]
    try:
        # the first 9 bytes are all it needs: the kind, BEGIN's commit LSN, a logical message's flags
        return [(r[0], bytes(r[1])) for r in conn.execute(
            "SELECT lsn::text, substring(data from 1 for 9) FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s,"
            " VARIADIC %s::text[])", (opts.slot, bound, args)).fetchall()]
    except psycopg.errors.ObjectInUse as exc:
        raise SourceError(f"replication slot {opts.slot!r} in {server} is in use ({_first_line(exc)}): stop the"
                          " program reading it first", server=server) from None
    except psycopg.Error as exc:
        raise SourceError(f"cannot read replication slot {opts.slot!r} in {server}: {_first_line(exc)}",
                          server=server) from None


def _find(rows: list[tuple[str, bytes]], lsn: int) -> Located | None:
    commit, ordinal = 0, 0
    hits: list[Position] = []
    for text, data in rows:
        kind = data[0]
        if kind == ord("B"):
            if hits:
                break  # the transaction holding it is over
            commit, ordinal = struct.unpack_from(">Q", data, 1)[0], 0
            continue
        if kind in _CHANGES or (kind == ord("M") and data[1] & 1):
            ordinal += 1
            if parse_lsn(text) == lsn:
                hits.append(Position(commit, ordinal))
    if not hits:
        return None
    if len(hits) == 1:
        return Located(hits[0])
    log.warning("%d changes share the WAL position %s (one multi-insert): resuming before the first of them",
                len(hits), format_lsn(lsn))
    return Located(Position(hits[0].lsn, hits[0].ordinal - 1), len(hits))


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
