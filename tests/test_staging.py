"""DuckDB staging loads (batch_mode=staging): the writer's routing, resolution by batch_resolution, the flow-level
helper, the FlowService.ResolveStaging RPC and ``wallaby-admin flow resolve-staging``."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from pathlib import Path

import duckdb
import pytest

from dataflows.staging import resolve_flow_staging
from sinks.duckdb import PLUGIN
from sinks.duckdb.staging import resolve_staging
from sinks.duckdb.writer import DuckDBOptions, DuckDBWriter
from sinks.sql.staging import ResolvedTable
from tests.apiserver import make_server
from tests.builders import Stream, col, dele, evolve, ins, read, table, upd
from wallaby.core.changes import SnapshotMark
from wallaby.core.errors import ConfigError, PermanentSinkError
from wallaby.core.spec import parse_flow
from wallaby.state.checkpoints import open_store

FLOW = "flow1"


def _users(schema: str = "public", name: str = "users"):
    return table(name, [col("id", "int4", key=True), col("name", "text")], schema=schema)


def _writer(path: Path, name: str = "duck", **opts) -> DuckDBWriter:
    return DuckDBWriter(name, FLOW, DuckDBOptions(dsn=str(path), **opts))


def _rows(path: Path, qualified: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as c:
        return [tuple(r) for r in c.execute(f"SELECT * FROM {qualified} ORDER BY ALL").fetchall()]


def _tables(path: Path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as c:
        return {f"{s}.{t}" for s, t in c.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()}


def _meta(path: Path) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as c:
        return sorted(tuple(r) for r in c.execute(
            "SELECT source_schema, source_table, dest_schema, dest_table FROM main.__wallaby_meta").fetchall())


def _load(path: Path, tables, reads: dict, streamed: dict | None = None, **opts) -> None:
    """A writer with batch_mode=staging: ``streamed`` inserts to the targets, then ``reads`` read rows."""
    s = Stream(FLOW)
    w = _writer(path, batch_mode="staging", **opts)
    try:
        for t in tables:
            key = f"{t.schema}.{t.name}"
            segs = []
            if streamed and key in streamed:
                segs.append(s.rows(t, *(ins(id=i, name=n) for i, n in streamed[key])))
            if key in reads:
                segs.append(s.rows(t, *(read(id=i, name=n) for i, n in reads[key])))
            w.write(s.batch(*segs))
        w.commit()
    finally:
        w.close()


# -- the writer -----------------------------------------------------------------------------------------------------


def test_read_rows_go_to_staging_and_stream_changes_to_the_target(tmp_path):
    path = tmp_path / "w.duckdb"
    t = _users()
    s = Stream(FLOW)
    w = _writer(path, batch_mode="staging")
    w.write(s.batch(s.rows(t, ins(id=1, name="a"), ins(id=2, name="b"))))
    w.write(s.batch(s.rows(t, read(id=1, name="snap1"), read(id=5, name="snap5"))))
    # one segment mixing stream changes and read rows: split by op
    w.write(s.batch(s.rows(t, upd({"id": 1, "name": "a2"}), read(id=6, name="snap6"), dele(id=2))))
    w.commit()
    w.close()
    assert _rows(path, "public.users") == [(1, "a2")]
    assert _rows(path, "public.users_staging") == [(1, "snap1"), (5, "snap5"), (6, "snap6")]  # append-only, as read
    assert ("public", "users", "public", "users_staging") in _meta(path)
    with duckdb.connect(str(path), read_only=True) as c:
        types = dict(c.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name ="
                               " 'users_staging'").fetchall())
    assert types == {"id": "INTEGER", "name": "VARCHAR"}  # the target's type mapping


def test_staging_schema_suffix_and_schema_evolution(tmp_path):
    path = tmp_path / "w.duckdb"
    t = _users()
    t2 = evolve(t, [*t.columns, col("age", "int8")])
    s = Stream(FLOW)
    w = _writer(path, batch_mode="staging", staging_schema="stage", staging_suffix="_bf")
    w.write(s.batch(s.rows(t, read(id=1, name="a"))))
    w.write(s.batch(s.rows(t2, read(id=2, name="b", age=30)), s.rows(t2, ins(id=9, name="z", age=1))))
    w.commit()
    w.close()
    assert _rows(path, "stage.users_bf") == [(1, "a", None), (2, "b", 30)]
    assert _rows(path, "public.users") == [(9, "z", 1)]
    assert "public.users_bf" not in _tables(path)


def test_batch_mode_target_applies_read_rows_to_the_target(tmp_path):
    path = tmp_path / "w.duckdb"
    t = _users()
    s = Stream(FLOW)
    w = _writer(path)
    w.write(s.batch(s.rows(t, ins(id=1, name="a")), s.rows(t, read(id=1, name="snap"), read(id=2, name="b"))))
    w.commit()
    w.close()
    assert _rows(path, "public.users") == [(1, "snap"), (2, "b")]
    assert "public.users_staging" not in _tables(path)


def _snap(batch, consistent: bool = True):
    """``batch`` as a backfill's chunk (a snapshot mark)."""
    return dataclasses.replace(batch, snapshot=SnapshotMark("public.users#1/1", 1, False, len(batch), consistent))


