"""Every metric wallaby records, defined once, through the OpenTelemetry API (docs/metrics.md lists them).

The instruments are created on import through the API's global meter: until
:func:`wallaby.core.telemetry.setup` installs an SDK ``MeterProvider`` (the
Prometheus ``/metrics`` endpoint of ``WALLABY_METRICS_LISTEN``, OTLP of
``OTEL_EXPORTER_OTLP_ENDPOINT``) they are no-ops; once it does, the same
instruments record into it. Prometheus shows ``wallaby.changes`` as
``wallaby_changes_total``, ``wallaby.commit.duration`` (unit ``s``) as
``wallaby_commit_duration_seconds``, and so on.

Recorded at batch and epoch granularity, never per row: the source notes the
commit time of the last change of each ``next_batch`` (one Arrow scalar), each
destination's output step counts each batch once (its length and Arrow size) and times each
destination's ``write``/``commit``; everything else (lag, confirmed LSN, the
flow store's flows) is read when a scrape or an export collects, by callbacks
on objects that registered themselves (:func:`watch_source`,
:func:`watch_flows`), holding them weakly.
"""

from __future__ import annotations

import contextvars
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from wallaby.core.changes import TS_COL, ChangeBatch, TableChanges
from wallaby.core.errors import is_transient

METER = "wallaby"
# Latency buckets in seconds: a fast local write (ms) up to a slow warehouse commit (minutes).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)

_meter = metrics.get_meter(METER)
_tracer = trace.get_tracer(METER)

changes = _meter.create_counter(
    "wallaby.changes", unit="1",
    description="Changes (rows and events) a destination committed, per flow and destination")
change_bytes = _meter.create_counter(
    "wallaby.change_bytes", unit="By",
    description="Arrow size of the changes a destination committed, per flow and destination")
epoch_write = _meter.create_histogram(
    "wallaby.epoch.write.duration", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
    description="Time one destination spent taking the batches of one epoch (its write calls), per flow and"
                " destination")
commit_duration = _meter.create_histogram(
    "wallaby.commit.duration", unit="s", explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
    description="Time one destination took to make an epoch durable (commit), per flow and destination")
destination_errors = _meter.create_counter(
    "wallaby.destination.errors", unit="1",
    description="Errors a destination raised from write or commit, per flow, destination, kind"
                " (transient|permanent) and operation (write|commit)")
destination_retries = _meter.create_counter(
    "wallaby.destination.retries", unit="1",
    description="Retries of a destination's request or wait, per flow and destination")
ddl_gated_total = _meter.create_counter(
    "wallaby.ddl.gated_total", unit="1", description="DDL statements held by a flow's DDL gate, per flow")
worker_starts = _meter.create_counter(
    "wallaby.worker.starts", unit="1", description="wallaby-worker processes started, per flow and mode")
worker_start_time = _meter.create_gauge(
    "wallaby.worker.start_time", unit="s",
    description="When this wallaby-worker started (Unix time), per flow: changes() counts restarts")


# -- destinations (sinks/fanout.py) -------------------------------------------------------------------

_destination: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("wallaby_destination",
                                                                                     default=None)


def destination_attributes(flow_id: str, destination: str) -> dict[str, str]:
    """The attributes of one destination's series (build once, pass to every record)."""
    return {"flow": flow_id, "destination": destination}


def batch_size(batch: ChangeBatch) -> tuple[int, int]:
    """``(changes, Arrow buffer bytes)`` of a batch: one pass over its segments, not its rows."""
    n = size = 0
    for seg in batch.segments:
        if isinstance(seg, TableChanges):
            n += seg.rows.num_rows
            size += seg.buffer_size()
        else:
            n += 1
    return n, size


class DestinationCall:
    """Times one call of a destination (``write`` or ``commit``: ``elapsed``, recorded in ``histogram`` if given),
    counts its error, and names the destination for :func:`retried` meanwhile:
    ``with DestinationCall(attrs, "commit", commit_duration): w.commit()``."""

    __slots__ = ("attrs", "elapsed", "histogram", "op", "start", "token")

    def __init__(self, attrs: dict[str, str], op: str, histogram: Any = None):
        self.attrs, self.op, self.histogram = attrs, op, histogram
        self.elapsed = 0.0

    def __enter__(self) -> DestinationCall:
        self.token = _destination.set(self.attrs)
        self.start = time.perf_counter()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.elapsed = time.perf_counter() - self.start
        _destination.reset(self.token)
        if exc is None:
            if self.histogram is not None:
                self.histogram.record(self.elapsed, self.attrs)
        elif isinstance(exc, Exception):
            destination_errors.add(1, {**self.attrs, "kind": _kind(exc), "operation": self.op})


def _kind(exc: BaseException) -> str:
    try:
        return "transient" if is_transient(exc) else "permanent"
    except Exception:  # never let a metric hide the error itself
        return "permanent"


def commit_span(flow_id: str, n: int, destination: str = ""):
    """The span of one epoch's commit in a destination (``wallaby.commit``)."""
    return _tracer.start_as_current_span("wallaby.commit", attributes={
        "wallaby.flow": flow_id, "wallaby.destination": destination, "wallaby.changes": n})


def retried() -> None:
    """A destination is about to retry (the retry loop calls it before each wait): counted against the
    destination whose ``write``/``commit`` is running on this thread, if any."""
    attrs = _destination.get()
    if attrs is not None:
        destination_retries.add(1, attrs)


# -- the source (sources/postgres/source.py) -----------------------------------------------------------


