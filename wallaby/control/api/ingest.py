"""IngestService: one wallaby feeds another.

``IngestBatch`` takes a wire payload sent by a remote gRPC destination
(:mod:`sinks.grpc.writer`) and applies it to the destinations of the local flow named
by ``flow_id`` (only the one named by ``destination`` when it names one of
them; else all of them), with the same writers a worker uses, one commit per
call. Those writers skip what they already hold (DuckDB: its high-water
position), so a sender's retries and replays apply once.

The local flow is a container for its destinations here: its worker must not
run at the same time (it would write the same destinations), so a call for a
flow whose worker runs is refused (FAILED_PRECONDITION). Payloads must be
``payload_mode=wire`` (``record_json`` carries no schema to rebuild rows from).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from dataflows.buildable import check_buildable, sink_factory
from sinks.base import SinkError, TransientSinkError, Writer
from wallaby.control.api.manager import FlowManager
from wallaby.core.changes import ChangeBatch, Position
from wallaby.core.errors import NotFoundError, redact_dsn
from wallaby.core.options import did_you_mean
from wallaby.core.spec import FlowSpec
from wallaby.v1 import ingest_pb2, ingest_pb2_grpc, types_pb2
from wallaby.wire import decode

log = logging.getLogger("wallaby.api.ingest")


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, manager: FlowManager):
        self.m = manager
        self._writers: dict[tuple[str, str], tuple[str, Writer]] = {}
        self._lock = threading.Lock()

    def _writer(self, flow: FlowSpec, i: int, version: str) -> Writer:
        dest = flow.destinations[i]
        key = (flow.id, dest.name)
        cached = self._writers.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        if cached is not None:
            cached[1].close()
        check_buildable(flow)
        writer = sink_factory(dest.type)(dest.name, flow.id, flow.destination_options(i)).new_writer(None)
        self._writers[key] = (version, writer)
        return writer

    def IngestBatch(self, request, context):
        meta = dict(context.invocation_metadata() or ())
        mode = meta.get("x-wallaby-payload-mode", "wire")
        if mode != "wire":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"payload_mode {mode!r}: a wallaby receiver needs"
                                                            " payload_mode=wire (record_json carries no schema)")
        if not request.wire_format:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "wire_format: required")
        fmt = types_pb2.WireFormat.Name(request.wire_format).removeprefix("WIRE_FORMAT_").lower()
        try:
            stored = self.m.store.get(request.flow_id)
        except NotFoundError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        flow = FlowSpec.model_validate(stored.spec)
        names = [d.name for d in flow.destinations]
        if request.destination and request.destination in names:
            targets = [names.index(request.destination)]
        elif request.destination and len(names) > 1:
            context.abort(grpc.StatusCode.NOT_FOUND, f"flow {flow.id!r} has no destination {request.destination!r}"
                                                     f"{did_you_mean(request.destination, names)}")
        else:
            targets = list(range(len(names)))
        if stored.state == "running" or self.m.dispatcher.running(flow.id):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"flow {flow.id!r} runs its own worker, which writes"
                                                               " these destinations; ingest into a flow that is not"
                                                               " running")
        try:
            seg = decode(request.payload, fmt)
        except Exception as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode the {fmt} payload: {exc}")
        if not seg.records:
            return ingest_pb2.IngestBatchResponse(accepted=True, message="empty")
        last = seg.records[-1]
        batch = ChangeBatch(flow.id, [seg.to_segment()], Position(last.lsn, last.ordinal))
        version = str(stored.updated_at)
        try:
            with self._lock:
                for i in targets:
                    writer = self._writer(flow, i, version)
                    writer.write(batch)
                    writer.commit()
        except SinkError as exc:
            code = grpc.StatusCode.UNAVAILABLE if isinstance(exc, TransientSinkError) else \
                grpc.StatusCode.FAILED_PRECONDITION
            context.abort(code, redact_dsn(str(exc)))
        log.info("ingested %d changes of %s into %s", len(seg.records), seg.table or "an event",
                 ", ".join(names[i] for i in targets), extra={"flow": flow.id})
        return ingest_pb2.IngestBatchResponse(accepted=True, message=f"{len(seg.records)} changes")

    def close(self) -> Any:
        with self._lock:
            for _, writer in self._writers.values():
                try:
                    writer.close()
                except Exception:
                    log.exception("closing an ingest writer failed")
            self._writers.clear()