def test_reads_into_a_new_table_then_a_second_writer_replaces_what_it_meets(tmp_path):
    """A writer's first reads into an empty table append; a later writer (a resumed backfill) finds the table holding
    rows and replaces the keys it meets: every key once."""
    path = tmp_path / "w.duckdb"
    t = _users()
    s = Stream(FLOW)
    w = _writer(path)
    w.write(_snap(s.batch(s.rows(t, read(id=1, name="a"), read(id=2, name="b")))))
    w.write(_snap(s.batch(s.rows(t, read(id=3, name="c")))))
    w.commit()
    w.close()
    assert _rows(path, "public.users") == [(1, "a"), (2, "b"), (3, "c")]
    w = _writer(path)
    w.write(_snap(s.batch(s.rows(t, read(id=3, name="c2"), read(id=4, name="d")))))
    w.commit()
    w.close()
    assert _rows(path, "public.users") == [(1, "a"), (2, "b"), (3, "c2"), (4, "d")]


def test_reads_of_separate_snapshots_keep_the_last_read_of_a_key(tmp_path):
    """snapshot_consistent=false: parts read their own snapshots, so a row moved between parts can be read twice, in
    one epoch too: the target holds it once, as last read."""
    path = tmp_path / "w.duckdb"
    t = _users()
    s = Stream(FLOW)
    w = _writer(path)
    w.write(_snap(s.batch(s.rows(t, read(id=1, name="old"), read(id=2, name="b"))), consistent=False))
    w.write(_snap(s.batch(s.rows(t, read(id=1, name="new"))), consistent=False))
    w.commit()
    w.close()
    assert _rows(path, "public.users") == [(1, "new"), (2, "b")]


def test_reads_after_a_streamed_change_of_the_table_replace_the_key(tmp_path):
    """A table that took a streamed change is not fresh: a read of the same key replaces it, never duplicates."""
    path = tmp_path / "w.duckdb"
    t = _users()
    s = Stream(FLOW)
    w = _writer(path)
    w.write(s.batch(s.rows(t, ins(id=1, name="streamed"))))
    w.write(_snap(s.batch(s.rows(t, read(id=1, name="snap"), read(id=2, name="b")))))
    w.commit()
    w.close()
    assert _rows(path, "public.users") == [(1, "snap"), (2, "b")]


def test_staging_table_names_the_staging_table_of_one_target(tmp_path):
    path = tmp_path / "w.duckdb"
    _load(path, [_users()], {"public.users": [(1, "a")]}, staging_table="bf")
    assert _rows(path, "public.bf") == [(1, "a")]
    # two target tables cannot share it
    s = Stream(FLOW)
    w = _writer(tmp_path / "x.duckdb", batch_mode="staging", staging_table="bf")
    w.write(s.batch(s.rows(_users(), read(id=1, name="a"))))
    with pytest.raises(PermanentSinkError, match="staging_table='bf'"):
        w.write(s.batch(s.rows(_users(name="orders"), read(id=1, name="a"))))
    w.close()
    # with `table` every source table lands in one target: one staging table is fine
    _load(tmp_path / "y.duckdb", [_users(), _users(name="orders")],
          {"public.users": [(1, "a")], "public.orders": [(2, "b")]}, staging_table="bf", table="all")
    assert _rows(tmp_path / "y.duckdb", "public.bf") == [(1, "a"), (2, "b")]


def test_a_staging_table_equal_to_its_target_is_refused(tmp_path):
    s = Stream(FLOW)
    w = _writer(tmp_path / "w.duckdb", batch_mode="staging", staging_table="users")
    with pytest.raises(PermanentSinkError, match="staging table of this target table is the target table itself"):
        w.write(s.batch(s.rows(_users(), read(id=1, name="a"))))
    w.close()


# -- resolution -----------------------------------------------------------------------------------------------------


