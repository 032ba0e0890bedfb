"""The DDL gate: what a flow does when a ``ddl`` change reaches it (``config.ddl``).

Every ``ddl`` event (a statement captured by the event trigger, or schema drift
seen in a Relation message) is recorded in the flow store's DDL events, keyed by
its position and statement, so a replay meets the same record again. Then:

| policy | new event is stored as | the source |
|---|---|---|
| ``gate=false`` | ``applied`` | passes it on |
| ``gate=true, auto_approve=true, auto_apply=true`` | ``approved`` | passes it on |
| ``gate=true, auto_approve=false`` | ``pending`` (signals: :func:`wallaby.core.telemetry.ddl_gated`) | holds |

A held flow emits nothing at or after the event and confirms nothing past the
DDL's transaction; it closes its replication stream (WAL is kept by the slot)
and looks at the record every ``WALLABY_DDL_POLL`` seconds (2): ``approved``
(with ``auto_apply=true``) or ``applied`` -> the stream is opened again from
before the DDL's transaction and the event is passed on; ``approved`` with
``auto_apply=false`` keeps holding until someone applies it and marks it
``applied``; ``rejected`` -> the event is dropped (not given to the
destinations) and the data after it flows.
"""

from __future__ import annotations

import logging

import orjson

from sources.postgres.batcher import describe_drift
from wallaby.core import settings
from wallaby.core.changes import Event, Position, format_lsn, parse_lsn
from wallaby.core.errors import SchemaChangeError
from wallaby.core.spec import DDLPolicy
from wallaby.core.telemetry import ddl_gated
from wallaby.state.flowstore import DDLEvent, FlowStore

log = logging.getLogger("wallaby.ddl")

PASS, HOLD, DROP = "pass", "hold", "drop"
POLL_SECONDS = settings.on_import().ddl_poll  # WALLABY_DDL_POLL


# Why a rewrite holds a flow whatever its policy, when not every destination can take the table read again.
NO_REREAD = ("{table} was rewritten at the source (its stored values changed with no row change: ALTER ... TYPE"
             " ... USING, a volatile default) and not every destination of this flow can take the table read again"
             " (docs/ddl.md); resync those destinations yourself (e.g. wallaby-worker -mode backfill -tables {table}"
             " into a flow whose destinations take reads), then approve this event to go on; until then they hold"
             " the old values")


class DDLGate:
    """Decides each ``ddl`` event (module docstring). ``rereads``: every destination of the flow takes a table
    read again (``dataflows.buildable.takes_reads``); when not, a drift that rewrote the table is held whatever the
    policy (a destination that cannot resync says so and stops, rather than diverge)."""

    def __init__(self, flow_id: str, policy: DDLPolicy, flows: FlowStore | None, *, rereads: bool = True):
        self.flow_id = flow_id
        self.policy = policy
        self.flows = flows
        self.rereads = rereads

    def decide(self, ev: Event) -> str:
        table = ev.payload.get("table") or (ev.tables[0].qualified if ev.tables else "")
        statement = ev.payload.get("ddl") or ""
        if self.flows is None:  # no store to record in (an embedded run): the gate cannot hold
            return PASS
        record = self.flows.find_ddl(self.flow_id, str(ev.position), statement)
        if record is None and ev.payload.get("kind") == "drift":
            # the same drift read again (a restart, a reconnect) may judge the rewrite otherwise: the storage is read
            # as it is when the Relation message is resolved, so a column dropped meanwhile hides what its default
            # wrote, and a later rewrite shows. It is the same event; what it plans now (a reread) still holds.
            other = describe_drift({**ev.payload, "rewritten": not ev.payload.get("rewritten")})
            record = self.flows.find_ddl(self.flow_id, str(ev.position), other)
        if record is None:
            plan_of = {k: v for k, v in ev.payload.items() if k != "ddl"}
            if ev.payload.get("storage_only"):
                # a column dropped and added again alike: no schema to approve; read again where every destination
                # can; where not, held as any rewrite (below)
                status = "applied" if self.rereads else "pending"
                if not self.rereads:
                    plan_of["held"] = NO_REREAD.format(table=table)
                    log.warning("ddl: flow=%s: %s", self.flow_id, plan_of["held"], extra={"flow": self.flow_id})
            elif ev.payload.get("rewritten") and not self.rereads:
                status, plan_of["held"] = "pending", NO_REREAD.format(table=table)
                log.warning("ddl: flow=%s: %s", self.flow_id, plan_of["held"], extra={"flow": self.flow_id})
            elif not self.policy.gate:
                status = "applied"
            else:
                status = "approved" if self.policy.auto_approve else "pending"
            plan = orjson.dumps(plan_of).decode()
            record = self.flows.add_ddl(self.flow_id, table, statement, format_lsn(ev.position.lsn), status, plan,
                                        str(ev.position))
            if status == "pending":
                ddl_gated(self.flow_id, table, statement, record.id)
            else:
                log.info("ddl: flow=%s table=%s statement=%s (%s)", self.flow_id, table or "-",
                         " ".join(statement.split()), status, extra={"flow": self.flow_id})
        if record.status == "rejected":
            return DROP
        if record.status == "applied" or (record.status == "approved" and self.policy.auto_apply):
            return PASS
        return HOLD


def _position(text: str) -> Position | None:
    lsn, sep, ordinal = text.partition("#")
    try:
        return Position(parse_lsn(lsn), int(ordinal)) if sep else None
    except ValueError:
        return None


def hold_schema_change(flows: FlowStore, flow_id: str, err: SchemaChangeError,
                       resumes_at: Position | None) -> DDLEvent | None:
    """A destination could not apply a schema change the gate let through (``err``): leave the DDL event of it
    pending, so a worker started again holds before it (``decide`` -> HOLD) instead of failing the same way on
    every restart. The event is the last one of ``err.table`` at or before the first change with the new shape,
    naming the column when one does (drift events list ``retyped`` columns). None when there is no such event
    after ``resumes_at`` (where the next worker starts): then holding cannot help and the error stands."""
    first = err.position if isinstance(err.position, Position) else None
    found: list[tuple[Position, DDLEvent]] = []
    for event in flows.list_ddl(flow_id=flow_id):
        pos = _position(event.position)
        if event.table != err.table or pos is None or (first is not None and pos > first):
            continue
        if resumes_at is not None and pos <= resumes_at:
            continue
        found.append((pos, event))
    if not found:
        return None
    naming = [(p, e) for p, e in found if err.column in _retyped(e)]
    _, event = max(naming or found, key=lambda pe: (pe[0], pe[1].id))
    held = flows.reopen_ddl(event.id, str(err))
    ddl_gated(flow_id, err.table, held.ddl, held.id)
    log.warning("ddl: flow=%s table=%s: DDL event %d is pending again: %s", flow_id, err.table, held.id, err,
                extra={"flow": flow_id})
    return held


def _retyped(event: DDLEvent) -> list:
    try:
        plan = orjson.loads(event.plan_json or "{}")
    except orjson.JSONDecodeError:
        return []
    return plan.get("retyped") or [] if isinstance(plan, dict) else []
