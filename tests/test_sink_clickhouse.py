"""ClickHouse destination against the chdb-backed HTTP server (tests/chserver.py; a real server with
``WALLABY_TEST_CLICKHOUSE_URL``): the writer with built batches, replays after a crash between the rows and the
high-water, the DSN and options, and real workers streaming Postgres into it (end to end, random histories, kill -9).

Each test writes into databases of its own, so state never leaks between tests. Tables are read as the docs say a
reader does: the ``<table>__current`` view (keyed: ``FINAL WHERE __wallaby_deleted = 0``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sinks.base import PermanentSinkError, SchemaChangeError
from sinks.clickhouse.dsn import DsnError, parse_dsn
from sinks.clickhouse.options import ClickHouseDestinationOptions
from sinks.clickhouse.types import clickhouse_type, widens
from sinks.clickhouse.writer import ClickHouseWriter
from tests import WORKER
from tests.builders import Stream, col, dele, evolve, ins, numeric_typmod, read, table, upd
from tests.chserver import clickhouse  # noqa: F401 - fixture
from tests.flows import pg_rows, run_worker, worker_env, worker_flow
from tests.histories import create_tables, history, play
from wallaby.core.changes import SnapshotMark

ROOT = Path(__file__).resolve().parents[1]


def _name(prefix: str = "db") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@dataclasses.dataclass
class Dbs:
    """A test's target database and state database."""

    server: object
    target: str
    state: str

    def dsn(self, password: str | None = None, **params) -> str:
        s = self.server
        url = s.url if password is None else s.url.replace(f":{s.password}@", f":{password}@")
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{url}/{self.state}" + (f"?{query}" if query else "")

    def rows(self, sql: str) -> list[tuple]:
        c = self.server.client()
        try:
            return [tuple(r) for r in c.query(sql).result_rows]
        finally:
            c.close()

    def table(self, name: str, cols: str = "*", order: str = "1") -> list[tuple]:
        """The current rows of ``name`` through its view, [] when it was never created."""
        found = self.rows(f"SELECT count() FROM system.tables WHERE database = '{self.target}'"
                          f" AND name = '{name}__current'")
        if not found[0][0]:
            return []
        return self.rows(f"SELECT {cols} FROM `{self.target}`.`{name}__current` ORDER BY {order}")


@pytest.fixture
def dbs(clickhouse):  # noqa: F811
    return Dbs(clickhouse, _name("tgt"), _name("state"))


def make(d: Dbs, name: str = "ch", flow: str = "flow1", **opts) -> ClickHouseWriter:
    opts.setdefault("database", d.target)
    return ClickHouseWriter(name, flow, ClickHouseDestinationOptions(dsn=d.dsn(), **opts))


def apply(w: ClickHouseWriter, *batches) -> None:
    for b in batches:
        w.write(b)
    w.commit()


USERS = [col("id", "int4", key=True), col("name", "text"), col("big", "text")]


def users(d: Dbs, name: str = "users") -> list[tuple]:
    return d.table(name, "id, name, big", "id")


# --------------------------------------------------------------------------- keyed


def test_keyed_upserts_deletes_and_key_changes(dbs):
    t = table("users", USERS)
    s = Stream()
    w = make(dbs)
    try:
        apply(w, s.batch(s.rows(t, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"),
                                ins(id=3, name="c", big="C"))))
        assert users(dbs) == [(1, "a", "A"), (2, "b", "B"), (3, "c", "C")]
        apply(w, s.batch(
            s.rows(t, upd({"id": 1, "name": "a2", "big": "A2"}), dele(id=2)),
            s.rows(t, upd({"id": 30, "name": "c30", "big": "C30"}, before={"id": 3})),  # key change
            s.rows(t, ins(id=2, name="b again", big="B2"), ins(id=4, name="d", big="D")),
            s.rows(t, dele(id=4)),
            s.rows(t, ins(id=1, name="a3", big="A3"))))  # an insert of a present key upserts
        assert users(dbs) == [(1, "a3", "A3"), (2, "b again", "B2"), (30, "c30", "C30")]
        apply(w, s.batch(s.rows(t, upd({"id": 31, "name": "c31", "big": "C31"}, before={"id": 30}),
                                upd({"id": 32, "name": "c32", "big": "C32"}, before={"id": 31}),
                                ins(id=30, name="new30", big="N"))))
        assert users(dbs) == [(1, "a3", "A3"), (2, "b again", "B2"), (30, "new30", "N"), (32, "c32", "C32")]
        # the documented query without the view: FINAL, not deleted
        assert dbs.rows(f"SELECT id, name FROM `{dbs.target}`.users FINAL WHERE __wallaby_deleted = 0"
                        " ORDER BY id") == [(1, "a3"), (2, "b again"), (30, "new30"), (32, "c32")]
        # one row per touched key per apply (the epoch reduction), versions in WAL order
        # (FINAL leaves the tombstones out: read the latest row of every key)
        latest = dbs.rows(f"SELECT id, argMax(__wallaby_deleted, __wallaby_version) FROM `{dbs.target}`.users"
                          " GROUP BY id ORDER BY id")
        assert latest == [(1, 0), (2, 0), (3, 1), (4, 1), (30, 0), (31, 1), (32, 0)]
        assert w.stats["applies"] == 3
    finally:
        w.close()


