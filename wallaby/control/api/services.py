"""The gRPC servicers of ``wallaby.v1``: thin adapters from messages to :class:`FlowManager` and the stores.

Every error leaves as a gRPC status chosen by :func:`wallaby.core.errors.grpc_status_name`
(INVALID_ARGUMENT naming every bad field, NOT_FOUND, ALREADY_EXISTS,
FAILED_PRECONDITION for an illegal state change), its message redacted.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc

from sources.postgres.rds_iam import register
from sources.postgres.setup import split_table
from wallaby.control.api import backfillstatus, sourceops
from wallaby.control.api.convert import _ts, parse_api_flow, stored_to_flow
from wallaby.control.api.manager import FlowManager
from wallaby.core.changes import format_lsn
from wallaby.core.errors import (
    ConfigError,
    FieldProblem,
    IllegalStateError,
    NotFoundError,
    WallabyError,
    grpc_status_name,
    redact_dsn,
)
from wallaby.core.options import SOURCE_OPTIONS
from wallaby.core.secrets import parse_options
from wallaby.state.flowstore import DDL_STATUSES, DDLEvent, StoredFlow
from wallaby.v1 import (
    checkpoint_pb2,
    checkpoint_pb2_grpc,
    ddl_pb2,
    ddl_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    types_pb2,
)

log = logging.getLogger("wallaby.api")


def rpc(method: Callable) -> Callable:
    """Run a servicer method; turn wallaby's errors into gRPC statuses."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            return method(self, request, context)
        except WallabyError as exc:
            code = getattr(grpc.StatusCode, grpc_status_name(exc))
            context.abort(code, redact_dsn(str(exc)))
        except Exception as exc:  # a bug: say so, without secrets
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed: {redact_dsn(str(exc))}")

    return wrapper


def _required(value: Any, field: str, what: str) -> None:
    if not value:
        raise ConfigError(what, [FieldProblem(field, "required")])


