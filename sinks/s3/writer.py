"""S3 destination (``type: s3``): change batches as objects in a wire format, Hive-partitioned per table.

Layout. One object per segment of a batch (:func:`wallaby.wire.encode`) and partition value::

    {prefix}/{schema}.{table}/{p1}={v1}/.../{flow_id}-{FIRST_LSN}-{FIRST_ORD}-{LAST_LSN}-{LAST_ORD}.{ext}[.gz]
    {prefix}/_events/{flow_id}-....{ext}[.gz]         truncates and logical messages
    {prefix}/_wallaby/{flow_id}/{destination}.json    state: the high-water position

A flow of several slots (source option ``slots``) writes through one writer per slot: slot i's objects are named
``{flow_id}.{i}-...`` and its state is ``{destination}#{i}.json`` (URL-quoted).

LSNs are 16 upper-case hex digits, ordinals 8: names sort in WAL order and give back their positions. ``ext``:
json, arrow, parquet, avro, pb (proto); ``wallaby.wire.decode(data, format)`` reads every object. Partition
directories: ``col=value``; ``col:day|hour|month|year`` -> ``col_day=2024-03-10``, ``col_hour=2024-03-10T07``,
``col_month=2024-03``, ``col_year=2024`` (UTC; ``infinity``/``-infinity``), from the after image, the before
image for deletes (only the key unless REPLICA IDENTITY FULL); NULL or a column the table lacks is
``__null__``; names and values percent-escaped (only ``-._~`` kept). ``_``-directories are hidden from Hive-style
readers. ``compression: gzip`` gzips the payload (mtime 0: a retry uploads the same bytes) and adds ``.gz``;
Content-Type is then ``application/gzip`` with no Content-Encoding, so no HTTP client inflates it silently.

Exactly once. Positions ``(lsn, ordinal)`` are totally ordered and stable; after a crash the source replays
every change after the slot's confirmed position, each batch holding every change after the previous batch's
position up to its own, with boundaries that may differ from the first attempt. ``write`` encodes a batch
and uploads its objects on a thread pool; ``commit`` returns once every upload returned (an acknowledged PUT
is atomic and durable), after overwriting the state object with the last position taken. So every change at
or below the stored high-water is in exactly one object. At start the writer lists the keys under the prefix
whose name is of this flow and format and whose *last* position is above the high-water (objects of a
crashed epoch), downloads them and skips every change at or below the high-water or held by one of them.
(Their maximum last position is not a safe high-water: partitions interleave in WAL order, so a crash can
leave an object with later changes while one with earlier changes never landed.) Orphans stay (an S3 event may
have fed them to a consumer already); no change lands in a second object. PUTs carry ``If-None-Match: *``;
"already exists" is the same positions of this flow and format, so it counts as written; a server rejecting
the header gets plain PUTs from then on. Limits: two S3 destinations of one flow must not share bucket,
prefix and format; a fenced worker may upload one epoch more before it stops (possible duplicates under other
names); startup lists every key under the prefix.

Client: explicit ``access_key``/``secret_key``/``session_token``, else boto3's default chain; ``region`` picks
the partition (``us-gov-*``: GovCloud endpoints, ``cn-*``: amazonaws.com.cn) with ``use_fips`` and
``use_dualstack``; ``endpoint`` (``https://`` without a scheme) and ``force_path_style`` for MinIO and the
like. After boto3's own retries, throttling, 5xx and connection errors are :class:`TransientSinkError`; a
missing bucket, denied access and other client errors :class:`PermanentSinkError`, naming bucket and
endpoint, never a key.
"""

from __future__ import annotations

import gzip
import logging
import re
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import boto3
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from sinks.base import (
    HighWater,
    PermanentSinkError,
    SinkError,
    TransientSinkError,
    Writer,
    WriterSink,
)
from sinks.s3.options import S3DestinationOptions
from wallaby.core.changes import (
    BEFORE_PREFIX,
    LSN_COL,
    OP_COL,
    ORD_COL,
    ZERO,
    ChangeBatch,
    Event,
    Position,
    TableChanges,
)
from wallaby.core.identity import SourceCheck, SourceIdentity, destination_of
from wallaby.wire import decode, encode_segment, segment_of
from wallaby.wire.formats import CONTENT_TYPES
from wallaby.wire.model import plain_type
from wallaby.wire.values import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, US_PER_DAY, civil_from_days

