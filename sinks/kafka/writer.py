"""Kafka destination (``type: kafka``; ``type: bufstream`` is the same, Bufstream speaks Kafka).

Messages: each table segment of a batch is split by Kafka partition, the
partition of a change chosen from a hash of its table and key (crc32 of
``schema.table`` + its key values as JSON, modulo the topic's partition count),
so every change of a key lands on the same partition in WAL order. Each
partition's rows are encoded as one wire payload (:mod:`wallaby.wire`,
``format``), cut into runs of rows of at most ``max_batch_bytes`` (sized by the
bytes a change of the table's last payload took, before encoding, and cut again
when still too big; json: the whole segment encoded once, each message cut from
it holding as many changes as fit); a single change larger than
``max_record_bytes`` is an error naming table and key
(``oversize_policy=error``) or is dropped, counted and logged (``drop``).
Message key: ``schema.table`` and the JSON key of the message's first change.
Headers: ``wallaby-flow``, ``wallaby-table``, ``wallaby-format``,
``wallaby-schema-version``, ``wallaby-first`` / ``wallaby-last`` (positions
``X/Y#ordinal``), ``content-type``.

Delivery: an idempotent producer (``enable.idempotence`` with ``acks=all``; the
other ``acks`` settings cannot be idempotent), ``compression``,
``message.max.bytes`` = ``max_message_bytes``. ``commit()`` flushes and returns
only when every delivery report of the epoch is in and none failed (a success
counts only with the offset the broker acked it at: not librdkafka's "implicit
ack", see ``_delivered``); otherwise the epoch fails (transient) and the slot does not advance: after a restart the
changes are sent again. So delivery is at least once; consumers can drop
repeats by the position headers. A broker that is down is waited for up to
``WALLABY_KAFKA_DELIVERY_TIMEOUT`` seconds (default 120) per epoch.

Errors name the brokers and the topic and are classified by librdkafka error
code (:func:`kafka_transient`): configuration, authentication, authorization
and records the brokers refuse are permanent; everything else (transport, all
brokers down, timeouts, no leader) is transient.
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sinks.base import PermanentSinkError, TransientSinkError, Writer, WriterSink
from sinks.kafka.options import KafkaDestinationOptions
from sinks.retry import Steps, retry
from wallaby.core import settings
from wallaby.core.changes import BEFORE_PREFIX, OP_COL, OP_DELETE, ChangeBatch, Event, TableChanges
from wallaby.core.errors import redact_dsn
from wallaby.core.identity import SourceCheck
from wallaby.wire import WirePayload, encode_cut, encode_segment, segment_of
from wallaby.wire.model import row_keys

log = logging.getLogger("wallaby.sinks.kafka")

ACKS = {"all": "all", "leader": "1", "none": "0"}
SPLIT_MARGIN = 1.2  # encoded sizes are not quite proportional to row counts
DELIVERY_TIMEOUT = settings.on_import().kafka_delivery_timeout  # WALLABY_KAFKA_DELIVERY_TIMEOUT, seconds


def key_hash(table: str, key: Any) -> int:
    return zlib.crc32(table.encode() + b"\x00" + orjson.dumps(key, default=str))


def key_hashes(seg: TableChanges) -> list[int]:
    """``[key_hash(table, k) for k in row_keys(seg)]``: each change's partition hash. When every key column is an
    integer (most primary keys) the keys' JSON is written column-wise by Arrow (``[1]``, ``[1,2]``, ``[null]``: what
    orjson writes for them) and only the crc32 runs per change; it cost ~1.7 us a change through ``row_keys`` and
    orjson, a fifth of the writer's time in Arrow format."""
    table = seg.table.qualified
    texts = _int_key_json(seg)
    if texts is None:
        return [key_hash(table, k) for k in row_keys(seg)]
    base = zlib.crc32(table.encode() + b"\x00")
    return [zlib.crc32(t, base) for t in texts]


def _int_key_json(seg: TableChanges) -> list[bytes] | None:
    """The JSON of each change's key (the old key where ``row_keys`` takes it) when every key column is an integer
    column; None otherwise."""
    names = list(seg.table.key_names)
    rows = seg.rows
    if not names or not all(pa.types.is_integer(rows.column(k).type) for k in names):
        return None
    old = None
    if seg.has_before:
        befores = [rows.column(BEFORE_PREFIX + k) for k in names]
        if not all(b.type == rows.column(k).type for b, k in zip(befores, names, strict=True)):
            return None
        old = pc.equal(rows.column(OP_COL), OP_DELETE)
        for b in befores:
            old = pc.or_(old, b.is_valid())
    texts = []
    for k in names:
        values = rows.column(k)
        if old is not None:
            values = pc.if_else(old, rows.column(BEFORE_PREFIX + k), values)
        texts.append(pc.fill_null(values.cast(pa.string()), "null"))
    inner = texts[0] if len(texts) == 1 else pc.binary_join_element_wise(*texts, ",")
    return pc.binary_join_element_wise("[", inner, "]", "").cast(pa.binary()).to_pylist()