class FlowServicer(flow_pb2_grpc.FlowServiceServicer):
    def __init__(self, manager: FlowManager):
        self.m = manager

    def _flow(self, stored: StoredFlow) -> types_pb2.Flow:
        return stored_to_flow(stored)

    @rpc
    def CreateFlow(self, request, context):
        if not request.HasField("flow"):
            raise ConfigError("CreateFlow", [FieldProblem("flow", "required")])
        spec = parse_api_flow(request.flow)
        return self._flow(self.m.create(spec, start=request.start_immediately))

    @rpc
    def UpdateFlow(self, request, context):
        return self._update(request.flow, request.HasField("flow"))

    def _update(self, flow: types_pb2.Flow, present: bool) -> types_pb2.Flow:
        if not present or not flow.id:
            raise ConfigError("UpdateFlow", [FieldProblem("flow.id", "required (the flow to update)")])
        old = self.m.store.get(flow.id)
        spec = parse_api_flow(flow, old)
        return self._flow(self.m.update(spec))

    @rpc
    def ReconfigureFlow(self, request, context):
        flow_id = request.flow.id
        _required(flow_id, "flow.id", "ReconfigureFlow")
        paused = False
        if request.pause_first and self.m.store.get(flow_id).state == "running":
            self.m.pause(flow_id)
            paused = True
        self._update(request.flow, request.HasField("flow"))
        if request.sync_publication:
            spec = self.m.store.get(flow_id)
            opts = _source_options(spec)
            tables = list(opts.publication_tables or [])
            if tables or opts.publication_schemas:
                sourceops.sync_tables(opts.dsn, opts.publication, tables, list(opts.publication_schemas or []),
                                      opts.sync_publication_mode, flow_id)
        resume = request.resume_after if request.HasField("resume_after") else paused
        if resume and self.m.store.get(flow_id).state == "paused":
            self.m.resume(flow_id)
        return self._flow(self.m.store.get(flow_id))

    @rpc
    def StartFlow(self, request, context):
        return self._flow(self.m.start(_id(request)))

    @rpc
    def PauseFlow(self, request, context):
        return self._flow(self.m.pause(_id(request)))

    @rpc
    def ResumeFlow(self, request, context):
        return self._flow(self.m.resume(_id(request)))

    @rpc
    def StopFlow(self, request, context):
        return self._flow(self.m.stop(_id(request)))

    @rpc
    def RunFlowOnce(self, request, context):
        return flow_pb2.RunFlowOnceResponse(dispatched=self.m.run_once(_id(request)))

    @rpc
    def GetFlow(self, request, context):
        return self._flow(self.m.store.get(_id(request)))

    @rpc
    def ListFlows(self, request, context):
        size = request.page_size if request.page_size > 0 else 0
        flows = self.m.store.list(limit=size + 1 if size else None, after=request.page_token)
        more = bool(size) and len(flows) > size
        flows = flows[:size] if size else flows
        return flow_pb2.ListFlowsResponse(flows=[self._flow(f) for f in flows],
                                          next_page_token=flows[-1].id if more else "")

    @rpc
    def DeleteFlow(self, request, context):
        self.m.delete(_id(request))
        return flow_pb2.DeleteFlowResponse(deleted=True)

    @rpc
    def CleanupFlow(self, request, context):
        flow_id = _id(request)
        flow = self.m.store.get(flow_id)
        if flow.state == "running" or self.m.dispatcher.running(flow_id):
            raise _illegal(f"cannot clean up flow {flow_id!r}: it is running; stop it first")
        flags = {k: (getattr(request, k) if request.HasField(k) else True)
                 for k in ("drop_slot", "drop_publication", "drop_source_state")}
        done = sourceops.cleanup(_source_options(flow), flow_id, slot=flags["drop_slot"],
                                 publication=flags["drop_publication"], state=flags["drop_source_state"])
        if flags["drop_source_state"]:
            self.m.checkpoints.delete(flow_id)
        log.info("flow %s: cleaned up (%s)", flow_id, ", ".join(done) or "nothing to drop", extra={"flow": flow_id})
        return flow_pb2.CleanupFlowResponse(cleaned=True)

    # -- slots ---------------------------------------------------------------------------------
    def _target(self, request, need: str) -> tuple[str, str, str]:
        """(dsn, slot-or-publication, flow_id) from the request, else from the named flow's source."""
        flow_id, dsn, name = request.flow_id, request.dsn, getattr(request, need, "")
        if flow_id and (not dsn or not name):
            opts = _source_options(self.m.store.get(flow_id))
            dsn = dsn or opts.dsn
            name = name or getattr(opts, need)
        if not dsn:
            raise ConfigError(type(request).__name__, [FieldProblem("flow_id", "give flow_id or dsn")])
        return dsn, name, flow_id

    @rpc
    def ListReplicationSlots(self, request, context):
        dsn, _, flow_id = self._target(request, "slot")
        slots = sourceops.list_slots(dsn, flow_id, request.slot or None)
        return flow_pb2.ListReplicationSlotsResponse(slots=[_slot(s) for s in slots], flow_id=flow_id)

    @rpc
    def GetReplicationSlot(self, request, context):
        dsn, slot, flow_id = self._target(request, "slot")
        _required(slot, "slot", "GetReplicationSlot")
        return flow_pb2.GetReplicationSlotResponse(slot=_slot(sourceops.get_slot(dsn, slot, flow_id)))

    @rpc
    def DropReplicationSlot(self, request, context):
        dsn, slot, flow_id = self._target(request, "slot")
        _required(slot, "slot", "DropReplicationSlot")
        if flow_id and self.m.dispatcher.running(flow_id):
            raise _illegal(f"flow {flow_id!r} is running on slot {slot!r}; stop it first")
        found, dropped = sourceops.drop_slot(dsn, slot, request.if_exists, flow_id)
        return flow_pb2.DropReplicationSlotResponse(slot=slot, found=found, dropped=dropped, flow_id=flow_id)

    # -- publications ------------------------------------------------------------------------------
    @rpc
    def ListPublicationTables(self, request, context):
        dsn, pub, flow_id = self._target(request, "publication")
        _required(pub, "publication", "ListPublicationTables")
        return flow_pb2.ListPublicationTablesResponse(tables=sourceops.publication_tables(dsn, pub, flow_id),
                                                      publication=pub, flow_id=flow_id)

    @rpc
    def AddPublicationTables(self, request, context):
        dsn, pub, flow_id = self._target(request, "publication")
        _required(list(request.tables), "tables", "AddPublicationTables")
        tables = sourceops.add_tables(dsn, pub, list(request.tables), flow_id)
        return flow_pb2.PublicationTablesMutationResponse(tables=tables, publication=pub)

    @rpc
    def DropPublicationTables(self, request, context):
        dsn, pub, flow_id = self._target(request, "publication")
        _required(list(request.tables), "tables", "DropPublicationTables")
        tables = sourceops.drop_tables(dsn, pub, list(request.tables), flow_id)
        return flow_pb2.PublicationTablesMutationResponse(tables=tables, publication=pub)

    @rpc
    def SyncPublicationTables(self, request, context):
        dsn, pub, flow_id = self._target(request, "publication")
        if request.snapshot:
            if not flow_id:
                raise _illegal("publication sync -snapshot backfills a flow's tables: name the flow (-flow-id)")
            if self.m.store.get(flow_id).state in ("running", "stopping") and not request.pause:
                raise _illegal(f"flow {flow_id!r} is running: a backfill next to its stream would meet the stream out"
                               " of order; add -pause (and -resume to resume it when the backfill ends)")
        paused = False
        if request.pause and flow_id and self.m.store.get(flow_id).state == "running":
            self.m.pause(flow_id)
            paused = True
        added, removed = sourceops.sync_tables(dsn, pub, list(request.tables), list(request.schemas),
                                               request.mode or "add", flow_id)
        snapshot: list[str] = []
        if request.snapshot:
            named = {".".join(split_table(t.strip())) for t in request.tables if t.strip()}
            snapshot = sorted(set(added) | named)
            if snapshot:
                self.m.backfill(flow_id, snapshot, resume_after=bool(request.resume))
        if request.resume and flow_id and not snapshot and (paused or self.m.store.get(flow_id).state == "paused"):
            self.m.resume(flow_id)
        return flow_pb2.SyncPublicationTablesResponse(added=added, removed=removed, publication=pub, flow_id=flow_id,
                                                      snapshot_tables=snapshot)

    @rpc
    def ResolveStaging(self, request, context):
        flow_id = _id(request)
        done = self.m.resolve_staging(flow_id, list(request.tables), list(request.schemas),
                                      request.destination or None)
        return flow_pb2.ResolveStagingResponse(flow_id=flow_id, tables=[
            flow_pb2.ResolvedStagingTable(destination=r.destination, table=r.table, rows=r.rows,
                                          resolution=r.resolution, staging_table=r.staging_table, staged=r.staged)
            for r in done])

    @rpc
    def GetBackfillStatus(self, request, context):
        flow_id = _id(request)
        try:
            flow = self.m.store.get(flow_id)
        except NotFoundError:
            raise NotFoundError(f"no flow {flow_id!r} (wallaby-admin flow list shows the flows)") from None
        if not (flow.spec.get("source") or {}).get("options"):
            raise _illegal(f"flow {flow_id!r} has no source options: its backfill's state is found through them"
                           " (source.options dsn and snapshot_state_backend); set them with wallaby-admin flow"
                           " update -file FLOW.json")
        log_dir = getattr(self.m.dispatcher, "log_dir", None)
        status = backfillstatus.backfill_status(
            flow_id, _source_options(flow), [d.get("name", "") for d in flow.spec.get("destinations", [])],
            launched=self.m.backfill_running(flow_id), log_hint=str(log_dir / f"{flow_id}.log") if log_dir else "")
        return _backfill_status(status)

    @rpc
    def ScrapePublicationTables(self, request, context):
        dsn, pub, flow_id = self._target(request, "publication")
        found, missing, applied = sourceops.scrape_tables(dsn, pub, list(request.schemas), request.apply, flow_id)
        return flow_pb2.ScrapePublicationTablesResponse(discovered_tables=found, missing_tables=missing,
                                                        applied=applied, flow_id=flow_id)


