"""S3 destination against a local S3 (moto server): layout, formats, gzip, state, exactly once across replays and
crashes (batches from a real Postgres), endpoint partitions, errors, and kill -9 of the real worker."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import boto3
import psycopg
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from sinks.base import PermanentSinkError, TransientSinkError
from sinks.s3.options import S3DestinationOptions
from sinks.s3.writer import S3Writer, make_client, make_sink, parse_object_name, state_key
from tests import WORKER
from tests.apiserver import wait_streaming
from tests.flows import drain, flow_spec, source_part
from tests.s3_server import s3_server  # noqa: F401 - fixture
from wallaby.core.changes import ChangeBatch, Event, Position, TableChanges
from wallaby.core.options import WIRE_FORMATS
from wallaby.wire import decode, segment_of
from wallaby.wire.formats import CONTENT_TYPES

ROOT = Path(__file__).resolve().parent.parent
FLOW = "t"
SECRET = "e2e-secret-value"
ROWS = {  # id -> region, at, d (as inserted)
    1: ("eu-west", dt.datetime(2024, 3, 10, 7, 30), dt.date(2024, 3, 10)),
    2: ("us/east", dt.datetime(2024, 3, 10, 23, 59, 59, 500000), dt.date(2024, 2, 29)),
    3: (None, dt.datetime(2023, 12, 31), dt.date(2023, 12, 31)),
    4: ("eu-west", None, None),
    5: ("ü ö=x", "infinity", "-infinity"),
}


def s3(url: str):
    return boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def bucket(s3_server):  # noqa: F811
    name = f"wb-{uuid.uuid4().hex[:12]}"
    s3(s3_server).create_bucket(Bucket=name)
    return name


def options(url: str, bucket: str, **kw) -> S3DestinationOptions:
    return S3DestinationOptions.model_validate({"bucket": bucket, "endpoint": url, "access_key": "test",
                                                "secret_key": "test-secret", "force_path_style": True,
                                                "prefix": "cdc", **kw})


def keys(url: str, bucket: str) -> list[str]:
    out = []
    for page in s3(url).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def objects(url: str, bucket: str, fmt: str = "json", gz: bool = False) -> dict:
    """key -> decoded segment, for every change object (not the state)."""
    c = s3(url)
    out = {}
    for k in keys(url, bucket):
        if "/_wallaby/" in k:
            continue
        data = c.get_object(Bucket=bucket, Key=k)["Body"].read()
        if gz:
            assert data[:2] == b"\x1f\x8b", k
            data = gzip.decompress(data)
        out[k] = decode(data, fmt)
    return out


def positions(segs) -> list[tuple[int, int]]:
    return sorted((r.lsn, r.ordinal) for s in segs for r in s.records)


@pytest.fixture
def batches(pgdb):
    """Inserts, updates (one moving a row to another partition), deletes (REPLICA IDENTITY FULL), a truncate."""
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE events (id int PRIMARY KEY, region text, at timestamptz, d date, note text)")
        c.execute("ALTER TABLE events REPLICA IDENTITY FULL")
        c.execute("CREATE TABLE other (id int PRIMARY KEY, v text)")
    tag = uuid.uuid4().hex[:8]  # slots are per server: a name of its own
    part = source_part(flow_spec(pgdb, flow_id=FLOW, slot=f"s3_{tag}", publication=f"s3_{tag}",
                                 source={"publication_tables": "public.events,public.other"}))
    try:
        drain(part, idle_polls=3)
        with psycopg.connect(pgdb, autocommit=True) as c:
            c.execute("SET TimeZone = 'UTC'")
            for i, (region, at, d) in ROWS.items():
                c.execute("INSERT INTO events VALUES (%s, %s, %s, %s, 'n')", (i, region, at, d))
            c.execute("INSERT INTO other VALUES (1, 'x'), (2, 'y')")
            c.execute("UPDATE events SET note = 'a2' WHERE id = 1")
            c.execute("UPDATE events SET region = 'us/east' WHERE id = 4")
            c.execute("DELETE FROM events WHERE id = 2")
            c.execute("DELETE FROM other WHERE id = 2")
            c.execute("TRUNCATE other")
        out = drain(part, until_rows=12, timeout=60)
    finally:
        part.close()
    assert any(isinstance(s, Event) for b in out for s in b.segments)
    return out


def expected_positions(batches) -> list[tuple[int, int]]:
    return positions(segment_of(FLOW, s) for b in batches for s in b.segments if len(s))


def write_all(url: str, bucket: str, batches, **kw) -> S3Writer:
    w = S3Writer("lake", FLOW, options(url, bucket, **kw))
    for b in batches:
        w.write(b)
    w.commit()
    return w


# -- layout ----------------------------------------------------------------------------------------------


def test_layout_names_and_state(s3_server, bucket, batches):  # noqa: F811
    w = write_all(s3_server, bucket, batches)
    got = objects(s3_server, bucket)
    for k, seg in got.items():
        flow, first, last, ext, gz = parse_object_name(k)
        assert (flow, ext, gz) == (FLOW, "json", False)
        assert (first, last) == (Position(seg.records[0].lsn, seg.records[0].ordinal),
                                 Position(seg.records[-1].lsn, seg.records[-1].ordinal))
        name = k.rpartition("/")[2]
        assert name == f"t-{first.lsn:016X}-{first.ordinal:08X}-{last.lsn:016X}-{last.ordinal:08X}.json"
        if seg.is_event:
            assert k.startswith("cdc/_events/") and seg.records[0].op == "truncate"
        else:
            assert k.startswith(f"cdc/{seg.table}/") and k.count("/") == 2
    assert {k.split("/")[1] for k in got} == {"public.events", "public.other", "_events"}
    assert positions(got.values()) == expected_positions(batches)  # every change once
    state = json.loads(s3(s3_server).get_object(Bucket=bucket, Key=state_key("cdc", FLOW, "lake"))["Body"].read())
    last = batches[-1].position
    assert (state["lsn"], state["ordinal"], state["flow_id"]) == (last.lsn, last.ordinal, FLOW)
    assert w.commit() == {"lsn": last.lsn, "ordinal": last.ordinal}
    assert state_key("cdc", FLOW, "lake") == "cdc/_wallaby/t/lake.json"


def _text(v, grain: str | None) -> str:
    """Expected partition text, computed with datetime (independent of the sink's code)."""
    if v is None:
        return "__null__"
    if isinstance(v, str):
        return quote(v, safe="")
    fmt = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H", "month": "%Y-%m", "year": "%Y"}[grain]
    return v.strftime(fmt)


@pytest.mark.parametrize("partition_by", ["region", "at:day", "at:hour", "d:month", "at:year", "region,d:day",
                                          "nosuch"])
def test_partition_layout(s3_server, bucket, batches, partition_by):  # noqa: F811
    write_all(s3_server, bucket, batches, partition_by=partition_by)
    got = objects(s3_server, bucket)
    specs = [p.partition(":") for p in partition_by.split(",")]
    dirs_seen = set()
    for k, seg in got.items():
        if seg.is_event:
            continue
        dirs = k.split("/")[2:-1]
        dirs_seen.add("/".join(dirs))
        for r in seg.records:
            values = r.before if r.op == "delete" else r.after
            rid = values[0]
            region, at, d = ROWS[rid] if seg.table == "public.events" else (None, None, None)
            if seg.table == "public.events" and rid == 4 and r.op == "update":
                region = "us/east"
            want = []
            for col, _, grain in specs:
                v = {"region": region, "at": at, "d": d}.get(col)
                name = f"{col}_{grain}" if grain else col
                want.append(f"{name}={_text(v, grain or None)}")
            assert dirs == want, (k, r.op, rid)
    assert positions(got.values()) == expected_positions(batches)
    examples = {"region": "region=us%2Feast", "at:day": "at_day=infinity", "at:hour": "at_hour=2024-03-10T23",
                "d:month": "d_month=-infinity", "at:year": "at_year=2023",
                "region,d:day": "region=eu-west/d_day=2024-03-10", "nosuch": "nosuch=__null__"}
    assert examples[partition_by] in dirs_seen


def test_grain_on_a_column_without_dates_is_a_permanent_error(s3_server, bucket, batches):  # noqa: F811
    w = S3Writer("lake", FLOW, options(s3_server, bucket, partition_by="region:day"))
    with pytest.raises(PermanentSinkError, match=r"region.*public.events.*date or timestamp"):
        for b in batches:
            w.write(b)


# -- formats -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("fmt", WIRE_FORMATS)
def test_every_format_decodes_to_the_segments_records(s3_server, bucket, batches, fmt, compression):  # noqa: F811
    write_all(s3_server, bucket, batches, format=fmt, compression=compression)
    gz = compression == "gzip"
    got = objects(s3_server, bucket, fmt, gz)
    ext = {"proto": "pb"}.get(fmt, fmt)
    assert all(k.endswith(f".{ext}.gz" if gz else f".{ext}") for k in got)
    by_range = {(parse_object_name(k)[1], parse_object_name(k)[2]): seg for k, seg in got.items()}
    segments = [s for b in batches for s in b.segments if len(s)]
    assert len(by_range) == len(got) == len(segments)
    for s in segments:
        want = segment_of(FLOW, s)
        first, last = want.records[0], want.records[-1]
        back = by_range[(Position(first.lsn, first.ordinal), Position(last.lsn, last.ordinal))]
        assert back.records == want.records, fmt
        assert back.table == want.table and back.flow_id == FLOW
    head = s3(s3_server).head_object(Bucket=bucket, Key=next(iter(got)))
    assert head["ContentType"] == ("application/gzip" if gz else CONTENT_TYPES[fmt])
    assert "ContentEncoding" not in head
    assert head["Metadata"]["wallaby-flow"] == FLOW


# -- exactly once ----------------------------------------------------------------------------------------


def test_a_second_writer_given_the_same_batches_writes_nothing(s3_server, bucket, batches):  # noqa: F811
    write_all(s3_server, bucket, batches, partition_by="region")
    before = keys(s3_server, bucket)
    w2 = write_all(s3_server, bucket, batches, partition_by="region")
    assert keys(s3_server, bucket) == before
    assert w2.stats["objects"] == 0 and w2.stats["written_changes"] == 0


def _single_rows(batches) -> list[ChangeBatch]:
    """The same changes, one per batch in WAL order (other boundaries than the first attempt; like the source,
    each batch holds every change after the previous batch's position up to its own)."""
    out = []
    for b in batches:
        for s in b.segments:
            if isinstance(s, Event):
                out.append(ChangeBatch(b.flow_id, [s], s.position))
                continue
            for i in range(len(s)):
                one = TableChanges(s.table, s.rows.slice(i, 1))
                out.append(ChangeBatch(b.flow_id, [one], one.last))
    return sorted(out, key=lambda b: b.position)


@pytest.mark.parametrize("lost", [0, 1, 2])
def test_replay_after_a_crashed_epoch_writes_each_change_once(s3_server, bucket, batches, lost):  # noqa: F811
    """A crash after some objects of an epoch landed (and, with `lost`, after a later one landed while an earlier
    one did not): the replay, in other batch boundaries, writes exactly the missing changes."""
    kw = {"partition_by": "region", "format": "parquet"}
    singles = _single_rows(batches)
    first = write_all(s3_server, bucket, singles[:2], **kw)  # a committed epoch
    committed = singles[1].position
    for b in batches:  # the next epoch, in the original (bigger) batches
        segs = [s for s in (s.since(committed) if isinstance(s, TableChanges) else s for s in b.segments)
                if s is not None and (isinstance(s, TableChanges) or s.position > committed)]
        if segs:
            first.write(ChangeBatch(b.flow_id, segs, b.position))
    first.flush()  # the next epoch's objects landed; no commit (crash)
    first.close()
    orphans = [k for k in keys(s3_server, bucket)
               if "/_wallaby/" not in k and parse_object_name(k)[2] > committed]
    assert len(orphans) > 2
    rnd = random.Random(lost)
    for k in rnd.sample(orphans, min(lost, len(orphans) - 1)):
        s3(s3_server).delete_object(Bucket=bucket, Key=k)  # never landed
    w = S3Writer("lake", FLOW, options(s3_server, bucket, **kw))
    assert w.high_water == committed
    for b in singles:
        w.write(b)
    w.commit()
    assert positions(objects(s3_server, bucket, "parquet").values()) == expected_positions(batches)
    assert w.high_water == batches[-1].position


def test_existing_object_counts_as_written(s3_server, bucket):  # noqa: F811
    w = S3Writer("lake", FLOW, options(s3_server, bucket))
    w._put("cdc/x/t-0000000000000001-00000001-0000000000000001-00000001.json", b"{}", "application/json", {})
    w._put("cdc/x/t-0000000000000001-00000001-0000000000000001-00000001.json", b"{}", "application/json", {})
    assert (w.stats["objects"], w.stats["existing"], w.conditional) == (1, 1, True)


def test_a_server_without_conditional_writes_gets_plain_puts(s3_server, bucket, batches):  # noqa: F811
    w = S3Writer("lake", FLOW, options(s3_server, bucket))

    class Raw:
        def stream(self, **_):
            yield (b"<?xml version='1.0'?><Error><Code>NotImplemented</Code><Message>A header you provided implies"
                   b" functionality that is not implemented</Message></Error>")

    def refuse(request, **_):
        if "If-None-Match" in request.headers:
            return AWSResponse(request.url, 501, {"Content-Type": "application/xml"}, Raw())
        return None

    w.client.meta.events.register("before-send.s3.PutObject", refuse)
    for b in batches:
        w.write(b)
    w.commit()
    assert w.conditional is False
    assert positions(objects(s3_server, bucket).values()) == expected_positions(batches)


# -- client and errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("region", "fips", "dualstack", "endpoint"), [
    ("us-gov-west-1", None, None, "https://s3.us-gov-west-1.amazonaws.com"),
    ("us-gov-east-1", True, None, "https://s3-fips.us-gov-east-1.amazonaws.com"),
    ("cn-north-1", None, None, "https://s3.cn-north-1.amazonaws.com.cn"),
    ("cn-northwest-1", None, True, "https://s3.dualstack.cn-northwest-1.amazonaws.com.cn"),
    ("us-east-1", True, True, "https://s3-fips.dualstack.us-east-1.amazonaws.com"),
    ("eu-west-1", None, None, "https://s3.eu-west-1.amazonaws.com"),
])
def test_regions_resolve_to_their_partitions_endpoints(region, fips, dualstack, endpoint):
    opts = S3DestinationOptions.model_validate({"bucket": "b-ucket", "region": region, "access_key": "AK",
                                                "secret_key": "SK", "use_fips": fips, "use_dualstack": dualstack})
    client = make_client(opts)
    assert client.meta.endpoint_url == endpoint and client.meta.region_name == region
    sent = []

    class Stop(Exception):
        pass

    def capture(request, **_):
        sent.append(request.url)
        raise Stop

    client.meta.events.register("before-send.s3.PutObject", capture)  # no request leaves the process
    with pytest.raises(Stop):
        client.put_object(Bucket="b-ucket", Key="k", Body=b"")
    host = endpoint.removeprefix("https://")
    assert sent == [f"https://b-ucket.{host}/k"]


