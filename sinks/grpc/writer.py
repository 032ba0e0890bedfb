"""gRPC destination (``type: grpc``): a client of ``wallaby.v1.IngestService/IngestBatch``.

Each wire payload of a batch (one per table segment, :mod:`wallaby.wire`) is
one ``IngestBatch`` call, in WAL order, carrying the remote ``flow_id`` (default:
this flow's id), the ``destination`` (default: this destination's name), the
wire format, the payload and a checkpoint (the payload's last position: ``lsn``
plus ``ordinal`` in its metadata). ``payload_mode`` travels as the metadata
``x-wallaby-payload-mode``; ``record_json`` sends a JSON array of single-change
objects instead of the wire payload. ``headers`` become call metadata.

Delivery is synchronous inside ``write``: UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED and ABORTED are retried ``max_retries`` times with jittered
exponential backoff (``backoff_base`` * ``backoff_factor``^n, at most
``backoff_max``), then the batch fails as transient; any other status fails it
at once (permanent). At least once: a replay after a crash sends changes again
with the same positions; a wallaby receiver applies them idempotently
(its destinations skip what they hold).

TLS unless ``insecure`` (the default, as upstream): ``tls_ca_file`` for a
private CA, ``tls_server_name`` to override the name checked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

from sinks.base import PermanentSinkError, TransientSinkError, Writer, WriterSink
from sinks.grpc.options import GRPCDestinationOptions
from sinks.retry import Backoff, retry
from wallaby.core.changes import ChangeBatch, format_lsn
from wallaby.core.errors import redact_dsn
from wallaby.core.identity import SourceCheck, destination_of
from wallaby.v1 import ingest_pb2, ingest_pb2_grpc, types_pb2
from wallaby.wire import encode
from wallaby.wire.jsontext import json_text

log = logging.getLogger("wallaby.sinks.grpc")

TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED})


def _transient_rpc(exc: Exception) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() in TRANSIENT_CODES


class GRPCWriter(Writer):
    def __init__(self, name: str, flow_id: str, options: GRPCDestinationOptions):
        self.name = name
        self.flow_id = flow_id
        self.options = options
        if options.payload_mode == "wal":
            raise PermanentSinkError(name, "payload_mode=wal is for HTTP destinations; IngestBatch takes wire or"
                                           " record_json payloads")
        self.remote_flow = options.flow_id or flow_id
        self.remote_destination = options.destination or destination_of(name)
        self.metadata = (*((k.lower(), v) for k, v in options.headers.items()),
                         ("x-wallaby-payload-mode", options.payload_mode), ("x-wallaby-flow", flow_id))
        self.channel = self._channel()
        self.stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.backoff = Backoff(options.backoff_base, options.backoff_factor, options.backoff_max)
        self.sent = 0

    def _channel(self) -> grpc.Channel:
        o = self.options
        if o.insecure:
            return grpc.insecure_channel(o.endpoint)
        root = None
        if o.tls_ca_file:
            try:
                root = Path(o.tls_ca_file).expanduser().read_bytes()
            except OSError as exc:
                problem = f"cannot read tls_ca_file {o.tls_ca_file}: {exc.strerror}"
                raise PermanentSinkError(self.name, problem) from None
        opts = [("grpc.ssl_target_name_override", o.tls_server_name)] if o.tls_server_name else []
        return grpc.secure_channel(o.endpoint, grpc.ssl_channel_credentials(root), options=opts)

    def _request(self, payload):
        if self.options.payload_mode == "record_json":
            seg = payload.segment
            data = json_text(seg)
            fmt = types_pb2.WIRE_FORMAT_JSON
        else:
            data, fmt = payload.data, types_pb2.WireFormat.Value("WIRE_FORMAT_" + payload.format.upper())

        cp = types_pb2.Checkpoint(lsn=format_lsn(payload.last.lsn), metadata={
            "ordinal": str(payload.last.ordinal), "first": str(payload.first), "table": payload.table})
        return ingest_pb2.IngestBatchRequest(flow_id=self.remote_flow, destination=self.remote_destination,
                                             wire_format=fmt, payload=data, checkpoint=cp)

    def write(self, batch: ChangeBatch) -> None:
        for payload in encode(batch, self.options.format):
            self._send(self._request(payload), payload)

    def _send(self, request, payload) -> None:
        def log_retry(exc: Exception, attempt: int, delay: float) -> None:
            log.warning("destination %s: %s: %s; retrying in %.2fs", self.name, exc.code().name,
                        redact_dsn(exc.details() or ""), delay, extra={"flow": self.flow_id})

        try:
            resp = retry(lambda: self.stub.IngestBatch(request, metadata=self.metadata, timeout=self.options.timeout),
                         policy=self.backoff, retryable=_transient_rpc,
                         attempts=self.options.max_retries + 1, on_retry=log_retry, sleep=self.backoff.sleep)
        except grpc.RpcError as exc:
            code = exc.code()
            detail = redact_dsn(exc.details() or "")
            if code not in TRANSIENT_CODES:
                raise PermanentSinkError(self.name, f"{self.options.endpoint} refused the batch of {payload.table}"
                                                    f" at {payload.first}: {code.name}: {detail}") from None
            raise TransientSinkError(self.name, f"{self.options.endpoint}: {code.name}: {detail} (after"
                                                f" {self.options.max_retries} retries)") from None
        if not resp.accepted:
            raise PermanentSinkError(self.name, f"{self.options.endpoint} did not accept the batch of"
                                                f" {payload.table} at {payload.first}: {resp.message}")
        self.sent += payload.rows

    def commit(self) -> Any:
        return {"sent": self.sent}

    def close(self) -> None:
        self.channel.close()


def make_sink(name: str, flow_id: str, options: GRPCDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    # no high-water of its own (at least once, positions in every record): ``source`` is not needed
    return WriterSink(name, lambda resume_state: GRPCWriter(name, flow_id, options))
