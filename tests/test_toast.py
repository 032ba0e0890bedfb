"""TOAST rehydration (operators/toast.py) against a real Postgres: each toast_fetch mode, operator and flow level.

A > 1 MB text column stored EXTERNAL is left unchanged by updates of other
columns, so pgoutput sends it as 'u' (``__unchanged``). The operator-level
tests feed batches read by the real source partition to a ``Rehydrator``; the
flow-level ones run the whole dataflow into DuckDB and compare with Postgres.
"""

from __future__ import annotations

import pickle
from datetime import timedelta

import duckdb
import psycopg
import pyarrow as pa
import pytest

from operators.toast import Rehydrator, key_texts
from tests.flows import drain, flow_spec, rows_of, source_part
from wallaby.core.changes import META_FIELDS, ChangeBatch, Column, Position, TableChanges, TableSchema
from wallaby.core.errors import SourceError

BIG = "🦘" * 300_000  # > 1 MB of UTF-8


def big(i: int, v: int = 0) -> str:
    return f"{i}:{v}:" + BIG


@pytest.fixture
def docs(pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE docs (id int PRIMARY KEY, n int, note text, big text, flag bool DEFAULT true,"
                  " ch char(5) DEFAULT 'ab', ip inet DEFAULT '10.0.0.1');"
                  "ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL")
    return pgdb


def prepared(dsn: str, tmp_path, **source) -> object:
    from sources.postgres.setup import prepare_source

    spec = flow_spec(dsn, duckdb_path=tmp_path / "toast.duckdb", source={"publication_tables": "public.docs", **source})
    prepare_source(spec.source_options(), spec.id)
    return spec


def run_once(spec) -> None:
    from bytewax.testing import run_main

    from dataflows.flow import build_flow

    run_main(build_flow(spec, max_empty_reads=2), epoch_interval=timedelta(milliseconds=200))


def read(spec, rows: int, after: Position | None = None) -> list[ChangeBatch]:
    """The slot's changes from its start (nothing is confirmed here); with `after`, only those past it."""
    part = source_part(spec)
    try:
        batches = drain(part, until_rows=rows)
    finally:
        part.close()
    if after is not None:
        batches = [b for b in (b.since(after) for b in batches) if b is not None and len(b)]
    return batches


def pg_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT id, n, note, big, flag, ch, abbrev(ip) FROM docs ORDER BY id").fetchall()


def duck_rows(spec) -> list[tuple]:
    with duckdb.connect(str(spec.destination_options(0).dsn), read_only=True) as d:
        return d.execute("SELECT id, n, note, big, flag, ch, ip FROM public.docs ORDER BY id").fetchall()


def churn(dsn: str) -> list[tuple[int, str]]:
    """Inserts, many updates leaving `big` unchanged, a value change, a key change, delete + reinsert.

    Returns (id, big as of that change) for each update that leaves `big` unchanged, in WAL order."""
    expect: list[tuple[int, str]] = []
    with psycopg.connect(dsn, autocommit=True) as c:
        for i in (1, 2, 3):
            c.execute("INSERT INTO docs VALUES (%s, 0, %s, %s)", (i, f"note {i}", big(i)))
        for k in range(1, 5):
            for i in (1, 2, 3):
                c.execute("UPDATE docs SET n = %s, note = %s WHERE id = %s", (k, f"note {i}.{k}", i))
                expect.append((i, big(i)))
        c.execute("UPDATE docs SET big = %s WHERE id = 2", (big(2, 1),))
        c.execute("UPDATE docs SET n = 100 WHERE id = 2")
        expect.append((2, big(2, 1)))
        c.execute("UPDATE docs SET id = 30 WHERE id = 3")  # key change, big unchanged
        expect.append((30, big(3)))
        c.execute("UPDATE docs SET n = 7 WHERE id = 30")
        expect.append((30, big(3)))
        c.execute("DELETE FROM docs WHERE id = 1")
        c.execute("INSERT INTO docs VALUES (1, 0, 'again', %s)", (big(1, 2),))
        c.execute("UPDATE docs SET n = 8 WHERE id = 1")
        expect.append((1, big(1, 2)))
    return expect


CHURN_ROWS = 3 + 12 + 2 + 2 + 1 + 1 + 1  # changes churn() makes


@pytest.mark.parametrize("mode", ["source", "full", "cache", "off"])
def test_modes_fill_unchanged_and_destination_equals_postgres(docs, tmp_path, mode):
    spec = prepared(docs, tmp_path, toast_fetch=mode)
    expect = churn(docs)
    batches = read(spec, CHURN_ROWS)
    raw = [r for r in rows_of(batches) if r["__unchanged"]]
    assert [(r["id"], r["__unchanged"], r["big"]) for r in raw] == [(i, ["big"], None) for i, _ in expect]

    if mode != "off":
        r = Rehydrator(docs, mode, flow_id="t")
        out = [r.process(b) for b in batches]
        r.close()
        updates = [row for row in rows_of(out) if row["__op"] == "update"]
        now = {row[0]: row for row in pg_rows(docs)}
        keyed = {(x["__lsn"], x["__ord"]) for x in raw}
        rehydrated = [u for u in updates if (u["__lsn"], u["__ord"]) in keyed]
        assert len(rehydrated) == len(expect)
        for u, (i, value) in zip(rehydrated, expect, strict=True):
            assert u["id"] == i
            if mode == "cache":  # exact as of the change: every value was seen in the stream
                assert (u["__unchanged"], u["big"]) == (None, value)
            elif i in now:  # reselected: the row as committed now
                assert (u["__unchanged"], u["big"]) == (None, now[i][3])
                if mode == "full":  # bool, char(n), inet: the output text, not a ::text cast
                    assert (u["n"], u["note"], u["flag"], u["ch"], u["ip"]) == (*now[i][1:3], True, "ab   ",
                                                                                 "10.0.0.1")
            else:  # gone since (id 3 became 30): stays unchanged, the destination keeps its value
                assert (u["__unchanged"], u["big"]) == (["big"], None)
        if mode == "cache":
            assert r.stats["queries"] == 0 and r.stats["hits"] == len(expect)
        else:
            assert 1 <= r.stats["queries"] <= len(batches)

    run_once(spec)
    assert duck_rows(spec) == pg_rows(docs)


def test_cache_eviction_falls_back_to_source(docs, tmp_path):
    spec = prepared(docs, tmp_path, toast_fetch="cache", toast_cache_size=2)
    with psycopg.connect(docs, autocommit=True) as c:
        for i in range(1, 6):
            c.execute("INSERT INTO docs VALUES (%s, 0, 'x', %s)", (i, big(i)))
        for i in (5, 4, 3, 2, 1):  # 5 and 4 are the two cached; 3, 2, 1 were evicted
            c.execute("UPDATE docs SET n = 1 WHERE id = %s", (i,))
    batches = read(spec, 10)
    r = Rehydrator(docs, "cache", cache_size=2, flow_id="t")
    updates = [u for u in rows_of([r.process(b) for b in batches]) if u["__op"] == "update"]
    assert [(u["id"], u["__unchanged"], u["big"]) for u in updates] == [(i, None, big(i)) for i in (5, 4, 3, 2, 1)]
    assert (r.stats["hits"], r.stats["misses"]) == (2, 3)
    assert 1 <= r.stats["queries"] <= len(batches)
    assert len(r.cache) == 2
    # the reselected values filled the entries of the misses: a second update of 1 is a hit
    with psycopg.connect(docs, autocommit=True) as c:
        c.execute("UPDATE docs SET n = 2 WHERE id = 1")
    more = read(spec, 11, after=batches[-1].position)
    again = [u for u in rows_of([r.process(b) for b in more]) if u["__op"] == "update"]
    assert [(u["id"], u["n"], u["__unchanged"], u["big"]) for u in again] == [(1, 2, None, big(1))]
    assert r.stats["misses"] == 3
    run_once(spec)
    assert duck_rows(spec) == pg_rows(docs)


def test_cache_delete_reinsert_key_change_and_truncate(docs, tmp_path):
    spec = prepared(docs, tmp_path, toast_fetch="cache")
    relid = table_schema(docs).relid
    with psycopg.connect(docs, autocommit=True) as c:
        c.execute("INSERT INTO docs VALUES (1, 0, 'x', %s), (2, 0, 'y', %s)", (big(1), big(2)))
        c.execute("UPDATE docs SET n = 1 WHERE id = 1")
        c.execute("DELETE FROM docs WHERE id = 1")
    r = Rehydrator(docs, "cache", flow_id="t")
    batches = read(spec, 4)
    first = rows_of([r.process(b) for b in batches])
    assert [(u["id"], u["big"]) for u in first if u["__op"] == "update"] == [(1, big(1))]
    assert (relid, ("1",)) not in r.cache.entries and (relid, ("2",)) in r.cache.entries
    with psycopg.connect(docs, autocommit=True) as c:
        c.execute("INSERT INTO docs VALUES (1, 0, 'z', %s)", (big(1, 9),))
        c.execute("UPDATE docs SET n = 2 WHERE id = 1")
        c.execute("UPDATE docs SET id = 20 WHERE id = 2")
        c.execute("UPDATE docs SET n = 3 WHERE id = 20")
        c.execute("DELETE FROM docs WHERE id = 20")  # gone at the source: only the cache knows the value
    batches = read(spec, 9, after=batches[-1].position)
    out = [r.process(b) for b in batches]
    updates = [(u["id"], u["__unchanged"], u["big"]) for u in rows_of(out) if u["__op"] == "update"]
    assert updates == [(1, None, big(1, 9)), (20, None, big(2)), (20, None, big(2))]
    assert r.stats["queries"] == 0
    with psycopg.connect(docs, autocommit=True) as c:
        c.execute("TRUNCATE docs")
    truncate = read(spec, 10, after=batches[-1].position)
    assert [s.op for b in truncate for s in b.segments] == ["truncate"]
    r.process(truncate[0])
    assert len(r.cache) == 0


def test_cache_snapshot_is_bounded_and_restores(docs, tmp_path):
    spec = prepared(docs, tmp_path, toast_fetch="cache")
    with psycopg.connect(docs, autocommit=True) as c:
        for i in range(1, 6):
            c.execute("INSERT INTO docs VALUES (%s, 0, 'x', %s)", (i, big(i)))
    r = Rehydrator(docs, "cache", cache_size=2, flow_id="t")
    for b in read(spec, 5):
        r.process(b)
    snap = r.snapshot()
    blob = pickle.dumps(snap)
    assert len(snap["entries"]) == 2 and len(blob) < 3 * len(BIG.encode())
    assert [e[1] for e in snap["entries"]] == [("4",), ("5",)]
    assert len(Rehydrator(docs, "cache", cache_size=1, state=snap).cache) == 1

    restored = Rehydrator(docs, "cache", cache_size=2, flow_id="t", state=pickle.loads(blob))
    with psycopg.connect(docs, autocommit=True) as c:
        c.execute("UPDATE docs SET big = 'changed since' WHERE id IN (4, 5)")  # the source no longer has them
    # an update processed by the restored cache (synthetic: id 5, big unchanged) gets the cached value
    got = rows_of([restored.process(update_batch(table_schema(docs), [5, 4]))])
    assert [(u["id"], u["__unchanged"], u["big"]) for u in got] == [(5, None, big(5)), (4, None, big(4))]
    assert restored.stats["queries"] == 0 and restored.snapshot()["entries"][-1][1] == ("4",)
    assert Rehydrator(docs, "source").snapshot() is None


def table_schema(dsn: str) -> TableSchema:
    with psycopg.connect(dsn) as c:
        relid = c.execute("SELECT 'public.docs'::regclass::oid").fetchone()[0]
    return TableSchema(int(relid), "public", "docs", (
        Column("id", 23, "int4", key=True, arrow_type=pa.int32()), Column("n", 23, "int4", arrow_type=pa.int32()),
        Column("note", 25, "text"), Column("big", 25, "text")))


def update_batch(table: TableSchema, ids: list[int], lsn: int = 1) -> ChangeBatch:
    """Updates of `n` that leave `big` unchanged, as the source would emit them."""
    n = len(ids)
    arrays = [pa.array(ids, pa.int32()), pa.array([1] * n, pa.int32()), pa.array(["x"] * n),
              pa.array([None] * n, pa.string()), pa.array(["update"] * n), pa.array([lsn] * n, pa.uint64()),
              pa.array(range(1, n + 1), pa.uint64()), pa.array([0] * n, pa.int64()).cast(pa.timestamp("us", "UTC")),
              pa.array([7] * n, pa.uint32()), pa.array([["big"]] * n, pa.list_(pa.string()))]
    fields = [pa.field(c.name, c.arrow_type) for c in table.columns] + list(META_FIELDS)
    rows = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
    return ChangeBatch("t", [TableChanges(table, rows)], Position(lsn, n))


def test_one_query_per_table_per_batch_and_reconnect(docs):
    with psycopg.connect(docs, autocommit=True) as c:
        c.execute("INSERT INTO docs SELECT g, 0, 'x', %s || g FROM generate_series(1, 3) g", (BIG,))
    table = table_schema(docs)
    r = Rehydrator(docs, "source", flow_id="t")
    batch = update_batch(table, [1, 2, 3, 2, 99])
    two = ChangeBatch("t", batch.segments * 2, batch.position)  # two segments of the table: still one query
    got = rows_of([r.process(two)])
    assert r.stats["queries"] == 1
    assert [u["__unchanged"] for u in got] == [None, None, None, None, ["big"]] * 2  # 99 does not exist
    assert [u["big"] for u in got][:4] == [BIG + "1", BIG + "2", BIG + "3", BIG + "2"]
    with psycopg.connect(docs, autocommit=True) as c:  # the step's connection goes away: reconnect once
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'wallaby-toast:t'")
    got = rows_of([r.process(update_batch(table, [3]))])
    assert (got[0]["__unchanged"], got[0]["big"], r.stats["queries"]) == (None, BIG + "3", 2)
    r.close()


def test_errors_name_the_server_never_the_password(docs):
    table = table_schema(docs)
    r = Rehydrator("host=127.0.0.1 port=1 dbname=src user=u password=s3cret connect_timeout=2", "full")
    with pytest.raises(SourceError) as e:
        r.process(update_batch(table, [1]))
    assert "127.0.0.1:1/src" in str(e.value) and "s3cret" not in str(e.value)
    with pytest.raises(ValueError, match="toast_fetch"):
        Rehydrator(docs, "off")


def test_cache_is_bounded_by_bytes_as_well_as_entries():
    from operators.toast import ToastCache

    sig = ("text", -1)
    c = ToastCache(1000, max_bytes=20_000)
    for i in range(100):  # ~1 KB each: only the newest ~19 fit
        c.put(1, (i,), {"doc": (sig, "x" * 1000)})
    assert 15 <= len(c) < 20 and c.bytes <= 20_000
    assert (1, (99,)) in c.entries and (1, (0,)) not in c.entries
    c.fill(1, (99,), "other", (sig, "y" * 5000))  # a reselected value counts too
    assert c.bytes <= 20_000 and len(c) < 15
    for relid, key in list(c.entries):
        c.pop(relid, key)
    assert (len(c), c.bytes) == (0, 0)
    c.put(2, ("big",), {"doc": (sig, "z" * 50_000)})  # one value over the cap is not kept
    assert (len(c), c.bytes) == (0, 0)
    for i in range(5):
        c.put(3, (i,), {"doc": (sig, "w" * 100)})
    c.drop_tables({3})
    assert (len(c), c.bytes) == (0, 0)
    # restored from a snapshot: the same bounds
    for i in range(10):
        c.put(4, (i,), {"doc": (sig, "v" * 1000)})
    restored = ToastCache(1000, c.snapshot(), max_bytes=5_000)
    assert len(restored) == 4 and restored.bytes <= 5_000


def test_key_texts():
    import datetime as dt
    from decimal import Decimal

    assert key_texts(pa.array([1, None], pa.int64())) == ["1", None]
    assert key_texts(pa.array([b"\x00\xff"])) == ["\\x00ff"]
    assert key_texts(pa.array([Decimal("1.20")], pa.decimal128(5, 2))) == ["1.20"]
    ts = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert key_texts(pa.array([ts])) == ["2024-01-02 03:04:05.000006+00:00"]
    assert key_texts(pa.array([2**63 - 1], pa.int64()).cast(pa.timestamp("us"))) == [None]  # infinity: left alone


def test_cache_survives_a_restart_through_bytewax_recovery(docs, tmp_path, monkeypatch):
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import run_main

    from dataflows.flow import build_flow

    rdir = tmp_path / "recovery"
    rdir.mkdir()
    init_db_dir(rdir, 1)
    spec = prepared(docs, tmp_path, toast_fetch="cache")
    seen: list[Rehydrator] = []
    process = Rehydrator.process
    monkeypatch.setattr(Rehydrator, "process", lambda self, b: (seen.append(self), process(self, b))[1])

    def run() -> None:
        run_main(build_flow(spec, max_empty_reads=2), epoch_interval=timedelta(milliseconds=200),
                 recovery_config=RecoveryConfig(str(rdir)))

    with psycopg.connect(docs, autocommit=True) as c:
        for i in (1, 2, 3):
            c.execute("INSERT INTO docs (id, n, note, big) VALUES (%s, 0, 'x', %s)", (i, big(i)))
    run()
    assert duck_rows(spec) == pg_rows(docs)
    first = seen[-1]
    seen.clear()
    with psycopg.connect(docs, autocommit=True) as c:
        c.execute("UPDATE docs SET n = 1")
        c.execute("UPDATE docs SET big = %s WHERE id = 1", (big(1, 1),))
    run()  # a new worker: its cache comes from the recovery snapshot
    assert seen and seen[-1] is not first
    assert (seen[-1].stats["hits"], seen[-1].stats["misses"], seen[-1].stats["queries"]) == (3, 0, 0)
    assert duck_rows(spec) == pg_rows(docs)


def test_full_reselect_decodes_every_type_exactly_as_the_source(pgdb):
    """The tricky table's row reselected whole equals, Arrow type and value, what the source decoded."""
    from sources.postgres.setup import prepare_source
    from tests.test_tricky_table import ROW1, SCHEMA, insert

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(SCHEMA)
    spec = flow_spec(pgdb, source={"publication_tables": "public.tricky"})
    prepare_source(spec.source_options(), spec.id)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("SET TimeZone = 'Asia/Kathmandu'")  # the reselect's session settings are the source's
        insert(c, ROW1)
        c.execute("UPDATE tricky SET i4 = 42 WHERE id = 1")  # big stays unchanged
    r = Rehydrator(pgdb, "full")
    segs = [s for b in read(spec, 2) for s in r.process(b).segments]
    rows = [(s, i) for s in segs for i in range(len(s))]
    (ins, i), (upd, j) = rows
    assert upd.rows.column("__unchanged")[j].as_py() is None and r.stats["queries"] == 1
    for c in ins.table.column_names:
        a, b = ins.rows.column(c), upd.rows.column(c)
        assert a.type == b.type, c
        assert a[i].equals(b[j]) or c == "i4", c
    assert upd.rows.column("i4")[j].as_py() == 42 and upd.rows.column("big")[j].as_py() == ROW1["big"]