def _opts(path: Path, **opts) -> DuckDBOptions:
    return DuckDBOptions(dsn=str(path), batch_mode="staging", **opts)


def test_append_moves_the_staged_rows_and_drops_the_staging_table(tmp_path):
    path = tmp_path / "w.duckdb"
    _load(path, [_users(), _users(name="orders")],
          {"public.users": [(5, "s5"), (6, "s6")], "public.orders": [(1, "o1")]}, {"public.users": [(1, "a")]})
    done = resolve_staging("duck", FLOW, _opts(path, batch_resolution="append"))
    assert done == [ResolvedTable("duck", "public.orders", "public.orders_staging", 1, "append"),
                    ResolvedTable("duck", "public.users", "public.users_staging", 2, "append")]
    assert _rows(path, "public.users") == [(1, "a"), (5, "s5"), (6, "s6")]
    assert _rows(path, "public.orders") == [(1, "o1")]  # created from its staging table
    assert not {"public.users_staging", "public.orders_staging"} & _tables(path)
    assert _meta(path) == [("public", "orders", "public", "orders"), ("public", "users", "public", "users")]
    assert resolve_staging("duck", FLOW, _opts(path, batch_resolution="append")) == []  # nothing staged any more
    # the writer goes on with the target as it is
    s = Stream(FLOW, lsn=0x2000000)
    w = _writer(path, batch_mode="staging")
    w.write(s.batch(s.rows(_users(name="orders"), upd({"id": 1, "name": "o2"}))))
    w.commit()
    w.close()
    assert _rows(path, "public.orders") == [(1, "o2")]


def test_replace_swaps_the_rows_atomically(tmp_path):
    path = tmp_path / "w.duckdb"
    old = [(i, f"old{i}") for i in range(3000)]
    new = [(i, f"new{i}") for i in range(1000)]
    _load(path, [_users()], {"public.users": new}, {"public.users": old})
    con = duckdb.connect(str(path))  # another connection to the same database, as a reader
    try:
        seen: list[int] = []
        stop = threading.Event()

        def poll() -> None:
            cur = con.cursor()
            while not stop.is_set():
                seen.append(cur.execute("SELECT count(*) FROM public.users").fetchone()[0])

        before = con.cursor()
        before.execute("BEGIN TRANSACTION")
        assert before.execute("SELECT count(*) FROM public.users").fetchone()[0] == 3000
        reader = threading.Thread(target=poll)
        reader.start()
        done = resolve_staging("duck", FLOW, _opts(path, batch_resolution="replace"))
        stop.set()
        reader.join()
        assert before.execute("SELECT count(*) FROM public.users").fetchone()[0] == 3000  # its snapshot: the old
        before.execute("COMMIT")
        assert set(seen) <= {3000, 1000} and seen, seen  # never empty, never half
        assert con.execute("SELECT count(*), min(name) FROM public.users").fetchone() == (1000, "new0")
    finally:
        con.close()
    assert done == [ResolvedTable("duck", "public.users", "public.users_staging", 1000, "replace")]
    assert "public.users_staging" not in _tables(path)
    assert _meta(path) == [("public", "users", "public", "users")]


def test_replace_adds_new_columns_and_keeps_the_targets_types(tmp_path):
    path = tmp_path / "w.duckdb"
    t = _users()
    t2 = evolve(t, [*t.columns, col("age", "int8")])
    s = Stream(FLOW)
    w = _writer(path, batch_mode="staging")
    w.write(s.batch(s.rows(t, ins(id=1, name="a"))))
    w.write(s.batch(s.rows(t2, read(id=2, name="b", age=7))))
    w.commit()
    w.close()
    resolve_staging("duck", FLOW, _opts(path, batch_resolution="replace"))
    assert _rows(path, "public.users") == [(2, "b", 7)]
    with duckdb.connect(str(path), read_only=True) as c:
        cols = json.loads(c.execute("SELECT columns_json FROM main.__wallaby_meta").fetchone()[0])
    assert [(x["name"], x["duckdb_type"]) for x in cols] == [("id", "INTEGER"), ("name", "VARCHAR"),
                                                              ("age", "BIGINT")]


def test_resolution_none_is_refused_and_the_rows_stay_staged(tmp_path):
    path = tmp_path / "w.duckdb"
    _load(path, [_users()], {"public.users": [(1, "a")]})
    with pytest.raises(ConfigError, match="batch_resolution") as err:
        resolve_staging("duck", FLOW, _opts(path))
    assert [p.path for p in err.value.problems] == ["batch_resolution"]
    assert _rows(path, "public.users_staging") == [(1, "a")]
    with pytest.raises(ConfigError, match="batch_mode"):
        resolve_staging("duck", FLOW, DuckDBOptions(dsn=str(path), batch_resolution="append"))