def test_unchanged_toast_values_are_kept_also_across_a_key_change(dbs):
    t = table("users", USERS)
    s = Stream()
    w = make(dbs)
    try:
        apply(w, s.batch(s.rows(t, ins(id=1, name="a", big="BIG1"), ins(id=2, name="b", big="BIG2"),
                                ins(id=3, name="c", big="BIG3"))))
        apply(w, s.batch(s.rows(
            t,
            upd({"id": 1, "name": "a2", "big": None}, unchanged=["big"]),
            upd({"id": 20, "name": "b20", "big": None}, before={"id": 2}, unchanged=["big"]),
            upd({"id": 21, "name": "b21", "big": None}, before={"id": 20}, unchanged=["big"]),
            upd({"id": 3, "name": "c2", "big": "NEW3"}),
            upd({"id": 3, "name": "c3", "big": None}, unchanged=["big"]),
            ins(id=4, name="d", big="BIG4"),
            upd({"id": 4, "name": "d2", "big": None}, unchanged=["big"]))))
        assert users(dbs) == [(1, "a2", "BIG1"), (3, "c3", "NEW3"), (4, "d2", "BIG4"), (21, "b21", "BIG2")]
    finally:
        w.close()


def test_reads_and_stream_changes_of_one_epoch_keep_their_own_versions(dbs):
    """A backfill's row (the snapshot's position) and a newer stream change of the same key in one epoch, in either
    order: the newer state wins."""
    t = table("users", USERS)
    s = Stream()
    w = make(dbs)
    try:
        snap = s.rows(t, read(id=1, name="snap", big="S"), read(id=2, name="snap", big="S"))
        newer = s.rows(t, upd({"id": 1, "name": "stream", "big": "T"}))
        mark = SnapshotMark("public.users#1/1", 0, True, 2)
        apply(w, s.batch(newer), dataclasses.replace(s.batch(snap), position=snap.last, snapshot=mark))
        assert users(dbs) == [(1, "stream", "T"), (2, "snap", "S")]
    finally:
        w.close()


# --------------------------------------------------------------------------- keyless and append


def test_keyless_multiset_with_duplicates(dbs):
    t = table("log", [col("a", "int4"), col("b", "text")], replica_identity="f")
    s = Stream()
    w = make(dbs)
    try:
        apply(w, s.batch(s.rows(t, *[ins(a=1, b="x") for _ in range(3)], ins(a=2, b=None), ins(a=2, b=None))))
        apply(w, s.batch(s.rows(
            t,
            dele(a=1, b="x"),  # 3 -> 2 copies
            upd({"a": 3, "b": "y"}, before={"a": 2, "b": None}),  # one (2, NULL) becomes (3, 'y')
            ins(a=1, b="x"), dele(a=1, b="x"), dele(a=1, b="x"))))  # 2 -> 1
        assert dbs.table("log", "a, b", "a, b") == [(1, "x"), (2, None), (3, "y")]
        apply(w, s.batch(s.rows(t, ins(a=3, b="y"), ins(a=3, b="y"), dele(a=2, b=None))))
        assert dbs.table("log", "a, b", "a, b") == [(1, "x"), (3, "y"), (3, "y"), (3, "y")]
        apply(w, s.batch(s.truncate(t), s.rows(t, ins(a=9, b="z"))))
        assert dbs.table("log", "a, b", "a, b") == [(9, "z")]
    finally:
        w.close()


def test_keyless_updates_without_a_before_image_are_one_clear_error(dbs):
    t = table("nokey", [col("a", "int4"), col("b", "text")], replica_identity="d")
    s = Stream()
    w = make(dbs)
    try:
        apply(w, s.batch(s.rows(t, ins(a=1, b="x"))))
        with pytest.raises(PermanentSinkError, match="REPLICA IDENTITY FULL"):
            apply(w, s.batch(s.rows(t, upd({"a": 2, "b": "y"}))))
    finally:
        w.close()


def test_append_mode_and_truncate(dbs):
    t = table("users", USERS)
    s = Stream()
    w = make(dbs, write_mode="append")
    try:
        apply(w, s.batch(s.rows(t, ins(id=1, name="a", big="A"), upd({"id": 1, "name": "b", "big": "B"}),
                                dele(id=1, name="b", big="B")), s.truncate(t)))
        got = dbs.rows(f"SELECT id, name, __op, __lsn, __ord FROM `{dbs.target}`.users FINAL ORDER BY __lsn, __ord")
        assert [r[:3] for r in got] == [(1, "a", "insert"), (1, "b", "update"), (1, "b", "delete"),
                                        (None, None, "truncate")]
        assert all(r[3] > 0 and r[4] >= 1 for r in got)
        ts = dbs.rows(f"SELECT DISTINCT __ts FROM `{dbs.target}`.users")
        assert all(isinstance(r[0], dt.datetime) for r in ts)
    finally:
        w.close()
    # target mode: a truncate empties the table, what comes after it in the epoch lands
    t2 = table("users", USERS)
    d2 = Dbs(dbs.server, _name("tgt"), dbs.state)
    w = make(d2)
    try:
        apply(w, s.batch(s.rows(t2, ins(id=1, name="a", big="A"), ins(id=2, name="b", big="B"))))
        apply(w, s.batch(s.rows(t2, ins(id=3, name="c", big="C")), s.truncate(t2),
                         s.rows(t2, ins(id=4, name="d", big="D"))))
        assert users(d2) == [(4, "d", "D")]
        apply(w, s.batch(s.truncate(t2)))
        assert users(d2) == []
    finally:
        w.close()


# --------------------------------------------------------------------------- schema changes


