"""The test Kafka broker itself: an idempotent producer's messages come back in order, and a broker stopped and
started again mid-stream (same port, same data) loses and duplicates nothing."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict

from confluent_kafka import KafkaError, Producer

from tests.kafka_broker import consume_all, create_topic, kafka_broker  # noqa: F401 - fixture


def _producer(bootstrap: str, **extra) -> Producer:
    return Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 1000,
        **extra,
    })


def test_idempotent_producer_round_trip(kafka_broker):  # noqa: F811
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    producer = _producer(kafka_broker.bootstrap)
    reports: list[tuple] = []

    def on_delivery(err, msg):
        reports.append((err, msg.partition(), msg.offset(), msg.value()))

    for i in range(1000):
        producer.produce(topic, key=f"key-{i % 20}".encode(), value=f"msg-{i:04d}".encode(),
                         headers=[("seq", str(i).encode())], on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert len(reports) == 1000
    assert [r for r in reports if r[0] is not None] == []

    msgs = consume_all(kafka_broker.bootstrap, topic, timeout=30)
    assert len(msgs) == 1000
    assert {m.partition for m in msgs} == {0, 1, 2}  # auto-created with num.partitions=3
    # What was read is exactly what the delivery reports said was written, where they said.
    assert sorted((m.partition, m.offset, m.value) for m in msgs) == sorted(r[1:] for r in reports)

    by_partition = defaultdict(list)
    for m in msgs:
        by_partition[m.partition].append(m)
    for ms in by_partition.values():
        assert [m.offset for m in ms] == list(range(len(ms)))  # no gaps, no duplicates
        seqs = [int(dict(m.headers)["seq"]) for m in ms]
        assert seqs == sorted(seqs)  # produce order kept within a partition
    partitions_of_key = defaultdict(set)
    for m in msgs:
        assert m.value == f"msg-{int(dict(m.headers)['seq']):04d}".encode()
        partitions_of_key[m.key].add(m.partition)
    assert len(partitions_of_key) == 20 and all(len(ps) == 1 for ps in partitions_of_key.values())


def test_broker_restart_mid_stream_delivers_exactly_once(kafka_broker):  # noqa: F811
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    bootstrap = kafka_broker.bootstrap
    create_topic(bootstrap, topic, partitions=3)
    producer = _producer(bootstrap, **{"message.timeout.ms": 120000})
    produced: dict[bytes, float] = {}  # payload -> when it was produced
    delivered: dict[bytes, tuple[float, object]] = {}  # payload -> (when the report came, error)
    twice: list[bytes] = []  # payloads with a second delivery report (there must be none)
    done = threading.Event()

    def on_delivery(err, msg):
        if msg.value() in delivered:
            twice.append(msg.value())
        delivered[msg.value()] = (time.monotonic(), err)

    def produce_steadily():  # a message every ~5 ms, before, during and after the outage
        i = 0
        while not done.is_set():
            value = f"m-{i:06d}".encode()
            produced[value] = time.monotonic()
            producer.produce(topic, key=f"k{i % 7}".encode(), value=value, on_delivery=on_delivery)
            producer.poll(0)
            i += 1
            time.sleep(0.005)

    worker = threading.Thread(target=produce_steadily, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while len(delivered) < 100:  # the stream is flowing
            assert time.monotonic() < deadline, "nothing delivered before the restart"
            time.sleep(0.05)

        kafka_broker.stop()
        stopped_at = time.monotonic()
        try:
            # While the broker is down a produce is not delivered: with a bounded message timeout it fails.
            probe_reports = []
            probe = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 3000,
                              "reconnect.backoff.max.ms": 1000})
            probe.produce(topic, value=b"probe", on_delivery=lambda err, msg: probe_reports.append(err))
            t0 = time.monotonic()
            assert probe.flush(15) == 0
            assert time.monotonic() - t0 < 15
            assert len(probe_reports) == 1 and probe_reports[0] is not None
            assert probe_reports[0].code() == KafkaError._MSG_TIMED_OUT, probe_reports[0]
        finally:
            started_at = time.monotonic()
            kafka_broker.start()
        assert kafka_broker.bootstrap == bootstrap  # same port

        time.sleep(2)  # keep producing a little after the restart
    finally:
        done.set()
        worker.join(10)
    assert producer.flush(60) == 0

    assert twice == []
    assert [(v, e) for v, (_, e) in delivered.items() if e is not None] == []
    assert set(delivered) == set(produced)
    during_outage = [v for v, t in produced.items() if t > stopped_at]
    assert len(during_outage) > 100  # messages queued while the broker was down ...
    assert all(delivered[v][0] >= started_at for v in during_outage)  # ... were delivered only after the restart

    msgs = consume_all(bootstrap, topic, timeout=30)
    values = [m.value for m in msgs]
    assert b"probe" not in values
    assert len(values) == len(set(values)) == len(produced)  # exactly once: nothing lost, nothing duplicated
    last_seq: dict[bytes, int] = {}
    for m in msgs:  # sorted by (partition, offset): within a key, produce order
        seq = int(m.value.split(b"-")[1])
        assert seq > last_seq.get(m.key, -1)
        last_seq[m.key] = seq