log = logging.getLogger("wallaby.sinks.s3")

EXTENSIONS = {"json": "json", "arrow": "arrow", "parquet": "parquet", "avro": "avro", "proto": "pb"}
NULL_VALUE = "__null__"
EVENTS_DIR = "_events"
STATE_DIR = "_wallaby"
MAX_IN_FLIGHT = 16
_NAME_RE = re.compile(r"^(?P<flow>.+)-(?P<fl>[0-9A-F]{16})-(?P<fo>[0-9A-F]{8,16})-(?P<ll>[0-9A-F]{16})"
                      r"-(?P<lo>[0-9A-F]{8,16})\.(?P<ext>[a-z]+)(?P<gz>\.gz)?$")
_PERMANENT_AUTH = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                   "ExpiredToken", "AccountProblem", "InvalidClientTokenId", "UnrecognizedClientException"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
              "InternalError", "ServiceUnavailable", "OperationAborted", "ConditionalRequestConflict",
              "RequestLimitExceeded", "TooManyRequestsException", "BandwidthLimitExceeded"}
_NO_CONDITIONAL = {"NotImplemented", "InvalidArgument", "InvalidRequest", "NotSupported"}


def object_name(flow_id: str, first: Position, last: Position, fmt: str, gzipped: bool) -> str:
    return (f"{flow_id}-{first.lsn:016X}-{first.ordinal:08X}-{last.lsn:016X}-{last.ordinal:08X}"
            f".{EXTENSIONS[fmt]}{'.gz' if gzipped else ''}")


def parse_object_name(key: str) -> tuple[str, Position, Position, str, bool] | None:
    """``(flow_id, first, last, ext, gzipped)`` of an object key written by this destination, else None."""
    m = _NAME_RE.match(key.rpartition("/")[2])
    if m is None:
        return None
    return (m["flow"], Position(int(m["fl"], 16), int(m["fo"], 16)), Position(int(m["ll"], 16), int(m["lo"], 16)),
            m["ext"], bool(m["gz"]))


def _base(prefix: str | None) -> str:
    return (prefix or "").strip("/") + "/" if (prefix or "").strip("/") else ""


def state_key(prefix: str | None, flow_id: str, destination: str) -> str:
    return f"{_base(prefix)}{STATE_DIR}/{quote(flow_id, safe='')}/{quote(destination, safe='')}.json"


def _esc(text: str) -> str:
    return quote(text, safe="")


def make_client(options: S3DestinationOptions, **config: Any) -> Any:
    """The boto3 S3 client the options describe (no request is made); ``config`` overrides botocore ``Config``
    settings (the preflight's short timeouts)."""
    s3_cfg: dict[str, Any] = {"addressing_style": "path" if options.force_path_style else "auto"}
    cfg: dict[str, Any] = {"s3": s3_cfg, "retries": {"mode": "standard", "max_attempts": 5},
                           "connect_timeout": 10, "read_timeout": 60, "max_pool_connections": MAX_IN_FLIGHT, **config}
    for value, key in ((options.use_fips, "use_fips_endpoint"), (options.use_dualstack, "use_dualstack_endpoint")):
        if value is not None:
            cfg[key] = bool(value)
    creds = {"aws_access_key_id": options.access_key, "aws_secret_access_key": options.secret_key,
             "aws_session_token": options.session_token or None} if options.access_key else {}
    session = boto3.session.Session(**creds)  # without keys: boto3's default chain
    endpoint = options.endpoint or None
    if endpoint and "://" not in endpoint:
        endpoint = "https://" + endpoint
    region = options.region or session.region_name or ("us-east-1" if endpoint else None)
    return session.client("s3", region_name=region, endpoint_url=endpoint, config=Config(**cfg))


# -- partition values ------------------------------------------------------------------------------------

