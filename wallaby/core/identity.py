"""Where a stored position came from, and whether it may be trusted here.

Every stored position (the checkpoint store, the bytewax recovery store, each
destination's high-water, the spool of a secondary destination) records the
:class:`SourceIdentity` it was read from: the cluster's system identifier and
timeline (``IDENTIFY_SYSTEM``), the database, the slot's name and the slot's own
identity (``slot_id``: set when a slot is created, so it changes when a slot is
dropped and created again; kept in the source-state table).

A position is only meaningful against the WAL it was read from. Resuming a
position of another cluster (a database re-created, restored from a backup, a
flow file copied to another environment) skips every change of the new source
below it, silently. :meth:`SourceCheck.judge` decides, before anything is
created or written:

- no identity (written by an earlier version): adopted once, logged;
- another system identifier or database: refused (:class:`PositionMismatchError`);
- ahead of the server's current WAL: refused (a restore from an older backup);
- a later timeline of the same system (a failover): kept when the position lies
  on the history the server followed (at or before the point where its
  timeline left the stored one), else refused: those changes were discarded by
  the failover;
- another slot of the same database: kept for destinations (LSNs are the
  cluster's, so a high-water still says which changes they hold); for the
  checkpoint the caller decides (a slot created anew starts at its own
  consistent point).

This module does no I/O: the source side (:mod:`sources.postgres.identity`) reads the
current identity from the server.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

from wallaby.core.changes import format_lsn
from wallaby.core.errors import TerminalError

log = logging.getLogger("wallaby.identity")

KEEP = "keep"  # the stored position is from this source: use it
ADOPT = "adopt"  # no identity stored (an earlier version wrote it): use it, it gets one on the next write
DISCARD = "discard"  # a reset was asked for: start as if nothing was stored


@dataclass(frozen=True)
class SourceIdentity:
    """The source a position was read from."""

    system_id: str
    timeline: int
    database: str
    slot: str
    slot_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes | dict | None) -> SourceIdentity | None:
        """The identity stored as JSON (``None`` for nothing stored; unreadable text is ``None`` too, logged)."""
        if text is None or text == "":
            return None
        try:
            data = text if isinstance(text, dict) else json.loads(text)
            return cls(system_id=str(data["system_id"]), timeline=int(data["timeline"]),
                       database=str(data["database"]), slot=str(data["slot"]),
                       slot_id=None if data.get("slot_id") is None else str(data["slot_id"]))
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable source identity %r; treated as none", text)
            return None

    def describe(self) -> str:
        slot = f"slot {self.slot!r}" + (f" ({self.slot_id})" if self.slot_id else "")
        return f"system {self.system_id}, timeline {self.timeline}, database {self.database!r}, {slot}"


class PositionMismatchError(TerminalError):
    """A stored position came from another source (or from ahead of it): using it would skip changes."""

    def __init__(self, message: str, where: str):
        super().__init__(message)
        self.where = where


RESET_HINT = ("To start this flow over against this source, use a new flow id (or a new destination name), or reset"
              " the stored positions on purpose: `wallaby-worker ... -reset-position` (this run) or"
              " `wallaby-admin checkpoint reset -flow-id {flow}` (add `-dest NAME` for one destination).")
DEST_RESET_HINT = ("To start this destination over against this source, give it a new name, or reset its position on"
                   " purpose: `wallaby-admin checkpoint reset -flow-id {flow} -dest {dest}` (or `wallaby-worker ..."
                   " -reset-position` for every stored position of the flow).")


# A flow of several slots (source option ``slots``) writes each slot's changes through writers of their own: a
# destination's part for slot i keeps its high-water under ``<name>#<i>`` (each slot is its own ordered stream).
PART_SEP = "#"


def part_name(name: str, index: int | None) -> str:
    """The name destination ``name``'s writer for slot ``index`` keeps its state under (``name`` with one slot)."""
    return name if index is None else f"{name}{PART_SEP}{index}"


def destination_of(name: str) -> str:
    """The destination a part name belongs to (``lake#1`` -> ``lake``)."""
    base, sep, index = name.rpartition(PART_SEP)
    return base if sep and index.isdigit() else name


@dataclass
class SourceCheck:
    """The source as found at start, against which every stored position is judged.

    ``wal_end``: the server's WAL position when the flow started (a stored
    position above it cannot be from this server's history); ``switches``: for
    each earlier timeline of the server's history, the LSN where it ended;
    ``reset``: the stored positions discarded on purpose: destination names, or
    ``"*"`` for all of them and the checkpoint and recovery stores.
    """

    flow_id: str
    current: SourceIdentity
    wal_end: int
    switches: dict[int, int] = field(default_factory=dict)
    reset: frozenset[str] = frozenset()

    def resets(self, what: str) -> bool:
        return "*" in self.reset or what in self.reset or destination_of(what) in self.reset

    def judge(self, stored: SourceIdentity | None, stored_lsn: int, where: str, *, reset_as: str = "*") -> str:
        """KEEP, ADOPT or DISCARD for a position ``stored_lsn`` stored with ``stored`` in ``where`` (a phrase
        naming the store: "DuckDB /data/x.db (destination 'lake')"); raises :class:`PositionMismatchError`."""
        if self.resets(reset_as):
            log.warning("flow %s: discarding the stored position %s in %s (reset asked for)", self.flow_id,
                        format_lsn(stored_lsn), where, extra={"flow": self.flow_id})
            return DISCARD
        problem = self.problem(stored, stored_lsn)
        if problem is not None:
            stored_text = stored.describe() if stored else "no recorded source (written by an earlier version)"
            hint = RESET_HINT.format(flow=self.flow_id) if reset_as == "*" else \
                DEST_RESET_HINT.format(flow=self.flow_id, dest=reset_as)
            raise PositionMismatchError(
                f"flow {self.flow_id!r}: the position {format_lsn(stored_lsn)} stored in {where} cannot be used"
                f" with this source: {problem}. Stored: {stored_text}. Source now: {self.current.describe()}."
                f" Resuming there would skip changes. {hint}", where)
        if stored is None:
            log.info("flow %s: the position %s in %s has no recorded source (an earlier version wrote it);"
                     " adopting it for %s", self.flow_id, format_lsn(stored_lsn), where, self.current.describe(),
                     extra={"flow": self.flow_id})
            return ADOPT
        return KEEP

    def problem(self, stored: SourceIdentity | None, lsn: int) -> str | None:
        """Why a position at ``lsn`` from ``stored`` is not one of this source's, or None."""
        cur = self.current
        if stored is not None:
            if stored.system_id != cur.system_id:
                return (f"it was read from another Postgres cluster (system identifier {stored.system_id}, this"
                        f" server is {cur.system_id}): a re-created or restored database, or a flow moved to"
                        " another environment")
            if stored.database != cur.database:
                return f"it was read from database {stored.database!r}, the flow's source is {cur.database!r}"
        if stored is not None and stored.timeline != cur.timeline:
            if stored.timeline > cur.timeline:
                return (f"it was read on timeline {stored.timeline}, after this server's timeline {cur.timeline}:"
                        " the server was restored from an earlier backup")
            end = self.switches.get(stored.timeline)
            if end is None:
                return (f"timeline {stored.timeline} is not in the history of this server's timeline"
                        f" {cur.timeline}")
            if lsn > end:
                return (f"timeline {stored.timeline} ended at {format_lsn(end)} in this server's history; the"
                        f" changes after it that the position covers were discarded by the failover")
        if lsn > self.wal_end:
            return (f"it is ahead of the server's current WAL position {format_lsn(self.wal_end)}: the server"
                    " was restored from an earlier backup, or it is another server")
        return None