def test_resolve_by_tables_and_by_schemas(tmp_path):
    path = tmp_path / "w.duckdb"
    tables = [_users(), _users(name="orders"), _users(schema="sales", name="deals")]
    _load(path, tables, {"public.users": [(1, "u")], "sales.deals": [(3, "d")]},
          {"public.orders": [(2, "o")]})
    opts = _opts(path, batch_resolution="append")
    done = resolve_staging("duck", FLOW, opts, tables=["public.users", "public.orders"])
    assert [(r.table, r.rows, r.staged) for r in done] == [("public.orders", 0, False), ("public.users", 1, True)]
    assert "sales.deals_staging" in _tables(path)  # not selected
    with pytest.raises(ConfigError) as err:
        resolve_staging("duck", FLOW, opts, tables=["public.userz", "nodot"])
    text = str(err.value)
    assert "'public.userz' is not a table of this flow" in text and "did you mean 'public.users'?" in text
    assert "'nodot': expected schema.table" in text
    with pytest.raises(ConfigError, match="'salse' holds no table of this flow.*did you mean 'sales'"):
        resolve_staging("duck", FLOW, opts, schemas=["salse"])
    done = resolve_staging("duck", FLOW, opts, schemas=["sales"])
    assert [(r.table, r.rows) for r in done] == [("sales.deals", 1)]
    assert _rows(path, "sales.deals") == [(3, "d")]
    with pytest.raises(ConfigError, match="not a table of this flow"):  # another flow's tables are unknown
        resolve_staging("duck", "other-flow", opts, tables=["public.users"])


def test_the_schema_option_and_source_names(tmp_path):
    path = tmp_path / "w.duckdb"
    _load(path, [_users()], {"public.users": [(1, "a")]}, schema="dw")
    opts = _opts(path, batch_resolution="append", schema="dw")
    # the source's name and the target's both select it
    assert [r.table for r in resolve_staging("duck", FLOW, opts, tables=["public.users"])] == ["dw.users"]
    assert _rows(path, "dw.users") == [(1, "a")]


def test_without_the_meta_table_staging_tables_are_found_by_name(tmp_path):
    path = tmp_path / "w.duckdb"
    _load(path, [_users(), _users(name="orders")], {"public.users": [(1, "a")], "public.orders": [(2, "b")]},
          {"public.users": [(0, "z")]}, meta_table_enabled=False)
    assert "main.__wallaby_meta" not in _tables(path)
    done = resolve_staging("duck", FLOW, _opts(path, batch_resolution="append", meta_table_enabled=False))
    assert [(r.table, r.rows) for r in done] == [("public.orders", 1), ("public.users", 1)]
    assert _rows(path, "public.users") == [(0, "z"), (1, "a")]


def test_a_missing_file_has_nothing_staged(tmp_path):
    opts = _opts(tmp_path / "none.duckdb", batch_resolution="append")
    assert resolve_staging("duck", FLOW, opts) == []
    with pytest.raises(ConfigError, match="not a table of this flow"):
        resolve_staging("duck", FLOW, opts, tables=["public.users"])
    assert not (tmp_path / "none.duckdb").exists()


# -- the flow-level helper and the plugin hook -------------------------------------------------------------------


def _flow(dests: list[dict], flow_id: str = FLOW) -> dict:
    return {"id": flow_id, "name": flow_id,
            "source": {"name": "pg", "type": "postgres",
                       "options": {"dsn": "postgresql://u@127.0.0.1:1/db", "slot": "s", "publication": "p"}},
            "destinations": dests}


def _duck(name: str, path: Path, **opts) -> dict:
    return {"name": name, "type": "duckdb", "options": {"dsn": str(path), **opts}}


