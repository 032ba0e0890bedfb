"""StreamService: Pull, Ack and Replay on the streams of pgstream destinations (:mod:`sinks.pgstream.writer`).

A stream is found by name among the flows' pgstream destinations (their
``stream`` option, default the destination's name); its database is that
destination's ``dsn``.
"""

from __future__ import annotations

import psycopg
from google.protobuf.timestamp_pb2 import Timestamp

from sinks.pgstream import writer as pgstream
from wallaby.control.api.manager import FlowManager
from wallaby.control.api.services import rpc
from wallaby.core.changes import parse_lsn
from wallaby.core.errors import ConfigError, FieldProblem, NotFoundError, SourceError, redact_dsn
from wallaby.core.spec import FlowSpec
from wallaby.v1 import stream_pb2, stream_pb2_grpc


class StreamServicer(stream_pb2_grpc.StreamServiceServicer):
    def __init__(self, manager: FlowManager):
        self.m = manager

    def _dsn(self, stream: str) -> str:
        if not stream:
            raise ConfigError("StreamService", [FieldProblem("stream", "required")])
        known = []
        for stored in self.m.store.list():
            spec = FlowSpec.model_validate(stored.spec)
            for i, d in enumerate(spec.destinations):
                if d.type == "pgstream":
                    opts = spec.destination_options(i)
                    known.append(opts.stream or d.name)
                    if (opts.stream or d.name) == stream:
                        return opts.dsn
        hint = f" (streams: {', '.join(sorted(set(known)))})" if known else " (no flow has a pgstream destination)"
        raise NotFoundError(f"no stream {stream!r}{hint}")

    def _connect(self, dsn: str) -> psycopg.Connection:
        try:
            return psycopg.connect(dsn, autocommit=True, application_name="wallaby-stream")
        except psycopg.Error as exc:
            err = SourceError(f"cannot connect to the stream database: {redact_dsn(str(exc).strip())}")
            err.transient = True
            raise err from None

    @staticmethod
    def _group(request) -> str:
        if not request.consumer_group:
            raise ConfigError("StreamService", [FieldProblem("consumer_group", "required")])
        return request.consumer_group

    @rpc
    def Pull(self, request, context):
        group = self._group(request)
        with self._connect(self._dsn(request.stream)) as conn:
            msgs = pgstream.pull(conn, request.stream, group, request.max_messages or 10,
                                 request.visibility_timeout_seconds or 30, request.consumer_id)
        out = []
        for m in msgs:
            ts = Timestamp()
            ts.FromDatetime(m.created_at)
            out.append(stream_pb2.StreamMessage(id=m.id, stream=m.stream, namespace=m.namespace, table=m.table,
                                                lsn=m.lsn, wire_format=m.wire_format, payload=bytes(m.payload),
                                                created_at=ts))
        return stream_pb2.StreamPullResponse(messages=out)

    @rpc
    def Ack(self, request, context):
        group = self._group(request)
        with self._connect(self._dsn(request.stream)) as conn:
            pgstream.ensure_schema(conn)
            return stream_pb2.StreamAckResponse(acked=pgstream.ack(conn, request.stream, group, list(request.ids)))

    @rpc
    def Replay(self, request, context):
        group = self._group(request)
        since = request.since.ToDatetime(tzinfo=__import__("datetime").UTC) if request.HasField("since") else None
        from_lsn = None
        if since is None:
            if not request.from_lsn:
                raise ConfigError("Replay", [FieldProblem("since", "give since (a time) or from_lsn")])
            try:
                from_lsn = parse_lsn(request.from_lsn)
            except ValueError as exc:
                raise ConfigError("Replay", [FieldProblem("from_lsn", str(exc))]) from None
        with self._connect(self._dsn(request.stream)) as conn:
            return stream_pb2.StreamReplayResponse(reset=pgstream.replay(conn, request.stream, group, since, from_lsn))