def test_endpoint_and_path_style():
    opts = S3DestinationOptions.model_validate({"bucket": "b-ucket", "endpoint": "minio.local:9000",
                                                "force_path_style": True, "access_key": "a", "secret_key": "s"})
    client = make_client(opts)
    assert client.meta.endpoint_url == "https://minio.local:9000"
    assert client.meta.config.s3["addressing_style"] == "path"


def test_missing_bucket_is_one_clear_permanent_error(s3_server):  # noqa: F811
    sink = make_sink("lake", FLOW, options(s3_server, "no-such-bucket-here"))
    with pytest.raises(PermanentSinkError) as err:
        sink.new_writer(None)
    text = str(err.value)
    assert "no-such-bucket-here" in text and s3_server in text and "does not exist" in text
    assert "test-secret" not in text


def test_errors_are_classified(s3_server, bucket):  # noqa: F811
    w = S3Writer("lake", FLOW, options(s3_server, bucket))

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "PutObject")

    assert isinstance(w._error(client_error("SlowDown", 503), "x"), TransientSinkError)
    assert isinstance(w._error(client_error("InternalError", 500), "x"), TransientSinkError)
    assert isinstance(w._error(EndpointConnectionError(endpoint_url=s3_server), "x"), TransientSinkError)
    denied = w._error(client_error("AccessDenied", 403), "x")
    assert isinstance(denied, PermanentSinkError) and bucket in str(denied) and "access denied" in str(denied)
    assert isinstance(w._error(client_error("InvalidAccessKeyId", 403), "x"), PermanentSinkError)
    assert isinstance(w._error(client_error("EntityTooLarge", 400), "x"), PermanentSinkError)