def test_add_widen_and_keep_dropped_columns(dbs):
    t1 = table("evo", [col("id", "int4", key=True), col("n", "int2"), col("gone", "text"), col("v", "varchar")])
    s = Stream()
    w = make(dbs)
    try:
        apply(w, s.batch(s.rows(t1, ins(id=1, n=1, gone="g1", v="a"), ins(id=2, n=2, gone="g2", v="b"))))
        # a column added with a constant default (older rows get it), n widened int2 -> int8, "gone" dropped
        added = dataclasses.replace(col("extra", "text"), missing=pa.array(["dflt"]))
        t2 = evolve(t1, [col("id", "int4", key=True), col("n", "int8"), col("v", "varchar"), added])
        apply(w, s.batch(s.rows(t2, ins(id=3, n=3_000_000_000, v="c", extra="x"),
                                upd({"id": 1, "n": 10, "v": "a2", "extra": "y"}))))
        got = dbs.table("evo", "id, n, gone, v, extra", "id")
        assert got == [(1, 10, "g1", "a2", "y"), (2, 2, "g2", "b", "dflt"), (3, 3_000_000_000, None, "c", "x")]
        types = dict(dbs.rows(f"SELECT name, type FROM system.columns WHERE database = '{dbs.target}'"
                              " AND table = 'evo'"))
        assert types["n"] == "Nullable(Int64)" and types["id"] == "Int32"
        meta = dbs.rows(f"SELECT schema_version, primary_key, columns_json FROM `{dbs.state}`.__wallaby_meta"
                        " WHERE dest_table = 'evo' ORDER BY updated_at DESC LIMIT 1")
        assert meta[0][0] == 2 and meta[0][1] == "id"
        assert [c["name"] for c in json.loads(meta[0][2])] == ["id", "n", "v", "extra"]
        # a type change ClickHouse cannot make in place: held at the DDL gate
        t3 = evolve(t2, [col("id", "int4", key=True), col("n", "bool"), col("v", "varchar"), col("extra", "text")])
        with pytest.raises(SchemaChangeError, match="'n' changed type at the source from int8 to bool"):
            apply(w, s.batch(s.rows(t3, ins(id=4, n=True, v="d", extra="z"))))
    finally:
        w.close()
    assert len(dbs.table("evo")) == 3


def test_drop_columns_follows_a_source_drop(dbs):
    t1 = table("evo", [col("id", "int4", key=True), col("gone", "text"), col("v", "text")])
    s = Stream()
    w = make(dbs, drop_columns=True)
    try:
        apply(w, s.batch(s.rows(t1, ins(id=1, gone="g1", v="a"))))
        t2 = evolve(t1, [col("id", "int4", key=True), col("v", "text")])
        apply(w, s.batch(s.rows(t2, ins(id=2, v="b"), upd({"id": 1, "v": "a2"}))))
        assert dbs.table("evo", "*", "id") == [(1, "a2"), (2, "b")]
        assert "gone" not in dict(dbs.rows(f"SELECT name, type FROM system.columns WHERE database ="
                                           f" '{dbs.target}' AND table = 'evo'"))
    finally:
        w.close()


# --------------------------------------------------------------------------- replay


def test_a_second_writer_skips_what_the_first_committed(dbs):
    t = table("users", USERS)
    s = Stream()
    b1 = s.batch(s.rows(t, ins(id=1, name="a", big="A")))
    b2 = s.batch(s.rows(t, ins(id=2, name="b", big="B"), upd({"id": 1, "name": "a2", "big": "A2"})))
    b3 = s.batch(s.rows(t, dele(id=2), ins(id=3, name="c", big="C")))
    w1 = make(dbs)
    try:
        apply(w1, b1, b2)
        w1.write(b3)  # taken, never committed: the crash
    finally:
        w1.close()
    w2 = make(dbs)
    try:
        assert w2.high_water == b2.position
        apply(w2, b1, b2, b3)  # replayed from before the first's high-water
        assert w2.stats["skipped_rows"] == 3
        assert users(dbs) == [(1, "a2", "A2"), (3, "c", "C")]
    finally:
        w2.close()
    w3 = make(dbs, flow="flow2", table="other")  # another flow on the same destination starts from nothing
    try:
        assert w3.high_water.lsn == 0
    finally:
        w3.close()


def test_rows_applied_without_their_high_water_replay_to_the_same_state(dbs):
    """The crash between the rows and the high-water: the first writer's rows are in ClickHouse (a key change
    with an unchanged TOAST value among them), its high-water is not; the replay, cut into other epochs, ends
    equal, and no kept value is lost."""
    t = table("users", USERS)
    s = Stream()
    b1 = s.batch(s.rows(t, ins(id=1, name="a", big="BIG1"), ins(id=2, name="b", big="BIG2")))
    b2 = s.batch(s.rows(t, upd({"id": 10, "name": "a10", "big": None}, before={"id": 1}, unchanged=["big"]),
                        upd({"id": 2, "name": "b2", "big": None}, unchanged=["big"])))
    b3 = s.batch(s.rows(t, upd({"id": 2, "name": "b3", "big": "NEW2"}), dele(id=10)))
    b4 = s.batch(s.rows(t, upd({"id": 20, "name": "b20", "big": None}, before={"id": 2}, unchanged=["big"])))
    w1 = make(dbs)
    try:
        apply(w1, b1)
        for b in (b2, b3, b4):
            w1.write(b)
        w1._apply_pending()  # the rows are in; the high-water is not (killed here)
    finally:
        w1.close()
    assert users(dbs) == [(20, "b20", "NEW2")]
    w2 = make(dbs)
    try:
        assert w2.high_water == b1.position
        apply(w2, b1, b2)  # a smaller epoch than the crashed one
        apply(w2, b3, b4)
        assert users(dbs) == [(20, "b20", "NEW2")]
    finally:
        w2.close()