# librdkafka error codes that retrying cannot cure: configuration, authentication, authorization, a record the
# brokers refuse. Every other code (transport, all brokers down, timeouts, no leader, not enough replicas, codes
# this list does not know) is transient: a broker that is away must never fail a flow for good.
_PERMANENT_CODES = ("_INVALID_ARG", "_AUTHENTICATION", "_SSL", "_UNSUPPORTED_FEATURE", "_UNKNOWN_PROTOCOL",
                    "_INVALID_TYPE", "_FATAL", "MSG_SIZE_TOO_LARGE", "INVALID_MSG",
                    "INVALID_MSG_SIZE", "INVALID_RECORD", "RECORD_LIST_TOO_LARGE", "INVALID_REQUIRED_ACKS",
                    "TOPIC_EXCEPTION", "TOPIC_AUTHORIZATION_FAILED",
                    "CLUSTER_AUTHORIZATION_FAILED", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
                    "SASL_AUTHENTICATION_FAILED", "ILLEGAL_SASL_STATE", "UNSUPPORTED_SASL_MECHANISM",
                    "UNSUPPORTED_VERSION", "UNSUPPORTED_COMPRESSION_TYPE", "POLICY_VIOLATION",
                    "DELEGATION_TOKEN_AUTHORIZATION_FAILED", "PRINCIPAL_DESERIALIZATION_FAILURE")


def kafka_transient(err: Any) -> bool:
    """Whether a librdkafka ``KafkaError`` may pass, by its code (never its text): see :data:`_PERMANENT_CODES`;
    an idempotent producer's fatal error is permanent too."""
    from confluent_kafka import KafkaError

    if err.fatal():
        return False
    return err.code() not in {getattr(KafkaError, name) for name in _PERMANENT_CODES if hasattr(KafkaError, name)}


def kafka_error(name: str, err: Any, what: str) -> PermanentSinkError | TransientSinkError:
    """A sink error for ``err`` (a ``KafkaError``), transient or permanent by its code; ``what`` says what was tried
    where (the topic, the brokers)."""
    text = f"{what}: {err.name()}: {redact_dsn(err.str())}"
    return TransientSinkError(name, text) if kafka_transient(err) else PermanentSinkError(name, text)


_TOPIC_STEPS = Steps(0.5)  # the wait between two looks at a topic's metadata


class _TopicNotReady(Exception):
    """The topic has no partitions yet (``err``: the transient ``KafkaError`` the brokers answered, or None)."""

    def __init__(self, err: Any):
        super().__init__(err)
        self.err = err