def _id(request) -> str:
    _required(request.flow_id, "flow_id", type(request).__name__)
    return request.flow_id


def _illegal(message: str) -> WallabyError:
    return IllegalStateError(message)


def _source_options(flow: StoredFlow):
    src = flow.spec["source"]
    opts = parse_options(SOURCE_OPTIONS[src["type"]], src["options"], what=f"flow {flow.id!r}",  # ${env:...} resolved
                         path="source.options", context={"endpoint_name": src["name"], "flow_id": flow.id})
    if opts.aws_rds_iam:
        register(opts, flow.id)
    return opts


_BACKFILL_STATES = {state: flow_pb2.BackfillState.Value(f"BACKFILL_STATE_{state.upper()}") for state in (
    backfillstatus.NEVER_RAN, backfillstatus.RUNNING, backfillstatus.UNFINISHED, backfillstatus.FINISHED,
    backfillstatus.UNKNOWN)}


def _backfill_status(s: backfillstatus.BackfillStatus) -> flow_pb2.GetBackfillStatusResponse:
    def at(seconds: float | None):
        return None if seconds is None else _ts(seconds)

    tables = [flow_pb2.BackfillTableStatus(
        table=t.table, state=_BACKFILL_STATES[t.state], parts_total=t.parts_total, parts_done=t.parts_done,
        rows=t.rows, destinations_differ=t.destinations_differ, started_at=at(t.started_at),
        updated_at=at(t.updated_at),
        destinations=[flow_pb2.BackfillDestinationProgress(destination=d, rows=rows, parts_done=done)
                      for d, (rows, done) in t.destinations.items()],
        parts=[flow_pb2.BackfillPart(part=p.part, first_block=p.first_block, end_block=p.end_block,
                                     next_block=p.next_block, rows=p.rows, done=p.done, next_key=p.next_key)
               for p in t.parts])
        for t in s.tables]
    return flow_pb2.GetBackfillStatusResponse(
        flow_id=s.flow_id, state=_BACKFILL_STATES[s.state], backend=s.backend, location=s.location, tables=tables,
        started_at=at(s.started_at), updated_at=at(s.updated_at), finished_at=at(s.finished_at),
        running_detail=s.running_detail, note=s.note)