def test_resolve_flow_staging_over_destinations(tmp_path):
    a, b, c = tmp_path / "a.duckdb", tmp_path / "b.duckdb", tmp_path / "c.duckdb"
    for p in (a, b):
        _load(p, [_users()], {"public.users": [(1, "a")]})
    spec = parse_flow(_flow([_duck("one", a, batch_mode="staging", batch_resolution="append"),
                             _duck("two", b, batch_mode="staging", batch_resolution="replace"),
                             _duck("plain", c)]))
    assert PLUGIN.resolve_staging is not None
    done = resolve_flow_staging(spec, dest="two")
    assert [(r.destination, r.table, r.resolution) for r in done] == [("two", "public.users", "replace")]
    assert "public.users_staging" in _tables(a)
    done = resolve_flow_staging(spec, tables=["public.users"])
    assert [(r.destination, r.staged) for r in done] == [("one", True), ("two", False)]
    with pytest.raises(ConfigError, match="no destination 'tow'; did you mean 'two'"):
        resolve_flow_staging(spec, dest="tow")
    with pytest.raises(ConfigError, match="destination 'plain': its batch_mode is not 'staging'"):
        resolve_flow_staging(spec, dest="plain")
    with pytest.raises(ConfigError, match="no destination stages loads"):
        resolve_flow_staging(parse_flow(_flow([_duck("plain", c)])))
    none = parse_flow(_flow([_duck("one", a, batch_mode="staging"), _duck("two", b, batch_mode="staging",
                                                                          batch_resolution="append")]))
    with pytest.raises(ConfigError) as err:  # refused before anything is resolved
        resolve_flow_staging(none)
    assert [p.path for p in err.value.problems] == ["destinations[0].options.batch_resolution"]


# -- the API and wallaby-admin --------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_admin_resolve_staging_end_to_end(tmp_path):
    duck = tmp_path / "s.duckdb"
    spec = _flow([_duck("duck", duck, batch_mode="staging", batch_resolution="append")], flow_id="stg")
    spec["source"]["options"]["dsn"] = f"postgresql://u@127.0.0.1:{_closed_port()}/db"  # not reachable: not checked
    (tmp_path / "stg.json").write_text(json.dumps(spec))
    s = Stream("stg")
    w = DuckDBWriter("duck", "stg", DuckDBOptions(dsn=str(duck), batch_mode="staging"))
    w.write(s.batch(s.rows(_users(), ins(id=1, name="a")), s.rows(_users(name="orders"), read(id=2, name="o")),
                    s.rows(_users(schema="sales", name="deals"), read(id=3, name="d"))))
    w.commit()
    w.close()
    server = make_server(tmp_path).start()
    try:
        server.admin("flow", "create", "-file", str(tmp_path / "stg.json"))
        out = server.admin("flow", "resolve-staging", "-flow-id", "stg", "-tables", "public.orders,public.users")
        lines = out.stdout.splitlines()
        assert lines[0].split() == ["DESTINATION", "TABLE", "STAGING_TABLE", "RESOLUTION", "ROWS"]
        assert lines[1].split() == ["duck", "public.orders", "public.orders_staging", "append", "1"]
        assert lines[2].split()[:2] == ["duck", "public.users"] and "nothing staged" in lines[2]
        assert _rows(duck, "public.orders") == [(2, "o")]

        bad = server.admin("flow", "resolve-staging", "-flow-id", "stg", "-dest", "duk", check=False)
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "did you mean 'duck'" in bad.stderr
        bad = server.admin("flow", "resolve-staging", "-flow-id", "stg", "-tables", "public.nope", check=False)
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "public.nope" in bad.stderr
        both = server.admin("flow", "resolve-staging", "-flow-id", "stg", "-tables", "a.b", "-schemas", "a",
                            check=False)
        assert both.returncode == 2 and "not both" in both.stderr

        store = open_store(server.env)  # the flow's worker runs: it holds the DuckDB file
        store.flow_store.db.run("UPDATE wallaby_flows SET state = ? WHERE id = ?", ("running", "stg"))
        busy = server.admin("flow", "resolve-staging", "-flow-id", "stg", check=False)
        assert busy.returncode == 1 and "FAILED_PRECONDITION" in busy.stderr and "it is running" in busy.stderr
        assert "sales.deals_staging" in _tables(duck)
        store.flow_store.db.run("UPDATE wallaby_flows SET state = ? WHERE id = ?", ("stopped", "stg"))
        store.close()

        got = server.admin_json("flow", "resolve-staging", "-flow-id", "stg", "-schemas", "sales", "-dest", "duck")
        assert got == {"flow_id": "stg", "tables": [{"destination": "duck", "table": "sales.deals", "rows": "1",
                                                     "resolution": "append", "staging_table": "sales.deals_staging",
                                                     "staged": True}]}
        assert _rows(duck, "sales.deals") == [(3, "d")]
        out = server.admin("flow", "resolve-staging", "-flow-id", "stg")
        assert out.stdout.strip() == "flow stg: nothing staged"
        missing = server.admin("flow", "resolve-staging", "-flow-id", "nope", check=False)
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    finally:
        server.stop()