def _history_batches(ops: list[tuple[str, int, int]], s: Stream, t, k) -> tuple[list, dict, list]:
    """Batches of changes of the keyed table ``t`` (id, v, big: TOASTed when unchanged) and the keyless ``k`` (a,
    b), built from ``ops``; and the state they end in."""
    state: dict[int, tuple[int, str]] = {}
    bag: list[tuple[int, int]] = []
    segs: list = []
    for op, key, val in ops:
        if op == "insert" and key not in state:
            state[key] = (val, f"t{val}")
            segs.append(s.rows(t, ins(id=key, v=val, big=f"t{val}")))
            bag.append((key % 4, val % 3))
            segs.append(s.rows(k, ins(a=key % 4, b=val % 3)))
        elif op == "update" and key in state:
            if val % 2:  # big unchanged (TOAST): kept from ClickHouse
                state[key] = (val, state[key][1])
                segs.append(s.rows(t, upd({"id": key, "v": val, "big": None}, unchanged=["big"])))
            else:
                state[key] = (val, f"u{val}")
                segs.append(s.rows(t, upd({"id": key, "v": val, "big": f"u{val}"})))
            old = next((r for r in bag if r[0] == key % 4), None)
            if old is not None:
                bag.remove(old)
                bag.append((old[0], val % 3))
                segs.append(s.rows(k, upd({"a": old[0], "b": val % 3}, before={"a": old[0], "b": old[1]})))
        elif op == "delete" and key in state:
            del state[key]
            segs.append(s.rows(t, dele(id=key)))
            old = next((r for r in bag if r[0] == key % 4), None)
            if old is not None:
                bag.remove(old)
                segs.append(s.rows(k, dele(a=old[0], b=old[1])))
        elif op == "key" and key in state and key + 100 not in state:
            state[key + 100] = state.pop(key)
            if val % 2:
                segs.append(s.rows(t, upd({"id": key + 100, "v": state[key + 100][0], "big": None},
                                          before={"id": key}, unchanged=["big"])))
            else:
                segs.append(s.rows(t, upd({"id": key + 100, "v": state[key + 100][0], "big": state[key + 100][1]},
                                          before={"id": key})))
        elif op == "truncate":
            state.clear()
            bag.clear()
            segs.append(s.truncate(t, k))
    batches = []
    i = 0
    rnd = random.Random(len(ops))
    while i < len(segs):
        n = rnd.randint(1, 4)
        batches.append(s.batch(*segs[i:i + n]))
        i += n
    return batches, state, bag


OPS = st.lists(st.tuples(st.sampled_from(["insert", "insert", "update", "delete", "key", "truncate"]),
                         st.integers(1, 8), st.integers(-99, 99)), min_size=1, max_size=40)


