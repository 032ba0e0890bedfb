"""OpenTelemetry signals wallaby emits (through the API: an SDK and exporter configured by the process, e.g. the
ops tooling, decide where they go; without one they cost nothing).

- ``ddl_gated``: the OpenTelemetry event ``ddl.gated`` (a log record with that event name), the trace event
  ``ddl_gate`` on the current span, the counter ``wallaby.ddl.gated_total`` (Prometheus exporters show
  ``wallaby_ddl_gated_total``), and a log line containing ``ddl gate:``.
"""

from __future__ import annotations

import logging

from opentelemetry import _logs, metrics, trace

log = logging.getLogger("wallaby.ddl")

_counter = None


def _gated_counter():
    global _counter
    if _counter is None:
        _counter = metrics.get_meter("wallaby").create_counter(
            "wallaby.ddl.gated_total", unit="1", description="DDL statements held by a flow's DDL gate")
    return _counter


def ddl_gated(flow_id: str, table: str, statement: str, event_id: int) -> None:
    attrs = {"wallaby.flow": flow_id, "wallaby.table": table, "wallaby.ddl": statement[:1000],
             "wallaby.ddl_event_id": event_id}
    _gated_counter().add(1, {"wallaby.flow": flow_id})
    trace.get_current_span().add_event("ddl_gate", attrs)
    _logs.get_logger("wallaby").emit(event_name="ddl.gated", attributes=attrs, body=f"ddl gate: {statement[:200]}")
    log.warning("ddl gate: flow=%s table=%s statement=%s (DDL event %d is pending: approve or reject it with"
                " wallaby-admin ddl approve|reject -id %d)", flow_id, table or "-", " ".join(statement.split()),
                event_id, event_id, extra={"flow": flow_id})
