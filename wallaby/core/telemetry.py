"""OpenTelemetry for a wallaby process: the SDK set up from the standard ``OTEL_*`` variables, the Prometheus
``/metrics`` endpoint of ``WALLABY_METRICS_LISTEN``, and the signals of a held DDL (docs/metrics.md).

:func:`start` is called once per process by each entry point (``wallaby``: service ``wallaby``;
``wallaby-worker`` and ``bytewax.run dataflows.flow:flow``: ``wallaby-worker``; ``OTEL_SERVICE_NAME`` wins, then
``WALLABY_OTEL_SERVICE``, the Go build's name for it):

- ``WALLABY_METRICS_LISTEN=host:port`` (off by default): a ``MeterProvider`` with a Prometheus reader, served at
  ``http://host:port/metrics`` (any path answers) with the process's own collectors (``process_*``,
  ``python_*``). A bad value or an address that cannot be bound is one error naming the variable (exit 2).
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT`` for one signal):
  traces, metrics and logs exported by OTLP, ``http/protobuf`` unless ``OTEL_EXPORTER_OTLP[_<SIGNAL>]_PROTOCOL``
  says ``grpc``; ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER=none`` turns one off, ``OTEL_SDK_DISABLED=true`` all of
  them. The exporters read their own variables (headers, timeout, certificates, ``OTEL_METRIC_EXPORT_INTERVAL``),
  the resource ``OTEL_RESOURCE_ATTRIBUTES``.
- Neither: nothing is set up, and every instrument stays the API's no-op.

What is recorded is :mod:`wallaby.core.metrics`. ``ddl_gated`` (below): the OpenTelemetry event ``ddl.gated`` (a
log record with that event name), the trace event ``ddl_gate`` (on the current span, else on a span
``wallaby.ddl_gate`` of its own), the counter ``wallaby.ddl.gated_total`` (Prometheus:
``wallaby_ddl_gated_total``), and a log line containing ``ddl gate:``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry import _logs, metrics, trace

from wallaby.core import metrics as wallaby_metrics
from wallaby.core.errors import FieldProblem
from wallaby.core.settings import SettingsError, env_value, listen_address, split_listen

log = logging.getLogger("wallaby.ddl")
tlog = logging.getLogger("wallaby.telemetry")

METRICS_LISTEN = "WALLABY_METRICS_LISTEN"
OTEL_SERVICE = "WALLABY_OTEL_SERVICE"
SIGNALS = ("traces", "metrics", "logs")
PROTOCOLS = ("http/protobuf", "grpc")

_counter = None


@dataclass
class Telemetry:
    """What :func:`start` set up in this process."""

    service: str = ""
    otlp: dict[str, str] = field(default_factory=dict)  # signal -> protocol
    metrics_url: str | None = None
    metrics_port: int | None = None
    server: object | None = None


_lock = threading.Lock()
_started: Telemetry | None = None


def _otlp_signals(env: Mapping[str, str]) -> dict[str, str]:
    """The signals to export by OTLP and their protocol, from the standard variables."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return {}
    out: dict[str, str] = {}
    problems = []
    for signal in SIGNALS:
        upper = signal.upper()
        if not (env.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
            continue
        if env.get(f"OTEL_{upper}_EXPORTER", "otlp").strip().lower() == "none":
            continue
        var = f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL" if env.get(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL") else \
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        protocol = (env.get(var) or "http/protobuf").strip().lower()
        if protocol not in PROTOCOLS:
            problems.append(FieldProblem(var, f"{protocol!r} is not an OTLP protocol wallaby exports with (use"
                                              f" {' or '.join(PROTOCOLS)})"))
            continue
        out[signal] = protocol
    if problems:
        raise SettingsError(problems)
    return out


def _exporter(signal: str, protocol: str):
    if protocol == "grpc":
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            return OTLPSpanExporter()
        if signal == "metrics":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            return OTLPMetricExporter()
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        return OTLPLogExporter()
    if signal == "traces":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
        return HTTPSpanExporter()
    if signal == "metrics":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HTTPMetricExporter
        return HTTPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HTTPLogExporter
    return HTTPLogExporter()


def service_name(default_service: str, environ: Mapping[str, str] | None = None) -> str:
    """The OpenTelemetry service name: ``OTEL_SERVICE_NAME`` (the standard variable), else ``WALLABY_OTEL_SERVICE``
    (the Go build's name for it), else the process's own (``wallaby``, ``wallaby-worker``)."""
    env = os.environ if environ is None else environ
    return (env.get("OTEL_SERVICE_NAME") or "").strip() or (env.get(OTEL_SERVICE) or "").strip() or default_service