@settings(max_examples=int(os.environ.get("WALLABY_CLICKHOUSE_EXAMPLES", "10")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(ops=OPS, epochs=st.lists(st.integers(1, 4), min_size=1, max_size=20), crash=st.integers(0, 30),
       crashed_epoch=st.integers(1, 6))
def test_random_histories_with_a_crash_between_rows_and_high_water_end_equal(clickhouse, ops, epochs,  # noqa: F811
                                                                             crash, crashed_epoch):
    """Random keyed (TOAST, key changes, truncates) and keyless histories, cut into random epochs; a first writer
    dies after inserting the rows of a random number of batches but before their high-water; a second replays
    everything in other epochs: both tables, read as documented, equal the history's end."""
    d = Dbs(clickhouse, _name("tgt"), _name("state"))
    t = table("h", [col("id", "int4", key=True), col("v", "int4"), col("big", "text")])
    k = table("k", [col("a", "int4"), col("b", "int4")], replica_identity="f")
    s = Stream()
    batches, state, bag = _history_batches(ops, s, t, k)
    crash = min(crash, len(batches))
    w1 = make(d)
    try:
        done, e = 0, 0
        while done < crash:
            n = epochs[e % len(epochs)]
            apply(w1, *batches[done:min(done + n, crash)])
            done = min(done + n, crash)
            e += 1
        for b in batches[crash:crash + crashed_epoch]:
            w1.write(b)
        w1._apply_pending()  # killed after the rows, before the high-water
    finally:
        w1.close()
    w2 = make(d)
    try:
        i, e = 0, 1
        while i < len(batches):
            n = epochs[e % len(epochs)]
            apply(w2, *batches[i:i + n])
            i += n
            e += 1
        w2.commit()
    finally:
        w2.close()
    assert d.table("h", "id, v, big", "id") == sorted((key, v, big) for key, (v, big) in state.items()), ops
    assert d.table("k", "a, b", "a, b") == sorted(bag), ops


# --------------------------------------------------------------------------- staging, types


def test_staging_mode_lands_reads_in_the_staging_table(dbs):
    t = table("users", USERS)
    s = Stream()
    w = make(dbs, batch_mode="staging", meta_table_enabled=False)
    try:
        apply(w, s.batch(s.rows(t, read(id=1, name="a", big="A"), read(id=2, name="b", big="B"),
                                ins(id=3, name="c", big="C"))))
        assert users(dbs) == [(3, "c", "C")]
        assert users(dbs, "users_staging") == [(1, "a", "A"), (2, "b", "B")]
        assert dbs.rows(f"EXISTS TABLE `{dbs.state}`.__wallaby_meta") == [(0,)]
    finally:
        w.close()


def test_types_land_as_documented(dbs):
    cols = [col("id", "int8", key=True), col("i2", "int2"), col("n", "numeric", typmod=numeric_typmod(12, 3)),
            col("nu", "numeric"), col("f", "float8"), col("b", "bool"), col("by", "bytea"), col("d", "date"),
            col("ts", "timestamp"), col("tz", "timestamptz"), col("tm", "time"), col("u", "uuid"),
            col("j", "jsonb"), col("arr", "_int4", arrow_type=pa.list_(pa.int32())), col("iv", "interval")]
    t = table("ty", cols)
    s = Stream()
    w = make(dbs)
    ts = dt.datetime(2024, 1, 2, 3, 4, 5, 123456)
    try:
        apply(w, s.batch(s.rows(t, ins(
            id=1, i2=-5, n=decimal.Decimal("123456789.123"), nu="NaN", f=float("inf"), b=True, by=b"\x00\xff",
            d=dt.date(2024, 1, 2), ts=ts, tz=ts.replace(tzinfo=dt.UTC), tm=dt.time(3, 4, 5, 6),
            u="0b7e4a6e-62b3-4d7e-9f3b-1f0f4e1b2c3d", j='{"a": [1, 2.5, "x"], "b": null}', arr=[1, None, 3],
            iv=pa.scalar((1, 2, 3_000_000_000), pa.month_day_nano_interval()).as_py()),
            ins(id=2))))
        got = dbs.table("ty", "id, i2, n, nu, f, b, hex(by), d, ts, tz, tm, toString(u), j, arr, iv", "id")
        r = got[0]
        assert r[:6] == (1, -5, decimal.Decimal("123456789.123"), "NaN", float("inf"), True)
        assert r[6] == "00FF" and r[7] == dt.date(2024, 1, 2) and r[8] == ts
        assert r[9].replace(tzinfo=None) == ts and r[10] == "03:04:05.000006"
        assert r[11] == "0b7e4a6e-62b3-4d7e-9f3b-1f0f4e1b2c3d"
        assert json.loads(r[12]) == {"a": [1, 2.5, "x"], "b": None} and r[13] == [1, None, 3]
        assert r[14] == "1 month 2 days 00:00:03"
        assert got[1] == (2, None, None, None, None, None, None, None, None, None, None, None, None, [], None)
        types = dict(dbs.rows(f"SELECT name, type FROM system.columns WHERE database = '{dbs.target}'"
                              " AND table = 'ty'"))
        assert types["n"] == "Nullable(Decimal(12, 3))" and types["arr"] == "Array(Nullable(Int32))"
        assert types["tz"] == "Nullable(DateTime64(6, 'UTC'))" and types["u"] == "Nullable(UUID)"
    finally:
        w.close()


def test_dates_and_timestamps_outside_the_range_land_on_its_ends(dbs):
    from sources.postgres.pgtypes import DATE_NEG_INF, DATE_POS_INF, TS_NEG_INF, TS_POS_INF

    t = table("inf", [col("id", "int4", key=True), col("d", "date"), col("ts", "timestamp")])
    s = Stream()
    w = make(dbs)
    try:
        seg = s.rows(t, ins(id=1, d=DATE_NEG_INF, ts=TS_NEG_INF), ins(id=2, d=DATE_POS_INF, ts=TS_POS_INF),
                     ins(id=3, d=-800_000, ts=-800_000 * 86_400_000_000),
                     arrow_types={"d": pa.int32(), "ts": pa.int64()})
        rb = seg.rows
        seg = dataclasses.replace(seg, rows=pa.RecordBatch.from_arrays(
            [rb.column(0), rb.column(1).cast(pa.date32()), rb.column(2).cast(pa.timestamp("us")),
             *rb.columns[3:]], schema=rb.schema.set(1, pa.field("d", pa.date32())).set(2, pa.field(
                 "ts", pa.timestamp("us")))))
        apply(w, s.batch(seg))
        lo, hi = (dt.date(1900, 1, 1), dt.datetime(1900, 1, 1)), (dt.date(2299, 12, 31),
                                                                  dt.datetime(2299, 12, 31, 23, 59, 59, 999999))
        assert dbs.table("inf", "d, ts", "id") == [lo, hi, lo]
    finally:
        w.close()


def test_type_map_and_widening():
    assert clickhouse_type(col("a", "int2")) == "Int16"
    assert clickhouse_type(col("a", "numeric", typmod=numeric_typmod(40, 2))) == "String"
    assert clickhouse_type(col("a", "numeric", typmod=numeric_typmod(10, 2))) == "Decimal(10,2)"
    assert clickhouse_type(col("a", "jsonb")) == "String"
    assert clickhouse_type(col("a", "_text", arrow_type=pa.list_(pa.string()))) == "Array(Nullable(String))"
    assert clickhouse_type(col("a", "_int4", arrow_type=pa.list_(pa.int32())), {"int4": "Int64"}) == \
        "Array(Nullable(Int64))"
    assert clickhouse_type(col("a", "geometry", extension="postgis"), {"ext:postgis": "String"}) == "String"
    assert clickhouse_type(col("a", "mood", base_type="text")) == "String"
    assert clickhouse_type(col("a", "timestamptz")) == "DateTime64(6, 'UTC')"
    assert widens("Nullable(Int16)", "Nullable(Int64)") and not widens("Int64", "Int16")
    assert widens("Nullable(Decimal(10, 2))", "Nullable(Decimal(12,2))") and not widens("Decimal(10, 2)",
                                                                                        "Decimal(10,3)")
    assert widens("Nullable(Int32)", "Nullable(String)") and not widens("Array(Int32)", "String")


def test_dsn_forms():
    d = parse_dsn("clickhouse://me:p%40ss@h:9000/st?connect_timeout=3&max_insert_threads=4&verify=false")
    assert (d.host, d.port, d.user, d.password, d.secure, d.database) == ("h", 9000, "me", "p@ss", False, "st")
    assert d.driver == {"connect_timeout": 3.0, "verify": False} and d.settings == {"max_insert_threads": "4"}
    assert d.shown == "me@h:9000" and d.clean("x p@ss y p%40ss") == "x *** y ***"
    assert parse_dsn("https://h").port == 8443 and parse_dsn("http://h").database == "wallaby"
    for bad, why in (("postgres://me:secretpw@h", "scheme"), ("http://me:secretpw@", "no host"),
                     ("http://me:secretpw@h/a/b", "one name"), ("http://me:secretpw@h?connect_timeout=x",
                                                               "number of seconds"),
                     ("http://me:secretpw@h:99999", "not a URL")):
        with pytest.raises(DsnError, match=why) as e:
            parse_dsn(bad)
        assert "secretpw" not in str(e.value)


# --------------------------------------------------------------------------- bad options and servers


def _spec(options: dict):
    from wallaby.core.spec import parse_flow

    return parse_flow({"name": "f", "source": {"type": "postgres", "options": {
        "dsn": "postgres://u@localhost/db", "slot": "s", "publication": "p"}},
        "destinations": [{"name": "d", "type": "clickhouse", "options": options}]})


def test_a_dsn_it_cannot_parse_is_refused_before_anything_is_created():
    from dataflows.preflight import preflight
    from wallaby.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        preflight(_spec({"dsn": "tcp://me:hunter2secret@h"}), source=False)
    text = str(err.value)
    assert "destinations[0].options.dsn: ClickHouse dsn: scheme tcp:// is not one of" in text
    assert "hunter2secret" not in text
    with pytest.raises(ConfigError, match="batch_resolution"):
        _spec({"dsn": "http://h", "batch_resolution": "append"})
    with pytest.raises(ConfigError, match="database and schema name the same thing"):
        _spec({"dsn": "http://h", "database": "a", "schema": "b"})


def test_a_wrong_password_is_one_clear_error_and_creates_nothing(dbs):
    with pytest.raises(PermanentSinkError) as e:
        ClickHouseWriter("ch", "f", ClickHouseDestinationOptions(dsn=dbs.dsn(password="hunter2secret"),
                                                                 database=dbs.target))
    text = str(e.value)
    assert f"cannot connect to ClickHouse {dbs.server.user}@" in text and "AUTHENTICATION_FAILED" in text
    assert "hunter2secret" not in text and dbs.server.password not in text
    assert dbs.rows(f"EXISTS DATABASE `{dbs.state}`") == [(0,)]
    # no server there
    from tests.servers import free_port

    with pytest.raises(PermanentSinkError, match="cannot connect to ClickHouse me@127.0.0.1") as e:
        ClickHouseWriter("ch", "f", ClickHouseDestinationOptions(
            dsn=f"http://me:hunter2secret@127.0.0.1:{free_port()}?connect_timeout=2"))
    assert "hunter2secret" not in str(e.value)


def test_a_meta_engine_clickhouse_refuses_is_named(dbs):
    with pytest.raises(PermanentSinkError, match="meta_engine='NoSuchEngine'") as e:
        make(dbs, meta_engine="NoSuchEngine")
    assert dbs.server.password not in str(e.value)
    w = make(dbs, meta_engine="ReplacingMergeTree(updated_at)", meta_order_by="flow_id, dest_database, dest_table")
    w.close()


def test_stored_position_and_discard_position_through_the_plugin(dbs):
    from sinks.clickhouse import PLUGIN

    opts = ClickHouseDestinationOptions(dsn=dbs.dsn(), database=dbs.target)
    assert PLUGIN.stored_position("ch", "flow1", opts) is None  # nothing there yet, and nothing created
    assert dbs.rows(f"EXISTS DATABASE `{dbs.state}`") == [(0,)]
    t = table("users", USERS)
    s = Stream()
    w = make(dbs)
    try:
        b = s.batch(s.rows(t, ins(id=1, name="a", big="A")))
        apply(w, b)
    finally:
        w.close()
    position, _identity, where = PLUGIN.stored_position("ch", "flow1", opts)
    assert position == b.position and where == f"ClickHouse {dbs.server.user}@{dbs.server.host}:{dbs.server.port}"
    PLUGIN.discard_position("ch", "flow1", opts)
    assert PLUGIN.stored_position("ch", "flow1", opts) is None
    w = make(dbs)
    try:
        assert w.high_water.lsn == 0
    finally:
        w.close()


# --------------------------------------------------------------------------- real workers




def _flow(tmp: Path, pg_dsn: str, flow_id: str, tables: str, destination: dict, **source) -> Path:
    return worker_flow(tmp, pg_dsn, flow_id, tables, destination, dest_type="clickhouse", dest_name="ch", **source)


def test_a_backfill_then_the_stream_into_clickhouse(dbs, pgdb, tmp_path):
    """-mode backfill reads the table's parts into ClickHouse (read rows at their snapshot position), then the
    stream goes on from the backfill's slot: ClickHouse, read as documented, ends equal to Postgres."""
    import psycopg

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g")
    flow = _flow(tmp_path, pgdb, "ch-bf", "public.t", {"dsn": dbs.dsn(), "database": dbs.target})
    run_worker(tmp_path, flow, args=("-mode", "backfill", "-partition-count", "3"))
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("UPDATE t SET v = 'u' WHERE id % 7 = 0")
        c.execute("DELETE FROM t WHERE id % 11 = 0")
        c.execute("INSERT INTO t VALUES (5000, 'new')")
    run_worker(tmp_path, flow)
    want = pg_rows(pgdb, "SELECT id, v FROM t ORDER BY id")
    assert dbs.table("t", "id, v", "id") == want and len(want) == 2729


TYPES_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TABLE many (
  id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
  n_small numeric(12,4), n_big numeric(60,20), n_free numeric, t text, vc varchar(20), ch char(5), by bytea,
  d date, tm time, ts timestamp, tstz timestamptz, iv interval, tz timetz, u uuid, j json, jb jsonb,
  ia int4[], ta text[], e mood, dom posint, ip inet, mon money, big text
);
ALTER TABLE many ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE bag (a int, b text);
ALTER TABLE bag REPLICA IDENTITY FULL;
"""
BIG = "🦘" * 100_000  # TOASTed out of line


def test_a_table_of_many_types_streamed_by_a_worker_equals_postgres(dbs, pgdb, tmp_path):
    import psycopg

    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute(TYPES_SCHEMA)
    flow = _flow(tmp_path, pgdb, "ch-types", "public.many,public.bag",
                 {"dsn": dbs.dsn(), "database": dbs.target})
    run_worker(tmp_path, flow)  # the slot
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("""INSERT INTO many VALUES (1, true, -32768, 2147483647, -9223372036854775808, 0.1, 5e-324,
            -12345678.1234, '12345678901234567890123456789012345678.12345678901234567890', 'NaN',
            'e\u0301 RTL שלום 🦘', 'ascii', 'ab', '\\x00ff10', '2024-02-29', '24:00:00', '2024-01-02 03:04:05.123456',
            '2024-03-10 02:30:00.123456 America/New_York', '1 year 2 mons -3 days 04:05:06.789', '04:05:06-08:00:30',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2, {"b": "é"}]}', '{"k": "é 🦘", "n": null}',
            '{1,NULL,3}', '{"a,b","c\\"d",NULL}', 'happy 😀', 7, '192.168.0.1/24', '-1234.56', %s)""", (BIG,))
        c.execute("INSERT INTO many (id, f4, f8, n_free, d, ts, tstz) VALUES (2, '-Infinity', 'NaN', '1e-40',"
                  " 'infinity', '-infinity', 'infinity')")
        c.execute("INSERT INTO many (id) VALUES (3)")
        c.execute("UPDATE many SET t = 'changed' WHERE id = 1")  # big: unchanged TOAST, kept from ClickHouse
        c.execute("INSERT INTO bag VALUES (1, 'x'), (1, 'x'), (2, NULL)")
    run_worker(tmp_path, flow)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("UPDATE many SET id = 10, i4 = 5 WHERE id = 1")  # a key change, big still unchanged
        c.execute("DELETE FROM bag WHERE ctid = (SELECT min(ctid) FROM bag WHERE a = 1)")
        c.execute("UPDATE bag SET b = 'y' WHERE a = 2")
    run_worker(tmp_path, flow)
    got = {r[0]: r for r in dbs.table(
        "many", "id, b, i2, i4, i8, f4, f8, n_small, n_big, n_free, t, vc, ch, by, d, tm, ts, tstz, iv, tz,"
                " toString(u), j, jb, ia, ta, e, dom, ip, mon, big", "id")}
    assert sorted(got) == [2, 3, 10]
    r = got[10]
    pgr = pg_rows(pgdb, "SELECT id, b, i2, i4, i8, f4, f8, n_small, n_big::text, n_free::text, t, vc, ch, by, d,"
                    " tm::text, ts, tstz, iv::text, tz::text, u::text, j::text, jb::text, ia, ta, e::text, dom,"
                    " ip::text, mon::numeric, big FROM many WHERE id = 10")[0]
    assert r[:5] == pgr[:5]
    assert abs(r[5] - pgr[5]) < 1e-6 and r[6] == pgr[6]
    assert r[7] == pgr[7]
    assert r[8] == pgr[8] and r[9] == "NaN"  # numeric beyond 38 digits, unconstrained numeric: text
    assert r[10:13] == pgr[10:13] and r[14] == pgr[14]
    assert dbs.rows(f"SELECT hex(by) FROM `{dbs.target}`.many__current WHERE id = 10") == [("00FF10",)]
    assert r[15] == "24:00:00"  # time as text, 24:00:00 kept
    assert r[16] == pgr[16] and r[17] == pgr[17].astimezone(dt.UTC).replace(tzinfo=None)
    assert r[18] == "1 year 2 months -3 days 04:05:06.789" and r[19] == pgr[19] and r[20] == pgr[20]
    assert json.loads(r[21]) == json.loads(pgr[21]) and json.loads(r[22]) == json.loads(pgr[22])
    assert r[23] == pgr[23] and r[24] == pgr[24]
    assert r[25:28] == pgr[25:28] and r[28] == pgr[28] and r[29] == BIG
    r2 = got[2]
    assert r2[5] == float("-inf") and r2[6] != r2[6]
    assert r2[9] == pg_rows(pgdb, "SELECT n_free::text FROM many WHERE id = 2")[0][0] == "0." + "0" * 39 + "1"
    assert r2[14] == dt.date(2299, 12, 31) and r2[16] == dt.datetime(1900, 1, 1)  # +-infinity: the range's ends
    assert r2[17].replace(tzinfo=None) == dt.datetime(2299, 12, 31, 23, 59, 59, 999999)
    assert got[3][1:23] == (None,) * 22 and got[3][23:25] == ([], [])  # a NULL array reads as []
    assert got[3][25:] == (None,) * 5
    assert dbs.table("bag", "a, b", "a, b") == pg_rows(pgdb, "SELECT a, b FROM bag ORDER BY a, b") == [(1, "x"),
                                                                                                 (2, "y")]


@settings(max_examples=int(os.environ.get("WALLABY_CLICKHOUSE_WORKER_EXAMPLES", "2")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(rounds=st.lists(history(40), min_size=1, max_size=3))
def test_random_histories_streamed_by_a_worker_end_equal(clickhouse, pg, rounds, tmp_path_factory):  # noqa: F811
    import psycopg

    from tests.conftest import _drop_database

    tmp = tmp_path_factory.mktemp("chhist")
    name = f"chh{random.getrandbits(40):x}"
    d = Dbs(clickhouse, _name("tgt"), _name("state"))
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    dsn = pg.dsn(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            create_tables(c, toast=True)
        flow = _flow(tmp, dsn, f"ch-hist-{name}", "public.h,public.k", {"dsn": d.dsn(), "database": d.target},
                     batch_size="7")
        run_worker(tmp, flow, epoch="100ms")  # creates the slot
        for ops in rounds:
            with psycopg.connect(dsn) as conn:
                play(conn, ops, toast=True)
            run_worker(tmp, flow, epoch="100ms")
            assert d.table("h", "id, v, t", "id") == pg_rows(dsn, "SELECT id, v, t FROM h ORDER BY id"), rounds
            assert d.table("k", "a, b", "a, b") == pg_rows(dsn, "SELECT a, b FROM k ORDER BY a, b"), rounds
    finally:
        _drop_database(pg.dsn(), name)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(dbs, pgdb, tmp_path):
    """A writer thread keeps changing a keyed table (TOASTed values left unchanged by its updates, key changes) and
    appending to a keyless one while the worker is killed -9 at 6 random moments of its streaming; a last run
    catches up: the keyed table equals Postgres, and the keyless one holds every inserted row exactly once."""
    import psycopg

    from tests.killkit import ItemWrites, create_item_tables, kill_at_random

    with psycopg.connect(pgdb, autocommit=True) as c:
        create_item_tables(c, toast=True)
    flow = _flow(tmp_path, pgdb, "ch-kill", "public.items,public.events", {"dsn": dbs.dsn(), "database": dbs.target},
                 batch_size="50")
    run_worker(tmp_path, flow)  # the slot
    logs = []
    with ItemWrites(pgdb, toast=True) as writes:
        for run in range(6):
            logs += kill_at_random([*WORKER, "-flow-file", str(flow)], worker_env(tmp_path), ROOT, tmp_path, runs=1,
                                   started="streaming from", window=(0.3, 3.0), seed=2025 + run)
    assert all("Traceback" not in log for log in logs), logs
    run_worker(tmp_path, flow, args=("-max-empty-reads", "3"), timeout=300)
    assert writes.written > 100
    assert dbs.table("items", "id, qty, note", "id") == pg_rows(pgdb, "SELECT * FROM items ORDER BY id")
    got = dbs.rows(f"SELECT n, count() FROM `{dbs.target}`.events__current GROUP BY n ORDER BY n")
    assert got == [(n, 1) for (n,) in pg_rows(pgdb, "SELECT n FROM events ORDER BY n")]


class _OwnServer:
    """A chdb server of this test's own (its data directory survives a kill)."""

    def __init__(self, directory: Path):
        from tests.servers import free_port

        self.dir, self.port, self.proc = directory, free_port(), None
        self.password = "hunter2secret"

    def start(self) -> None:
        from tests.chserver import ClickHouseServer, _answers

        with open(self.dir.parent / "chserver.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.chserver", "--port", str(self.port), "--path",
                                          str(self.dir), "--user", "default", "--password", self.password],
                                         cwd=ROOT, stdout=log, stderr=log)
        server = ClickHouseServer("127.0.0.1", self.port, "default", self.password)
        deadline = time.monotonic() + 60
        while not _answers(server):
            assert self.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        self.server = server

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def test_clickhouse_going_away_mid_epoch_is_a_transient_error(tmp_path):
    from sinks.base import TransientSinkError

    own = _OwnServer(tmp_path / "data")
    own.start()
    t = table("users", USERS)
    s = Stream()
    try:
        d = Dbs(own.server, _name("tgt"), _name("state"))
        w = make(d)
        apply(w, s.batch(s.rows(t, ins(id=1, name="a", big="A"))))
        own.kill()
        w.write(s.batch(s.rows(t, ins(id=2, name="b", big="B"))))
        with pytest.raises(TransientSinkError) as e:
            w.commit()
        assert own.password not in str(e.value) and "table" in str(e.value)
        w.close()
        own.start()  # committed before it went away: there; the rest replays
        w = make(d)
        apply(w, s.batch(s.rows(t, ins(id=2, name="b", big="B"))))
        w.close()
        assert users(d) == [(1, "a", "A"), (2, "b", "B")]
    finally:
        own.kill()