class KafkaWriter(Writer):
    def __init__(self, name: str, flow_id: str, options: KafkaDestinationOptions):
        from confluent_kafka import KafkaException, Producer

        self.name, self.flow_id, self.options = name, flow_id, options
        self.topic = options.topic
        self._brokers = redact_dsn(",".join(options.brokers))
        conf = {
            "bootstrap.servers": ",".join(options.brokers),
            "acks": ACKS[options.acks],
            "enable.idempotence": options.acks == "all",
            "compression.type": options.compression,
            "message.max.bytes": max(options.max_message_bytes, 1000) + 1024,  # + record overhead
            "linger.ms": 5,
            "delivery.timeout.ms": int(DELIVERY_TIMEOUT * 1000),
            "client.id": f"wallaby-{flow_id}-{name}",
            "error_cb": self._on_error,
        }
        try:
            self.producer = Producer(conf)
        except KafkaException as exc:  # a setting librdkafka refuses
            raise kafka_error(name, exc.args[0], f"cannot set up a producer for brokers {self._brokers}") from None
        self.partitions = self._partition_count()
        self.failed: list[str] = []
        self.permanent: list[str] = []
        self.in_flight = 0
        self.stats = {"messages": 0, "changes": 0, "dropped": 0}
        self._row_bytes: dict[str, float] = {}  # table -> bytes a change of its last payload took (see _sized)

    def _on_error(self, err) -> None:
        log.warning("destination %s: kafka: %s", self.name, err, extra={"flow": self.flow_id})

    def _partition_count(self) -> int:
        """The topic's partitions. A topic the brokers create on first use answers "unknown" or "no leader" for
        a moment: asked again every 0.5 s until more than 30 s have passed."""
        from confluent_kafka import KafkaError, KafkaException

        what = f"topic {self.topic!r} is not usable on brokers {self._brokers}"

        def ask() -> int:
            try:
                md = self.producer.list_topics(self.topic, timeout=30)
            except KafkaException as exc:  # no broker answered (transport, timeout) or one refused us (auth)
                raise kafka_error(self.name, exc.args[0], f"cannot fetch the metadata of topic {self.topic!r} from"
                                                          f" brokers {self._brokers}") from None
            topic = md.topics.get(self.topic)
            if topic is not None and topic.error is None and topic.partitions:
                return len(topic.partitions)
            err = topic.error if topic is not None else None
            if err is not None and not kafka_transient(err):  # not authorized, invalid name
                raise kafka_error(self.name, err, what)
            raise _TopicNotReady(err)

        try:
            # a wait starts only if it ends within deadline: asked again while at most 30 s have passed
            return retry(ask, policy=_TOPIC_STEPS, retryable=lambda exc: isinstance(exc, _TopicNotReady),
                         deadline=30 + _TOPIC_STEPS.first)
        except _TopicNotReady as exc:
            err = exc.err
            if err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise PermanentSinkError(self.name, f"{what}: it does not exist and the brokers do not create"
                                                    " it (create it, or enable auto.create.topics.enable)") from None
            if err is not None:
                raise kafka_error(self.name, err, what + " (for 30 s)") from None
            raise TransientSinkError(self.name, f"{what}: no partitions (for 30 s)") from None

    # -- splitting ------------------------------------------------------------------------------
    def _payloads(self, seg: TableChanges) -> list[tuple[int, WirePayload, Any]]:
        """(partition, payload, first key) for a table segment: by key hash, then by size."""
        parts = np.array(key_hashes(seg), dtype=np.int64) % self.partitions
        groups = [(p, np.flatnonzero(parts == p)) for p in np.unique(parts).tolist()]
        out: list[tuple[int, WirePayload, Any]] = []
        cut = encode_cut(self.flow_id, seg, self.options.format, self.options.max_batch_bytes,
                         [idx for _, idx in groups] if len(groups) > 1 else None)
        if cut is not None:  # json: the segment encoded once, each payload as full as it can be
            for (p, _), payloads in zip(groups, cut, strict=True):
                for payload in payloads:
                    for kept in self._fits(payload):
                        first = row_keys(TableChanges(seg.table, kept.segment.rows.slice(0, 1)))[0]
                        out.append((p, kept, first))
            return out
        for p, idx in groups:
            part = seg if len(idx) == len(parts) else TableChanges(seg.table, seg.rows.take(pa.array(idx)))
            offset = 0
            for payload in self._sized(part):
                first = row_keys(TableChanges(seg.table, part.rows.slice(offset, 1)))[0] if offset < len(part) else None
                out.append((p, payload, first))
                offset += payload.rows
        return out

    def _sized(self, seg: TableChanges) -> list[WirePayload]:
        """``seg`` encoded in payloads of at most ``max_batch_bytes`` (a single change may be more: see
        :meth:`_oversize`). A segment that the size of the table's last payload says is too big is cut before it
        is encoded: encoding it whole first, to learn its size, doubled the encoding's cost of every message cut
        (JSON at batch_size 10000: a third of the writer's time). JSON does not come here: it is encoded once
        and cut after (:func:`wallaby.wire.encode_cut`)."""
        limit, table = self.options.max_batch_bytes, seg.table.qualified
        per_row = self._row_bytes.get(table)
        if per_row is None or len(seg) * per_row * SPLIT_MARGIN <= limit:
            return self._encoded(seg)
        out: list[WirePayload] = []
        start = 0
        while start < len(seg):  # each run sized by the latest payload's bytes a change
            step = max(1, int(limit / (per_row * SPLIT_MARGIN)))
            out += self._encoded(TableChanges(seg.table, seg.rows.slice(start, step)))
            start += step
            per_row = self._row_bytes[table]
        return out

    def _encoded(self, seg: TableChanges) -> list[WirePayload]:
        payload = encode_segment(segment_of(self.flow_id, seg), self.options.format)
        self._row_bytes[seg.table.qualified] = len(payload.data) / len(seg)
        if len(payload.data) <= self.options.max_batch_bytes or len(seg) == 1:
            return self._fits(payload)
        # Too big: cut into as many equal runs of rows as the size says (with a margin), so the rows are encoded
        # about twice in all rather than once per halving; a run that is still too big is cut again.
        pieces = min(len(seg), max(2, math.ceil(len(payload.data) * SPLIT_MARGIN / self.options.max_batch_bytes)))
        step = math.ceil(len(seg) / pieces)
        out = []
        for start in range(0, len(seg), step):
            out += self._encoded(TableChanges(seg.table, seg.rows.slice(start, step)))
        return out

    def _fits(self, payload: WirePayload) -> list[WirePayload]:
        """``[payload]``, or what :meth:`_oversize` makes of a single change over ``max_record_bytes``."""
        if payload.rows == 1 and len(payload.data) > self.options.max_record_bytes:
            return self._oversize(payload)
        return [payload]

    def _oversize(self, payload: WirePayload) -> list[WirePayload]:
        key = row_keys(TableChanges(payload.segment.table_schema(), payload.segment.rows))[0]
        what = (f"a change of {payload.table} (key {orjson.dumps(key, default=str).decode()}, at {payload.first})"
                f" encodes to {len(payload.data)} bytes, over max_record_bytes={self.options.max_record_bytes}")
        if self.options.oversize_policy == "error":
            raise PermanentSinkError(self.name, what + " (oversize_policy=drop drops such changes)")
        self.stats["dropped"] += 1
        log.warning("destination %s: dropped %s (oversize_policy=drop)", self.name, what, extra={"flow": self.flow_id})
        return []

    # -- producing ------------------------------------------------------------------------------
    def _delivered(self, err, msg) -> None:
        self.in_flight -= 1
        if err is None:
            offset = msg.offset()  # None when librdkafka has none
            if (offset is None or offset < 0) and self.options.acks != "none":
                # A broker's ack names the offset. Without one, librdkafka inferred the delivery from the ack of a
                # later batch ("implicit ack"); a broker accepts any first sequence number from a producer it has no
                # state for (a new topic, a new leader), so that proves nothing: not counted as delivered.
                self.failed.append(f"partition {msg.partition()}: a delivery was reported without an offset"
                                   " (implicitly acked by a later batch), not confirmed by the broker")
            return
        text = f"{err.name()}: {err.str()}"
        (self.failed if kafka_transient(err) else self.permanent).append(text)

    def _produce(self, partition: int, payload: WirePayload, first_key: Any = None) -> None:
        from confluent_kafka import KafkaException

        key = payload.table.encode() + b":" + orjson.dumps(first_key, default=str)
        headers = [("wallaby-flow", self.flow_id.encode()), ("wallaby-table", payload.table.encode()),
                   ("wallaby-format", payload.format.encode()),
                   ("wallaby-schema-version", str(payload.segment.schema_version).encode()),
                   ("wallaby-first", str(payload.first).encode()), ("wallaby-last", str(payload.last).encode()),
                   ("content-type", payload.content_type.encode())]
        while True:
            try:
                self.producer.produce(self.topic, payload.data, key, partition=partition, headers=headers,
                                      on_delivery=self._delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain (backpressure)
                self.producer.poll(0.1)
            except KafkaException as exc:
                raise kafka_error(self.name, exc.args[0], f"cannot produce to topic {self.topic!r} on brokers"
                                                          f" {self._brokers}") from None
        self.in_flight += 1
        self.stats["messages"] += 1
        self.stats["changes"] += payload.rows
        self.producer.poll(0)

    def write(self, batch: ChangeBatch) -> None:
        for seg in batch.segments:
            if isinstance(seg, TableChanges) and len(seg):
                for partition, payload, first_key in self._payloads(seg):
                    self._produce(partition, payload, first_key)
            elif isinstance(seg, Event):
                wire = segment_of(self.flow_id, seg)
                payload = encode_segment(wire, self.options.format)
                self._produce(key_hash(wire.table, None) % self.partitions, payload)

    def commit(self) -> Any:
        remaining = self.producer.flush(DELIVERY_TIMEOUT)
        if self.permanent:
            errors, self.permanent = self.permanent, []
            raise PermanentSinkError(self.name, f"brokers {self._brokers} refused messages for topic"
                                                f" {self.topic!r}: {errors[0]} ({len(errors)} in all)")
        if remaining or self.failed:
            errors, self.failed = self.failed, []
            why = errors[0] if errors else f"{remaining} messages still undelivered after {DELIVERY_TIMEOUT:.0f}s"
            raise TransientSinkError(self.name, f"delivery to topic {self.topic!r} on brokers {self._brokers} failed:"
                                                f" {why}; the slot does not advance")
        return dict(self.stats)

    def close(self) -> None:
        self.producer.flush(5)


def make_sink(name: str, flow_id: str, options: KafkaDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    # no high-water of its own (at least once, positions in every record): ``source`` is not needed
    return WriterSink(name, lambda resume_state: KafkaWriter(name, flow_id, options))