def start(default_service: str, environ: Mapping[str, str] | None = None) -> Telemetry:
    """Set up OpenTelemetry for this process once (module docstring); later calls return what the first did. A bad
    ``WALLABY_METRICS_LISTEN`` or OTLP protocol is a :class:`~wallaby.core.settings.SettingsError` naming it."""
    global _started
    env = os.environ if environ is None else environ
    with _lock:
        if _started is not None:
            return _started
        listen = env_value(METRICS_LISTEN, listen_address, env)
        otlp = _otlp_signals(env)
        done = Telemetry(service=service_name(default_service, env), otlp=otlp)
        if listen is None and not otlp:
            _started = done
            return done
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource

        resource = Resource.create({SERVICE_NAME: done.service})
        readers = []
        if listen is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            readers.append(PrometheusMetricReader(scope_info_enabled=False))
        if "metrics" in otlp:
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(_exporter("metrics", otlp["metrics"])))
        if readers:
            from opentelemetry.sdk.metrics import MeterProvider

            metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
        if "traces" in otlp:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            tracer_provider = TracerProvider(resource=resource)
            tracer_provider.add_span_processor(BatchSpanProcessor(_exporter("traces", otlp["traces"])))
            trace.set_tracer_provider(tracer_provider)
        if "logs" in otlp:
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

            logger_provider = LoggerProvider(resource=resource)
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(_exporter("logs", otlp["logs"])))
            _logs.set_logger_provider(logger_provider)
        if listen is not None:
            done.server, done.metrics_port = _serve(listen)
            host = split_listen(listen)[0] or "0.0.0.0"
            done.metrics_url = f"http://{host if ':' not in host else f'[{host}]'}:{done.metrics_port}/metrics"
        if otlp:
            tlog.info("OpenTelemetry: %s exported by OTLP as service %s",
                      ", ".join(f"{s} ({p})" for s, p in otlp.items()), done.service)
        _started = done
        return done


def _serve(listen: str) -> tuple[object, int]:
    """Serve the default Prometheus registry on ``listen``; a bind failure names the variable."""
    from prometheus_client import start_http_server

    host, port = split_listen(listen)
    try:
        server, _thread = start_http_server(port, addr=host or "0.0.0.0")
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise SettingsError([FieldProblem(METRICS_LISTEN, f"cannot serve metrics on {listen!r}: {reason}")]) \
            from None
    return server, server.server_address[1]


def worker_listen(listen: str) -> str:
    """``listen`` with port 0 (a free port): what the API server hands its local workers, which inherit its
    environment and could not all bind its own port."""
    host, _port = split_listen(listen)
    return f"[{host}]:0" if ":" in host else f"{host}:0"


def stop() -> None:
    """Stop serving ``/metrics`` (tests; a process's endpoint otherwise lives as long as it does)."""
    global _started
    with _lock:
        if _started is not None and _started.server is not None:
            _started.server.shutdown()
            _started.server.server_close()
        _started = None


def _gated_counter():
    return _counter if _counter is not None else wallaby_metrics.ddl_gated_total


def ddl_gated(flow_id: str, table: str, statement: str, event_id: int) -> None:
    attrs = {"wallaby.flow": flow_id, "wallaby.table": table, "wallaby.ddl": statement[:1000],
             "wallaby.ddl_event_id": event_id}
    _gated_counter().add(1, {"flow": flow_id})
    span = trace.get_current_span()
    if span.is_recording():
        _ddl_events(span, attrs, statement)
    else:
        with trace.get_tracer("wallaby").start_as_current_span("wallaby.ddl_gate", attributes=attrs) as own:
            _ddl_events(own, attrs, statement)
    log.warning("ddl gate: flow=%s table=%s statement=%s (DDL event %d is pending: approve or reject it with"
                " wallaby-admin ddl approve|reject -id %d)", flow_id, table or "-", " ".join(statement.split()),
                event_id, event_id, extra={"flow": flow_id})


def _ddl_events(span, attrs: dict, statement: str) -> None:
    span.add_event("ddl_gate", attrs)
    _logs.get_logger("wallaby").emit(event_name="ddl.gated", attributes=attrs, body=f"ddl gate: {statement[:200]}")


__all__ = ["METRICS_LISTEN", "OTEL_SERVICE", "Telemetry", "ddl_gated", "service_name", "start", "stop",
           "worker_listen"]