# -- end to end: the worker, kill -9 -------------------------------------------------------------------------


def test_worker_killed_at_random_moments_writes_every_change_once(s3_server, bucket, pgdb, tmp_path):  # noqa: F811
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, part int, note text)")
    flow = {
        "id": "s3e2e", "name": "s3e2e",
        "source": {"name": "pg", "type": "postgres",
                   "options": {"dsn": pgdb, "slot": "s3e2e_slot", "publication": "s3e2e_pub",
                               "publication_tables": "public.orders", "batch_timeout": "100ms",
                               "status_interval": "1s"}},
        "destinations": [{"name": "lake", "type": "s3", "options": {
            "bucket": bucket, "endpoint": s3_server, "access_key": "test", "secret_key": SECRET,
            "force_path_style": True, "prefix": "e2e", "partition_by": "part", "compression": "gzip"}}],
    }
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(flow))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WALLABY_", "AWS_"))}
    env.update({"WALLABY_CHECKPOINT_PATH": str(tmp_path / "store.db"), "WALLABY_EPOCH_INTERVAL": "300ms",
                "PYTHONPATH": str(ROOT), "AWS_EC2_METADATA_DISABLED": "true"})
    cmd = [*WORKER, "-flow-file", str(path)]
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with psycopg.connect(pgdb, autocommit=True) as c:
            while not stop.is_set():
                i = written[0] + 1
                with c.transaction():
                    c.execute("INSERT INTO orders VALUES (%s, %s, 'w')", (i, i % 3))
                    if i % 5 == 0:
                        c.execute("UPDATE orders SET note = 'u' WHERE id = %s", (i - 1,))
                written[0] = i
                time.sleep(0.003)

    rnd = random.Random(11)
    t = threading.Thread(target=writer, daemon=True)
    logs = []
    try:
        for n in range(4):
            log = open(tmp_path / f"w{n}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            if n == 0:
                wait_streaming(pgdb, "s3e2e_slot")  # the slot exists: every later change is captured
                t.start()
            if n == 3:
                break
            time.sleep(rnd.uniform(1.5, 4.0))
            assert p.poll() is None, (tmp_path / f"w{n}.log").read_text()[-3000:]
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        time.sleep(1.5)
        stop.set()
        t.join(10)
        os.kill(p.pid, signal.SIGKILL)  # a fourth kill, after the last insert
        p.wait()
    finally:
        stop.set()
        for log in logs:
            log.close()
    r = subprocess.run([*cmd, "-max-empty-reads", "2"], env=env, capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wallaby.sinks.s3" in r.stderr and SECRET not in r.stderr + r.stdout
    assert all(SECRET not in (tmp_path / f"w{n}.log").read_text() for n in range(4))
    assert written[0] > 100
    got = objects(s3_server, bucket, "json", gz=True)
    all_positions = positions(got.values())
    assert len(all_positions) == len(set(all_positions)), "a change is in two objects"
    ids = sorted(r.after[0] for s in got.values() for r in s.records if r.op == "insert")
    assert ids == list(range(1, written[0] + 1))
    updates = [r.after[0] for s in got.values() for r in s.records if r.op == "update"]
    assert sorted(updates) == [i - 1 for i in range(5, written[0] + 1, 5)]
    for k, s in got.items():
        assert all(f"part={r.after[0] % 3}" in k for r in s.records)