def _temporal_text(v: int, days_only: bool, grain: str | None) -> str:
    top, bottom = (INT32_MAX, INT32_MIN) if days_only else (INT64_MAX, INT64_MIN)
    if v in (top, bottom):
        return "infinity" if v == top else "-infinity"
    days, rest = (v, 0) if days_only else divmod(v, US_PER_DAY)
    y, m, d = civil_from_days(days)
    year = f"{y:04d}" if 0 <= y <= 9999 else f"{y:+05d}"
    if grain == "year":
        return year
    if grain == "month":
        return f"{year}-{m:02d}"
    if grain == "day" or (grain is None and days_only):
        return f"{year}-{m:02d}-{d:02d}"
    secs, frac = divmod(rest, 1_000_000)
    if grain == "hour":
        return f"{year}-{m:02d}-{d:02d}T{secs // 3600:02d}"
    return f"{year}-{m:02d}-{d:02d}T{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{frac:06d}"


def _plain_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list | dict):
        return orjson.dumps(v, default=str).decode()
    return str(v)


def partition_texts(arr: pa.Array, grain: str | None) -> list[str]:
    """Each value's partition text (unescaped); ValueError for a grain on a column that is no date or time."""
    t = plain_type(arr.type)
    arr = arr.cast(t) if t != arr.type else arr
    if pa.types.is_date32(t) or pa.types.is_timestamp(t):
        days_only = pa.types.is_date32(t)
        if not days_only and t.unit != "us":
            arr = arr.cast(pa.timestamp("us", t.tz))
        ints = arr.cast(pa.int32() if days_only else pa.int64()).to_pylist()
        texts = {v: _temporal_text(v, days_only, grain) for v in set(ints) if v is not None}
        return [NULL_VALUE if v is None else texts[v] for v in ints]
    if grain is not None:
        raise ValueError(f"is {t}, and a :{grain} partition needs a date or timestamp column")
    return [NULL_VALUE if v is None else _plain_text(v) for v in arr.to_pylist()]


def partition_dirs(seg: TableChanges, partition_by: list[str]) -> list[str]:
    """Each row's partition directories (``a=1/b_day=2024-03-10/``); [] without partitioning."""
    if not partition_by:
        return []
    rows, n = seg.rows, len(seg)
    per_row = [""] * n
    ops = rows.column(OP_COL)
    for spec in partition_by:
        col, _, grain_text = spec.partition(":")
        grain = grain_text or None
        name = _esc(f"{col}_{grain}" if grain else col)
        if rows.schema.get_field_index(col) < 0:
            texts = [NULL_VALUE] * n
        else:
            arr = rows.column(col)
            if rows.schema.get_field_index(BEFORE_PREFIX + col) >= 0:
                plain = plain_type(arr.type)
                after, before = arr.cast(plain), rows.column(BEFORE_PREFIX + col).cast(plain)
                arr = pc.if_else(pc.equal(ops, "delete"), before, after)
            try:
                texts = partition_texts(arr, grain)
            except ValueError as exc:
                raise ValueError(f"partition_by {spec!r}: column {col!r} of {seg.table.qualified} {exc}") from None
        per_row = [f"{d}{name}={_esc(t)}/" for d, t in zip(per_row, texts, strict=True)]
    return per_row


# -- writer ----------------------------------------------------------------------------------------------