def test_the_bench_leg_runs_beside_its_ceiling_at_a_tiny_size(pg, capsys):
    """`make bench`'s e2e_clickhouse leg and clickhouse_bulk_load (bench/clickhouse_ceiling.py) cannot rot unseen."""
    import psycopg

    from bench.run import bench_profile, print_profiles

    changes = 2000
    try:
        res = bench_profile(pg, "narrow", changes, 500, ["e2e_clickhouse"])
    finally:  # bench_profile leaves its database and slots for the next run to drop; the session's server drops now
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            for (slot,) in c.execute("SELECT slot_name FROM pg_replication_slots WHERE database = 'bench_narrow'"
                                     " AND NOT active").fetchall():
                c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            c.execute("DROP DATABASE IF EXISTS bench_narrow WITH (FORCE)")
    legs = res["legs"]
    assert legs["e2e_clickhouse"]["changes_seen"] == changes and legs["e2e_clickhouse"]["peak_rss_mb"] > 0
    assert legs["clickhouse_bulk_load"]["rows"] == changes * 4 // 5  # the final table: every insert, updated
    assert legs["e2e_clickhouse"]["ratio_to_ceiling"] > 0
    (target,) = res["targets"]
    assert target["leg"] == "e2e_clickhouse" and isinstance(target["met"], bool)
    capsys.readouterr()
    print_profiles({"narrow": res})
    assert "[narrow] e2e_clickhouse=" in capsys.readouterr().out