class SourceView(Protocol):
    """What a source partition shows the lag gauges (read at collection time, from another thread)."""

    flow_id: str

    def metrics_view(self) -> tuple[str, int, int, int | None, bool]:
        """``(slot, server WAL end, confirmed LSN, commit time of the last change emitted in µs or None,
        caught up)``."""
        ...


_sources: dict[int, weakref.ref] = {}
_sources_lock = threading.Lock()


def watch_source(partition: SourceView) -> None:
    """Report ``partition``'s lag and confirmed LSN while it lives (held weakly)."""
    with _sources_lock:
        key = id(partition)
        _sources[key] = weakref.ref(partition, lambda _ref, key=key: _sources.pop(key, None))


def _views() -> list[tuple[dict[str, str], tuple[str, int, int, int | None, bool]]]:
    with _sources_lock:
        parts = [ref() for ref in _sources.values()]
    out = []
    for p in parts:
        if p is None:
            continue
        try:
            view = p.metrics_view()
        except Exception:  # a partition closing meanwhile: skip it this time
            continue
        out.append(({"flow": p.flow_id, "slot": view[0]}, view))
    return out


def last_commit_us(batch: ChangeBatch) -> int | None:
    """The commit time (µs since the epoch) of the last change of ``batch``; None for a backfill's batch or an
    empty one. One Arrow scalar, per batch."""
    if batch.snapshot is not None or not batch.segments:
        return None
    seg = batch.segments[-1]
    if isinstance(seg, TableChanges):
        col = seg.rows.column(TS_COL)
        return col[len(col) - 1].value if len(col) else None
    return seg.commit_ts


def _lag_bytes(options: CallbackOptions) -> Iterable[Observation]:
    for attrs, (_slot, wal_end, confirmed, _ts, _caught_up) in _views():
        yield Observation(max(0, wal_end - confirmed), attrs)


def _lag_seconds(options: CallbackOptions) -> Iterable[Observation]:
    now_us = time.time() * 1_000_000
    for attrs, (_slot, _wal, _confirmed, ts, caught_up) in _views():
        lag = 0.0 if caught_up or ts is None else max(0.0, (now_us - ts) / 1_000_000)
        yield Observation(lag, attrs)


def _confirmed(options: CallbackOptions) -> Iterable[Observation]:
    for attrs, (_slot, _wal, confirmed, _ts, _caught_up) in _views():
        yield Observation(confirmed, attrs)


def _wal_end(options: CallbackOptions) -> Iterable[Observation]:
    for attrs, (_slot, wal_end, _confirmed, _ts, _caught_up) in _views():
        yield Observation(wal_end, attrs)


_meter.create_observable_gauge(
    "wallaby.replication_lag_bytes", callbacks=[_lag_bytes], unit="By",
    description="Server WAL position (as its keepalives last reported it) minus the slot's confirmed LSN, per flow"
                " and slot")
_meter.create_observable_gauge(
    "wallaby.replication_lag_seconds", callbacks=[_lag_seconds], unit="s",
    description="Now minus the commit time of the last change the source emitted, per flow and slot; 0 when the"
                " source has read all the WAL the server reported")
_meter.create_observable_gauge(
    "wallaby.confirmed_lsn", callbacks=[_confirmed], unit="1",
    description="The LSN the slot is confirmed to (durable in every destination and the checkpoint store), as a"
                " number, per flow and slot")
_meter.create_observable_gauge(
    "wallaby.server_wal_lsn", callbacks=[_wal_end], unit="1",
    description="The server's WAL end as its keepalives last reported it, as a number, per flow and slot")


# -- the API server (wallaby/control/server_cli.py) ----------------------------------------------------

_flow_lists: list[Callable[[], list[Any]]] = []


def watch_flows(list_flows: Callable[[], list[Any]]) -> None:
    """Report the flow store's flows (``list_flows()``: records with ``id``, ``state``, ``generation``)."""
    _flow_lists.append(list_flows)


def _stored_flows() -> list[Any]:
    out: list[Any] = []
    for list_flows in _flow_lists:
        try:
            out.extend(list_flows())
        except Exception:  # the store is away: nothing this time
            continue
    return out


def _flows_by_state(options: CallbackOptions) -> Iterable[Observation]:
    counts: dict[str, int] = {}
    for f in _stored_flows():
        counts[f.state] = counts.get(f.state, 0) + 1
    for state, n in sorted(counts.items()):
        yield Observation(n, {"state": state})


def _generations(options: CallbackOptions) -> Iterable[Observation]:
    for f in _stored_flows():
        yield Observation(f.generation, {"flow": f.id})


_meter.create_observable_gauge(
    "wallaby.flows", callbacks=[_flows_by_state], unit="1",
    description="Flows in the flow store, per lifecycle state (API server)")
_meter.create_observable_counter(
    "wallaby.worker.generation", callbacks=[_generations], unit="1",
    description="The flow's worker generation in the flow store, per flow (API server): one more at every worker"
                " launch, restarts included")


def worker_started(flow_id: str, mode: str) -> None:
    """``wallaby-worker`` started a flow."""
    worker_starts.add(1, {"flow": flow_id, "mode": mode})
    worker_start_time.set(time.time(), {"flow": flow_id})


__all__ = ["DestinationCall", "SourceView", "batch_size", "change_bytes", "changes", "commit_duration",
           "commit_span", "ddl_gated_total", "destination_attributes", "destination_errors", "destination_retries",
           "epoch_write", "last_commit_us", "retried", "watch_flows", "watch_source", "worker_started"]