class S3Writer(Writer):
    """Uploads each batch's objects; ``commit`` waits for them and stores the high-water (module docstring)."""

    def __init__(self, name: str, flow_id: str, options: S3DestinationOptions, resume_state: Any = None, *,
                 client: Any = None, source: SourceCheck | None = None):
        self.name = name
        self.flow_id = flow_id
        # what its objects are named by: the flow, and the slot of a flow of several (each slot's part writes and
        # recovers its own objects: positions of two slots may be alike)
        part = name[len(destination_of(name)) + 1:]
        self.tag = f"{flow_id}.{part}" if part else flow_id
        self.options = options
        self.bucket = options.bucket
        self.fmt = options.format
        self.gzip = options.compression == "gzip"
        self.base = _base(options.prefix)
        self.state_key = state_key(options.prefix, flow_id, name)
        self.extra = {"flow": flow_id}
        self.client = client or make_client(options)
        self.endpoint = re.sub(r"//[^/@]*@", "//", options.endpoint or self.client.meta.endpoint_url or "AWS S3")
        self.conditional = True
        self.stats = {"objects": 0, "existing": 0, "written_changes": 0, "skipped_changes": 0}
        self._pool = ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix=f"wallaby-s3-{name}")
        self._in_flight: deque[Future[None]] = deque()
        self._failed: str | None = None
        self.source = source  # the flow's source: the stored high-water is judged against it, and stored with it
        stored, identity = self._read_state()
        self._hw = HighWater.judged(source, name, stored, identity,
                                    f"s3://{self.bucket}/{self.state_key} (destination {name!r})")
        if stored != ZERO and self._hw.stored == ZERO:  # discarded by a reset: gone for good, even if nothing comes
            self._s3(f"deleting the state object {self.state_key}", "delete_object", Key=self.state_key)
        # objects of a crashed epoch are only this source's when the high-water was kept
        self._skip, self._skip_max = self._find_orphans() if self._hw.stored == stored else (set(), ZERO)
        if resume_state and self._hw.stored == ZERO:
            log.info("destination %r: bytewax resume state %s but no state object at %s; writing what comes",
                     name, resume_state, self.state_key, extra=self.extra)

    # ------------------------------------------------------------------ public

    @property
    def high_water(self) -> Position:
        return self._hw.taken

    def write(self, batch: ChangeBatch) -> None:
        self._check_usable()
        if self._hw.replayed(batch):
            self.stats["skipped_changes"] += len(batch)
            return
        for seg in batch.segments:
            if isinstance(seg, Event):
                if self._hw.holds(seg.position) or (seg.position.lsn, seg.position.ordinal) in self._skip:
                    self.stats["skipped_changes"] += 1
                    continue
                self._submit(f"{self.base}{EVENTS_DIR}/", seg)
            elif len(seg):
                self._write_rows(seg)
        self._hw.advance(batch.position)
        if self._skip and self._hw.taken >= self._skip_max:
            self._skip, self._skip_max = set(), ZERO
        while len(self._in_flight) > MAX_IN_FLIGHT:
            self._wait(self._in_flight.popleft())

    def flush(self) -> None:
        """Wait until every object written so far is uploaded (``commit`` does this first)."""
        self._check_usable()
        while self._in_flight:
            self._wait(self._in_flight.popleft())

    def commit(self) -> dict[str, int] | None:
        self.flush()
        if self._hw.pending:
            high = self._hw.taken
            body = orjson.dumps({"flow_id": self.flow_id, "destination": self.name, "lsn": high.lsn,
                                 "ordinal": high.ordinal, "position": str(high),
                                 "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "source": self.source.current.to_json() if self.source else None})
            self._s3(f"writing the state object {self.state_key}", "put_object", Key=self.state_key, Body=body,
                     ContentType="application/json")
            self._hw.settle()
        stored = self._hw.stored
        return None if stored == ZERO else {"lsn": stored.lsn, "ordinal": stored.ordinal}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ writing

    def _write_rows(self, seg: TableChanges) -> None:
        n = len(seg)
        later = seg.since(self._hw.taken)
        if later is not None and self._skip:
            pos = zip(later.rows.column(LSN_COL).to_pylist(), later.rows.column(ORD_COL).to_pylist(), strict=True)
            keep = [(lsn, o) not in self._skip for lsn, o in pos]
            if not all(keep):
                later = TableChanges(later.table, later.rows.filter(pa.array(keep))) if any(keep) else None
        kept = len(later) if later is not None else 0
        self.stats["skipped_changes"] += n - kept
        if later is None or not kept:
            return
        table_dir = f"{self.base}{_esc(later.table.schema)}.{_esc(later.table.name)}/"
        try:
            dirs = partition_dirs(later, self.options.partition_by)
        except ValueError as exc:
            self._failed = str(exc)
            raise PermanentSinkError(self.name, str(exc)) from None
        if not dirs or len(set(dirs)) == 1:
            self._submit(table_dir + (dirs[0] if dirs else ""), later)
            return
        groups: dict[str, list[int]] = {}
        for i, d in enumerate(dirs):
            groups.setdefault(d, []).append(i)
        for d, idx in groups.items():
            self._submit(table_dir + d, TableChanges(later.table, later.rows.take(pa.array(idx, pa.int64()))))

    def _submit(self, directory: str, seg: TableChanges | Event) -> None:
        payload = encode_segment(segment_of(self.flow_id, seg), self.fmt)
        data = gzip.compress(payload.data, mtime=0) if self.gzip else payload.data
        key = directory + object_name(self.tag, payload.first, payload.last, self.fmt, self.gzip)
        meta = {"wallaby-flow": self.flow_id, "wallaby-format": self.fmt, "wallaby-rows": str(payload.rows),
                "wallaby-first": str(payload.first), "wallaby-last": str(payload.last)}
        content_type = "application/gzip" if self.gzip else CONTENT_TYPES[self.fmt]
        self.stats["written_changes"] += payload.rows
        self._in_flight.append(self._pool.submit(self._put, key, data, content_type, meta))

    def _put(self, key: str, data: bytes, content_type: str, meta: dict[str, str]) -> None:
        args = {"Key": key, "Body": data, "ContentType": content_type, "Metadata": meta}
        if self.conditional:
            try:
                self.client.put_object(Bucket=self.bucket, IfNoneMatch="*", **args)
            except ClientError as exc:
                code, status = _code(exc)
                if code == "PreconditionFailed" or status == 412:
                    log.info("destination %r: %s exists; counted as written", self.name, key, extra=self.extra)
                    self.stats["existing"] += 1
                    return
                if not (code in _NO_CONDITIONAL or status == 501):
                    raise self._error(exc, f"uploading {key}") from None
                if self.conditional:
                    log.warning("destination %r: %s rejects conditional writes (%s); using plain PUTs",
                                self.name, self.endpoint, code, extra=self.extra)
                self.conditional = False
            except BotoCoreError as exc:
                raise self._error(exc, f"uploading {key}") from None
            else:
                self.stats["objects"] += 1
                return
        self._s3(f"uploading {key}", "put_object", **args)
        self.stats["objects"] += 1

    def _s3(self, what: str, op: str, missing_ok: bool = False, **kw: Any) -> Any:
        """``client.<op>(Bucket=bucket, **kw)``; errors as sink errors; None for a missing key if ``missing_ok``."""
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kw)
        except ClientError as exc:
            if missing_ok and _code(exc)[0] in ("NoSuchKey", "404"):
                return None
            raise self._error(exc, what) from None
        except BotoCoreError as exc:
            raise self._error(exc, what) from None

    def _wait(self, fut: Future[None]) -> None:
        try:
            fut.result()
        except SinkError as exc:
            self._failed = str(exc)
            raise

    def _check_usable(self) -> None:
        if self._failed:
            raise PermanentSinkError(self.name, f"writer failed earlier and must be restarted: {self._failed}")

    # ------------------------------------------------------------------ recovery

    def _read_state(self) -> tuple[Position, SourceIdentity | None]:
        got = self._s3(f"reading the state object {self.state_key}", "get_object", True, Key=self.state_key)
        if got is None:
            return ZERO, None
        body = got["Body"].read()
        try:
            doc = orjson.loads(body)
            return Position(int(doc["lsn"]), int(doc["ordinal"])), SourceIdentity.from_json(doc.get("source"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise PermanentSinkError(self.name, f"state object s3://{self.bucket}/{self.state_key} is not a wallaby"
                                                " state (fix or remove it)") from None

    def _find_orphans(self) -> tuple[set[tuple[int, int]], Position]:
        """Positions held by objects a crashed epoch wrote above the stored high-water."""
        orphans: list[str] = []
        ext = EXTENSIONS[self.fmt]
        state_dir = f"{self.base}{STATE_DIR}/"
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.base):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.startswith(state_dir):
                        continue
                    parsed = parse_object_name(key)
                    if (parsed and parsed[0] == self.tag and parsed[3] == ext and parsed[4] == self.gzip
                            and parsed[2] > self._hw.stored):
                        orphans.append(key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"listing s3://{self.bucket}/{self.base}") from None
        skip: set[tuple[int, int]] = set()
        for key in orphans:
            data = self._s3(f"reading {key}", "get_object", Key=key)["Body"].read()
            try:
                seg = decode(gzip.decompress(data) if self.gzip else data, self.fmt)
            except Exception as exc:
                raise PermanentSinkError(self.name, f"s3://{self.bucket}/{key} holds changes of this flow but does"
                                                    f" not decode as {self.fmt}: {exc}") from None
            skip.update((r.lsn, r.ordinal) for r in seg.records)
        top = Position(*max(skip)) if skip else ZERO
        log.info("destination %r: s3://%s/%s at %s; high-water %s, %d object(s) of a crashed epoch above it"
                 " holding %d change(s)", self.name, self.bucket, self.base, self.endpoint, self._hw.stored,
                 len(orphans), len(skip), extra=self.extra)
        return skip, top

    # ------------------------------------------------------------------ errors

    def _error(self, exc: Exception, what: str) -> SinkError:
        where = f"bucket {self.bucket!r} at {self.endpoint}"
        if isinstance(exc, NoCredentialsError):
            return PermanentSinkError(self.name, f"{what}: no AWS credentials for {where}; set access_key and"
                                                 " secret_key or configure boto3's default chain")
        if isinstance(exc, HTTPClientError | BotoConnectionError | IncompleteReadError):
            return TransientSinkError(self.name, f"{what}: cannot reach {where}: {type(exc).__name__}")
        if not isinstance(exc, ClientError):
            return PermanentSinkError(self.name, f"{what} in {where}: {type(exc).__name__}: {exc}")
        code, status = _code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        if code == "NoSuchBucket":
            return PermanentSinkError(self.name, f"{what}: bucket {self.bucket!r} does not exist at {self.endpoint}")
        if code in _PERMANENT_AUTH or status == 403:
            return PermanentSinkError(self.name, f"{what}: access denied to {where} ({code}: {message}); check the"
                                                 " credentials and the bucket policy")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return TransientSinkError(self.name, f"{what}: {where} answered {code} ({status}): {message}")
        return PermanentSinkError(self.name, f"{what}: {where} answered {code} ({status}): {message}")


def _code(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    return str(err.get("Code", "")), int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def make_sink(name: str, flow_id: str, options: S3DestinationOptions, source: SourceCheck | None = None) -> WriterSink:
    """The destination of a flow spec (``sinks.s3.options.S3DestinationOptions``)."""
    return WriterSink(name, lambda resume_state: S3Writer(name, flow_id, options, resume_state, source=source))


def discard_position(name: str, flow_id: str, options: S3DestinationOptions) -> None:
    """Forget the high-water destination ``name`` holds for ``flow_id`` (a reset asked for by the user)."""
    make_client(options).delete_object(Bucket=options.bucket, Key=state_key(options.prefix, flow_id, name))


def stored_position(name: str, flow_id: str,
                    options: S3DestinationOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    """The high-water destination ``name`` holds for ``flow_id`` and its source (None: no state object).
    Reading it is the preflight's check that the bucket is there and readable, too."""
    client = make_client(options)
    key = state_key(options.prefix, flow_id, name)
    try:
        body = client.get_object(Bucket=options.bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if _code(exc)[0] in ("NoSuchKey", "404"):
            return None
        raise
    try:
        doc = orjson.loads(body)
        return (Position(int(doc["lsn"]), int(doc["ordinal"])), SourceIdentity.from_json(doc.get("source")),
                f"s3://{options.bucket}/{key}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None  # the writer names the bad state object at open


__all__ = ["S3Writer", "make_client", "make_sink", "object_name", "parse_object_name", "partition_dirs",
           "state_key"]