def test_numeric_nan_into_a_decimal_column_is_one_clear_error_not_a_null(dbs):
    t = table("num", [col("id", "int4", key=True), col("n", "numeric", typmod=numeric_typmod(12, 3))])
    s = Stream()
    w = make(dbs)
    try:
        apply(w, s.batch(s.rows(t, ins(id=1, n=decimal.Decimal("1.5")))))
        with pytest.raises(PermanentSinkError, match=r"""column 'n' is Nullable\(Decimal\(12, 3\)\) in ClickHouse"""
                           r""" but the source sent 'NaN' .* \{"numeric": "String"\}"""):
            apply(w, s.batch(s.rows(t, ins(id=2, n="NaN"), ins(id=3, n="2.25"), arrow_types={"n": pa.string()})))
    finally:
        w.close()
    assert dbs.table("num", "id, n", "id") == [(1, decimal.Decimal("1.5"))]
    w = make(dbs, table="num2", type_mappings={"numeric": "String"})  # the documented fix: exact text
    try:
        apply(w, s.batch(s.rows(t, ins(id=2, n="NaN"), ins(id=3, n="2.25"), arrow_types={"n": pa.string()})))
        assert dbs.table("num2", "id, n", "id") == [(2, "NaN"), (3, "2.25")]
    finally:
        w.close()