def _slot(s: sourceops.SlotInfo) -> flow_pb2.ReplicationSlotInfo:
    return flow_pb2.ReplicationSlotInfo(
        slot_name=s.slot_name, plugin=s.plugin, slot_type=s.slot_type, database=s.database, active=s.active,
        active_pid=s.active_pid or 0, active_pid_present=s.active_pid is not None, temporary=s.temporary,
        wal_status=s.wal_status, restart_lsn=s.restart_lsn, confirmed_flush_lsn=s.confirmed_flush_lsn)


class CheckpointServicer(checkpoint_pb2_grpc.CheckpointServiceServicer):
    def __init__(self, manager: FlowManager):
        self.m = manager

    @staticmethod
    def _out(flow_id: str, cps) -> checkpoint_pb2.FlowCheckpoint:
        # A flow reads one slot: its checkpoint is the lowest confirmed position over its slots.
        cp = min(cps, key=lambda c: c.confirmed_lsn)
        return checkpoint_pb2.FlowCheckpoint(flow_id=flow_id, checkpoint=types_pb2.Checkpoint(
            lsn=format_lsn(cp.confirmed_lsn), timestamp_unix_millis=int(cp.updated_at * 1000),
            metadata={"slot": cp.slot, "position": str(cp.position)}))

    @rpc
    def GetCheckpoint(self, request, context):
        flow_id = _id(request)
        cps = self.m.checkpoints.list(flow_id)
        if not cps:
            self.m.store.get(flow_id)  # NOT_FOUND for an unknown flow

            raise NotFoundError(f"flow {flow_id!r} has no checkpoint yet (its worker has not confirmed anything)")
        return self._out(flow_id, cps)

    @rpc
    def ListCheckpoints(self, request, context):
        by_flow: dict[str, list] = {}
        for cp in self.m.checkpoints.list(request.flow_id or None):
            by_flow.setdefault(cp.flow_id, []).append(cp)
        return checkpoint_pb2.ListCheckpointsResponse(checkpoints=[self._out(f, c) for f, c in by_flow.items()])

    @rpc
    def ResetCheckpoint(self, request, context):
        flow_id = _id(request)
        dest = request.destination if request.HasField("destination") else None
        if dest is not None and not dest.strip():
            raise ConfigError("ResetCheckpointRequest", [FieldProblem(
                "destination", "empty: give a destination name, or leave it out to reset every position of the flow")])
        deleted, pending = self.m.reset_positions(flow_id, dest)
        return checkpoint_pb2.ResetCheckpointResponse(
            flow_id=flow_id, destination=dest or "", deleted_checkpoints=[self._out(flow_id, [c]) for c in deleted],
            pending_resets=sorted(pending))


def _ddl(e: DDLEvent) -> ddl_pb2.DDLEvent:
    return ddl_pb2.DDLEvent(id=e.id, ddl=e.ddl, lsn=e.lsn, status=e.status, plan_json=e.plan_json,
                            created_at=_ts(e.created_at), flow_id=e.flow_id, table=e.table,
                            updated_at=_ts(e.updated_at))


class DDLServicer(ddl_pb2_grpc.DDLServiceServicer):
    def __init__(self, manager: FlowManager):
        self.store = manager.store

    @rpc
    def ListPendingDDL(self, request, context):
        return ddl_pb2.ListPendingDDLResponse(
            events=[_ddl(e) for e in self.store.list_ddl("pending", request.flow_id or None)])

    @rpc
    def ListDDL(self, request, context):
        status = request.status.strip().lower()
        if status in ("", "all"):
            status = None
        elif status not in DDL_STATUSES:
            raise ConfigError("ListDDL", [FieldProblem("status", f"expected one of {', '.join(DDL_STATUSES)} or all,"
                                                                 f" got {request.status!r}")])
        return ddl_pb2.ListDDLResponse(events=[_ddl(e) for e in self.store.list_ddl(status, request.flow_id or None)])

    @rpc
    def ApproveDDL(self, request, context):
        return ddl_pb2.ApproveDDLResponse(event=_ddl(self.store.set_ddl_status(request.id, "approved")))

    @rpc
    def RejectDDL(self, request, context):
        return ddl_pb2.RejectDDLResponse(event=_ddl(self.store.set_ddl_status(request.id, "rejected")))

    @rpc
    def MarkDDLApplied(self, request, context):
        return ddl_pb2.MarkDDLAppliedResponse(event=_ddl(self.store.set_ddl_status(request.id, "applied")))
