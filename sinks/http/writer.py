"""HTTP / webhook destination (``type: http``): every change batch as HTTP requests to ``url``.

What it sends, in WAL order, synchronously inside ``write`` (``method``, default POST):

- ``payload_mode=wire`` (default): one request per wire payload of the batch
  (:mod:`wallaby.wire`: one per table segment or event), body = the payload in
  ``format`` (default json), ``Content-Type`` = the format's media type.
- ``payload_mode=record_json`` (alias ``raw``): one request per change, body = the
  single-change JSON object of :func:`wallaby.wire.record_json` (table, op, lsn,
  ordinal, commit_ts, xid, key, before, after, unchanged; events add ``tables`` and
  ``payload``), ``Content-Type: application/json``; ``format`` is ignored.
- ``payload_mode=wal``: one request per change, body = its pgoutput message
  (Insert/Update/Delete/Truncate, protocol as negotiated) exactly as the walsender
  sent it, Content-Type ``application/x-pgoutput`` (the source keeps the raw
  messages only when a destination asks for them).

Headers on every request: the configured ``headers``; ``X-Wallaby-Flow``;
``X-Wallaby-Table`` (``schema.table``, percent-encoded, so plain names stay as they
are; empty for an event naming no single table); ``X-Wallaby-Position`` (``X/Y#ord..X/Y#ord``,
the first and last change of the body); ``X-Wallaby-Format`` (the wire format, or
``record_json``); ``X-Wallaby-Rows``; and the idempotency key in
``idempotency_header`` (default ``Idempotency-Key``). A URL with ``user:password@``
sends them as HTTP basic auth; neither appears in errors or logs.

Idempotency key: 64 hex chars, sha256 of the compact JSON array
``[table, key, lsn, ordinal, ...]`` (keys of ``key`` sorted; :func:`idempotency_key`).
- record_json: the change's table, its key values (the ``key`` object of its JSON:
  the replica identity's columns, the whole old row under REPLICA IDENTITY FULL) and
  its position (commit LSN and ordinal). Positions are fixed by the WAL, so the same
  change gets the same key on every replay, after any restart, whatever the batching.
- wire: the payload's table, the key of its first change and its first and last
  positions. A replay of the same range gets the same key; after a restart the
  source may cut batches elsewhere, so a replayed payload can cover another range
  (and get another key): wire receivers dedupe per change by position.

Delivery guarantee: at least once. ``commit()`` has nothing left to do (every
request was answered 2xx inside ``write``); the slot advances only past epochs
whose requests were all answered. A crash replays from the last confirmed
position and resends what followed, with the same keys and positions: receivers
dedupe by the idempotency key (or by position). ``commit()`` returns
``{"delivered": changes, "requests": n, "position": [lsn, ordinal]}``; given back as
resume state (bytewax recovery), changes at or before that position are skipped.

Retries: 408, 429, 5xx, timeouts (``timeout`` seconds for the whole request) and
connection errors are retried ``max_retries`` times with full-jitter exponential
backoff (uniform in [0, min(``backoff_max``, ``backoff_base`` * ``backoff_factor``^n)],
:class:`sinks.retry.Backoff`), waiting at least a ``Retry-After`` (seconds or an
HTTP date) the server sends, honoured up to :data:`RETRY_AFTER_CAP` (60 s) so a
wild value cannot stall the flow for long. Exhausted: :class:`TransientSinkError`
(the worker stops; a restart resends). Any other status (4xx, 3xx: redirects are
not followed) is a :class:`PermanentSinkError` at once with the status and the
first 200 characters of the response body.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote

import orjson
import urllib3
from urllib3.util import parse_url

from sinks.base import PermanentSinkError, TransientSinkError, Writer, WriterSink
from sinks.http.options import HTTPDestinationOptions
from sinks.retry import Backoff, retry
from wallaby.core.changes import LSN_COL, ORD_COL, WAL_COL, ChangeBatch, Event, Position, TableChanges, parse_lsn
from wallaby.core.errors import TransientError, redact_dsn
from wallaby.core.identity import SourceCheck
from wallaby.wire import WireSegment, encode, segment_of
from wallaby.wire.jsonfmt import first_json_record, json_records
from wallaby.wire.model import row_keys

log = logging.getLogger("wallaby.sinks.http")

RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
RETRY_AFTER_CAP = 60.0  # seconds
BODY_EXCERPT = 200
_REDIRECT = " (redirects are not followed: set url to the final address)"
WAL_CONTENT_TYPE = "application/x-pgoutput"


def idempotency_key(table: str, key: Any, *positions: Position) -> str:
    """Fixed-length hex sha256 of (table, key, positions): the same change(s) always give the same key."""
    parts: list[Any] = [table, key]
    for p in positions:
        parts += [p.lsn, p.ordinal]
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header (delta seconds or an HTTP date) in seconds from now, capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def safe_url(url: str) -> str:
    """``url`` without userinfo and query (either may carry a secret)."""
    u = parse_url(url)
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.host}{port}{u.path or ''}"


@dataclass(frozen=True, slots=True)
class _Request:
    body: bytes
    content_type: str
    fmt: str
    table: str
    first: Position
    last: Position
    rows: int
    key: str


class HTTPWriter(Writer):
    def __init__(self, name: str, flow_id: str, options: HTTPDestinationOptions, resume_state: Any = None):
        self.name, self.flow_id, self.options = name, flow_id, options
        u = parse_url(options.url)
        self.display_url = safe_url(options.url)
        self.url = u._replace(auth=None).url
        self.headers = dict(options.headers)
        if u.auth and not any(k.lower() == "authorization" for k in self.headers):
            self.headers["Authorization"] = "Basic " + base64.b64encode(unquote(u.auth).encode()).decode()
        self.headers["X-Wallaby-Flow"] = flow_id
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=1, timeout=urllib3.Timeout(total=options.timeout),
                                        retries=False)
        self.backoff = Backoff(options.backoff_base, options.backoff_factor, options.backoff_max)
        self.delivered = 0  # changes
        self.requests = 0
        self.position: Position | None = None
        if isinstance(resume_state, dict) and resume_state.get("position"):
            self.position = Position.from_state(resume_state["position"])
        log.info("destination %s: delivering to %s (%s)", name, self.display_url, options.payload_mode,
                 extra={"flow": flow_id})

    # -- building requests

    def _requests(self, batch: ChangeBatch) -> Iterator[_Request]:
        if self.options.payload_mode == "wal":
            for s in batch.segments:
                if len(s):
                    yield from self._wal(s)
            return
        if self.options.payload_mode == "record_json":
            for s in batch.segments:
                if len(s):
                    yield from self._records(segment_of(batch.flow_id, s))
            return
        for p in encode(batch, self.options.format):
            seg = p.segment
            first_key = first_json_record(seg)["key"]
            yield _Request(p.data, p.content_type, p.format, p.table, p.first, p.last, p.rows,
                           idempotency_key(p.table, first_key, p.first, p.last))

    def _wal(self, seg: TableChanges | Event) -> Iterator[_Request]:
        """One request per change: its pgoutput message as the walsender sent it."""
        if isinstance(seg, Event):
            raw = seg.payload.get("wal")
            if raw is None:
                raise PermanentSinkError(self.name, "payload_mode=wal: this change carries no raw pgoutput message"
                                                    " (it did not come from the Postgres source)")
            table = seg.tables[0].qualified if len(seg.tables) == 1 else ""
            yield _Request(raw, WAL_CONTENT_TYPE, "wal", table, seg.position, seg.position, 1,
                           idempotency_key(table, None, seg.position))
            return
        if WAL_COL not in seg.rows.schema.names:
            raise PermanentSinkError(self.name, "payload_mode=wal: the batch carries no raw pgoutput messages")
        table = seg.table.qualified
        raws = seg.rows.column(WAL_COL).to_pylist()
        lsns, ords = seg.rows.column(LSN_COL).to_pylist(), seg.rows.column(ORD_COL).to_pylist()
        for raw, lsn, ordinal, key in zip(raws, lsns, ords, row_keys(seg), strict=True):
            pos = Position(lsn, ordinal)
            yield _Request(raw, WAL_CONTENT_TYPE, "wal", table, pos, pos, 1, idempotency_key(table, key, pos))

    def _records(self, seg: WireSegment) -> Iterator[_Request]:
        for obj in json_records(seg):
            if seg.is_event:
                obj["tables"] = seg.tables
                obj["payload"] = seg.event_payload
            pos = Position(parse_lsn(obj["lsn"]), obj["ordinal"])
            key = idempotency_key(seg.table, obj["key"], pos)
            yield _Request(orjson.dumps(obj), "application/json", "record_json", seg.table, pos, pos, 1, key)

    # -- delivering

    def write(self, batch: ChangeBatch) -> None:
        snapshot = batch.snapshot is not None  # a backfill's rows: outside the stream's order, never skipped
        if self.position is not None and not snapshot:
            batch = batch.since(self.position)
            if batch is None:
                return
        for req in self._requests(batch):
            self._send(req)
            self.delivered += req.rows
            self.requests += 1
            if not snapshot:
                self.position = req.last

    def _headers(self, req: _Request) -> dict[str, str]:
        return {**self.headers, "Content-Type": req.content_type, self.options.idempotency_header: req.key,
                "X-Wallaby-Table": quote(req.table, safe=""), "X-Wallaby-Position": f"{req.first}..{req.last}",
                "X-Wallaby-Format": req.fmt, "X-Wallaby-Rows": str(req.rows)}

    def _send(self, req: _Request) -> None:
        headers = self._headers(req)

        def log_retry(exc: Exception, attempt: int, delay: float) -> None:
            log.warning("destination %s: %s: %s; retry %d/%d in %.2fs", self.name, self.display_url, exc,
                        attempt + 1, self.options.max_retries, delay, extra={"flow": self.flow_id})

        try:
            retry(lambda: self._request_once(req, headers), policy=self.backoff,
                  retryable=lambda exc: isinstance(exc, _Retryable), attempts=self.options.max_retries + 1,
                  on_retry=log_retry, sleep=self.backoff.sleep)
        except _Retryable as exc:
            raise TransientSinkError(self.name, f"{self.display_url}: {exc} (after {self.options.max_retries}"
                                                " retries)", retry_after=exc.retry_after) from None

    def _request_once(self, req: _Request, headers: dict[str, str]) -> None:
        """One request: returns on 2xx, raises :class:`PermanentSinkError` or :class:`_Retryable`."""
        try:
            resp = self.pool.request(self.options.method, self.url, body=req.body, headers=headers,
                                     retries=False, redirect=False, preload_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Retryable(_describe(exc, self.options.timeout)) from None
        status = resp.status
        if 200 <= status < 300:
            return
        if status not in RETRY_STATUSES and status < 500:
            body = resp.data[:4 * BODY_EXCERPT].decode("utf-8", "replace")[:BODY_EXCERPT]
            raise PermanentSinkError(self.name, f"{self.display_url} refused the changes of"
                                                f" {req.table or 'an event'} at {req.first}: HTTP {status}"
                                                f" {resp.reason or ''}{_REDIRECT if status < 400 else ''}:"
                                                f" {redact_dsn(body)!r}")
        raise _Retryable(f"HTTP {status} {resp.reason or ''}".rstrip(),
                         retry_after_seconds(resp.headers.get("Retry-After")))

    def commit(self) -> Any:
        return {"delivered": self.delivered, "requests": self.requests,
                "position": self.position.to_state() if self.position else None}

    def close(self) -> None:
        self.pool.clear()


class _Retryable(TransientError):
    """A request worth sending again: what went wrong (the text) and the server's Retry-After, if any."""

    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.retry_after = retry_after


def _describe(exc: BaseException, timeout: float) -> str:
    timed_out = isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError)
    if timed_out and not isinstance(exc, urllib3.exceptions.NewConnectionError):  # the latter subclasses a timeout
        return f"no answer within {timeout:g}s ({type(exc).__name__})"
    reason = getattr(exc, "reason", None) or exc
    return redact_dsn(f"connection failed: {type(exc).__name__}: {reason}")


def make_sink(name: str, flow_id: str, options: HTTPDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    # no high-water of its own (at least once, positions in every record): ``source`` is not needed
    """The destination of a flow spec (``sinks.http.options.HTTPDestinationOptions``)."""
    return WriterSink(name, lambda resume_state: HTTPWriter(name, flow_id, options, resume_state))
