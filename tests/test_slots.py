"""A flow split over several slots (source option ``slots``): one publication and slot each, one input partition
each, spread over bytewax workers; each slot's changes reach their own part of every destination, with a
high-water of its own. Per-table order holds; kill -9 loses and duplicates nothing in a transactional destination."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests import WORKER
from tests.flows import ROOT, pg_rows, run_worker, worker_env, worker_flow
from tests.killkit import kill_at_random
from wallaby.core.errors import ConfigError
from wallaby.core.options import PostgresSourceOptions, slot_of
from wallaby.wire import decode

TABLES = ["public.a", "public.b", "public.c", "public.d"]


def _opts(**kw) -> PostgresSourceOptions:
    return PostgresSourceOptions.parse({"dsn": "postgresql://u@h/db", "slot": "s", "publication": "p", **kw})


def test_tables_are_placed_by_a_stable_hash_or_by_slot_tables():
    o = _opts(slots=2, publication_tables="a,b,c,d", slot_tables="public.a:1, b:1")
    views = o.slot_views()
    assert [(v.slot, v.publication) for v in views] == [("s_0", "p_0"), ("s_1", "p_1")]
    assert {t for v in views for t in v.publication_tables} == {"a", "b", "c", "d"}
    assert "a" in views[1].publication_tables and "b" in views[1].publication_tables  # kept together
    assert slot_of(o, "c") == slot_of(o, "public.c") == slot_of(o, '"public"."c"')  # one name, one slot
    assert _opts().slot_views()[0].slot == "s"  # one slot: the options as they are


@pytest.mark.parametrize(("options", "field", "says"), [
    ({"slots": 2}, "slots", "needs publication_tables"),
    ({"slots": 2, "publication_tables": "a,b", "publication_schemas": "x"}, "publication_schemas", "list the tables"),
    ({"slots": 2, "publication_tables": "a,b", "slot_tables": "a:2"}, "slot_tables", "slot 2 does not exist"),
    ({"slots": 2, "publication_tables": "a,b", "slot_tables": "z:0"}, "slot_tables", "not in publication_tables"),
    ({"slots": 3, "publication_tables": "a,b", "slot_tables": "a:0,b:0"}, "slots", "would publish no table"),
    ({"slot_tables": "a:0"}, "slot_tables", "needs slots > 1"),
    ({"slots": 2, "publication_tables": "a,b", "slot_tables": "a"}, "slot_tables", "is not table:slot"),
])
def test_bad_slot_layouts_are_refused_by_name(options, field, says):
    with pytest.raises(ConfigError) as err:
        _opts(**options)
    assert f"options.{field}" in str(err.value) and says in str(err.value)


def _tables(dsn: str) -> None:
    """Tables a-d, and an audit table (not published) a trigger fills with each change in execution order: one
    writer at a time, so that is commit order."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE audit (seq bigserial PRIMARY KEY, t text, op text, id int, v int)")
        c.execute("CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                  " INSERT INTO audit (t, op, id, v) VALUES (TG_TABLE_NAME,"
                  " lower(TG_OP), CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END,"
                  " CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.v END); RETURN NULL; END $$")
        for t in TABLES:
            c.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v int)")
            c.execute(f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW"
                      f" EXECUTE FUNCTION audit_fn()")


def _write(dsn: str, rounds: int, seed: int) -> None:
    """Transactions over all four tables (each spans both slots): inserts, updates of the same keys, deletes."""
    rnd = random.Random(seed)
    with psycopg.connect(dsn) as c:
        for r in range(rounds):
            for t in TABLES:
                key = rnd.randrange(20)
                c.execute(f"INSERT INTO {t} VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                          (key, r))
                if rnd.random() < 0.2:
                    c.execute(f"DELETE FROM {t} WHERE id = %s", (rnd.randrange(20),))
            c.commit()


def _flow(tmp: Path, dsn: str, **source) -> Path:
    return worker_flow(tmp, dsn, "sl", ",".join(TABLES), {"dsn": dsn, "format": "json", "stream": "events"},
                       dest_type="pgstream", dest_name="events", slots=2, batch_size=7, **source)


def _delivered(dsn: str) -> dict[str, list[tuple]]:
    """Per table, the changes in the pgstream stream in delivery order: (op, id, v)."""
    out: dict[str, list[tuple]] = {}
    with psycopg.connect(dsn) as c:
        rows = c.execute("SELECT table_name, wire_format, payload FROM wallaby.stream_messages WHERE stream ="
                         " 'events' ORDER BY id").fetchall()
    for table, fmt, payload in rows:
        for r in decode(bytes(payload), fmt).records:
            if r.op == "delete":
                out.setdefault(table, []).append((r.op, (r.key or r.before)[0], None))
            else:
                out.setdefault(table, []).append((r.op, r.after[0], r.after[1]))
    return out


def _made(dsn: str) -> dict[str, list[tuple]]:
    """Per table, the changes made, in commit order: (op, id, v)."""
    out: dict[str, list[tuple]] = {}
    for t, op, key, v in pg_rows(dsn, "SELECT t, op, id, v FROM audit ORDER BY seq"):
        out.setdefault(t, []).append((op, key, v))
    return out


def test_two_slots_over_two_workers_deliver_every_change_once_in_table_order(tmp_path, pgdb):
    """Four tables over two slots, read by a worker with -workers 2 into pgstream while transactions span every
    table: the two slots and publications split the tables; every change is delivered exactly once, each table's
    in commit order; each slot keeps its own checkpoint and the destination a high-water per slot; the worker
    killed -9 at random moments while writing goes on loses and duplicates nothing."""
    _tables(pgdb)
    flow = _flow(tmp_path, pgdb)
    run_worker(tmp_path, flow, args=("-max-empty-reads", "2", "-workers", "2"))  # slots, publications, state
    pubs = dict(pg_rows(pgdb, "SELECT pubname, string_agg(schemaname || '.' || tablename, ',' ORDER BY tablename)"
                              " FROM pg_publication_tables WHERE pubname LIKE 'wallaby_sl_%' GROUP BY 1"))
    assert sorted(pubs) == ["wallaby_sl_0", "wallaby_sl_1"]
    assert sorted(",".join(pubs.values()).split(",")) == TABLES
    _write(pgdb, 60, seed=1)
    run_worker(tmp_path, flow, args=("-max-empty-reads", "2", "-workers", "2"))
    assert _delivered(pgdb) == _made(pgdb)

    logs = tmp_path / "kills"
    logs.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", f"from tests.test_slots import _write; _write({pgdb!r}, 300, 2)"],
                              cwd=ROOT, env=worker_env(tmp_path))
    try:
        kill_at_random([*WORKER, "-flow-file", str(flow), "-workers", "2"], worker_env(tmp_path), ROOT, logs,
                       runs=3, started="streaming from", window=(0.2, 1.5), seed=7)
    finally:
        assert writer.wait(180) == 0
    run_worker(tmp_path, flow, args=("-max-empty-reads", "2", "-workers", "2"))
    got, want = _delivered(pgdb), _made(pgdb)
    assert {t: len(v) for t, v in got.items()} == {t: len(v) for t, v in want.items()}
    assert got == want  # each change once, each table's in commit order
    assert pg_rows(pgdb, "SELECT destination FROM wallaby.stream_state WHERE flow_id = 'sl' ORDER BY 1") == [
        ("events#0",), ("events#1",)]
    checkpoints = sqlite3.connect(tmp_path / "c.db").execute(
        "SELECT slot FROM wallaby_checkpoints WHERE flow_id = 'sl' ORDER BY 1").fetchall()
    assert checkpoints == [("wallaby_sl_0",), ("wallaby_sl_1",)]


def test_a_changed_slot_layout_is_refused_before_anything_is_created(tmp_path, pgdb):
    """slots 2 -> 3 on a flow that has positions: tables would move to a slot created now and lose the changes in
    between: the worker says so, naming the option, and creates no slot; a DuckDB destination, which has one
    writer, is refused with slots > 1 by name."""
    _tables(pgdb)
    flow = _flow(tmp_path, pgdb)
    run_worker(tmp_path, flow, args=("-max-empty-reads", "1"))
    spec = json.loads(flow.read_text())
    spec["source"]["options"]["slots"] = 3
    flow.write_text(json.dumps(spec))
    r = run_worker(tmp_path, flow, args=("-max-empty-reads", "1"), status=1)
    assert "slot layout (source options slots / slot_tables)" in r.stderr and "wallaby_sl_" in r.stderr
    assert pg_rows(pgdb, "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'wallaby_sl%'"
                         " ORDER BY 1") == [("wallaby_sl_0",), ("wallaby_sl_1",)]
    spec["source"]["options"]["slots"] = 1
    flow.write_text(json.dumps(spec))
    r = run_worker(tmp_path, flow, args=("-max-empty-reads", "1"), status=1)
    assert "stored positions for replication slot(s) wallaby_sl_0, wallaby_sl_1" in r.stderr
    assert pg_rows(pgdb, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wallaby_sl'") == [(0,)]
    spec["source"]["options"]["slots"] = 2
    spec["destinations"] = [{"name": "duck", "type": "duckdb", "options": {"dsn": str(tmp_path / "x.duckdb")}}]
    flow.write_text(json.dumps(spec))
    r = run_worker(tmp_path, flow, args=("-max-empty-reads", "1"), status=2)
    assert "destinations[0].type" in r.stderr and "has one writer" in r.stderr


def test_cleaning_up_a_flow_of_several_slots_drops_each_slot_and_publication(tmp_path, pgdb):
    """DeleteFlow's source clean-up (and failure_mode=drop_slot) reaches every slot of the flow, not just one."""
    from wallaby.control.api import sourceops

    _tables(pgdb)
    flow = _flow(tmp_path, pgdb)
    run_worker(tmp_path, flow, args=("-max-empty-reads", "1"))
    opts = PostgresSourceOptions.parse(json.loads(flow.read_text())["source"]["options"])
    done = sourceops.cleanup(opts, "sl", slot=True, publication=True, state=False)
    assert sorted(done) == ["dropped publication wallaby_sl_0", "dropped publication wallaby_sl_1",
                            "dropped slot wallaby_sl_0", "dropped slot wallaby_sl_1"]
    assert pg_rows(pgdb, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'wallaby_sl%'") == [(0,)]
    assert pg_rows(pgdb, "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'wallaby_sl%'") == [(0,)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_one_killed_lose_and_duplicate_nothing(tmp_path, pgdb):
    """The same flow as two bytewax processes (python -m bytewax.run dataflows.flow:flow -i/-a, one slot each):
    one process killed -9 while writing goes on (the other stops with it, or is stopped), then both run again until
    drained: every change delivered once, in each table's commit order."""
    _tables(pgdb)
    flow = _flow(tmp_path, pgdb)
    run_worker(tmp_path, flow, args=("-max-empty-reads", "1"))  # the slots: changes from here on are streamed
    rdir = tmp_path / "bytewax-recovery"
    rdir.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(rdir), "1"], check=True, cwd=ROOT)
    env = {**worker_env(tmp_path), "WALLABY_FLOW_FILE": str(flow)}

    def processes(extra: dict, tag: str) -> list[subprocess.Popen]:
        ports = [_free_port(), _free_port()]
        addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
        cmd = [sys.executable, "-m", "bytewax.run", "dataflows.flow:flow", "-w", "1", "-a", addresses, "-r", str(rdir),
               "-s", "1", "-b", "0"]
        return [subprocess.Popen([*cmd, "-i", str(i)], env={**env, **extra}, cwd=ROOT,
                                 stdout=open(tmp_path / f"{tag}{i}.log", "wb"), stderr=subprocess.STDOUT)
                for i in range(2)]

    def logs(tag: str) -> str:
        return "".join((tmp_path / f"{tag}{i}.log").read_text() for i in range(2))

    procs = processes({}, "run")
    writer = subprocess.Popen([sys.executable, "-c", f"from tests.test_slots import _write; _write({pgdb!r}, 300, 3)"],
                              cwd=ROOT, env=worker_env(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while logs("run").count("streaming from") < 2 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), logs("run")[-3000:]
            time.sleep(0.1)
        time.sleep(random.Random(5).uniform(0.5, 2.0))
        procs[1].kill()
        procs[1].wait(30)
        try:
            procs[0].wait(30)  # its peer is gone: it ends too
        except subprocess.TimeoutExpired:
            procs[0].kill()
            procs[0].wait(30)
    finally:
        assert writer.wait(180) == 0
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    procs = processes({"WALLABY_MAX_EMPTY_READS": "2"}, "again")
    for p in procs:
        assert p.wait(180) == 0, logs("again")[-4000:]
    got, want = _delivered(pgdb), _made(pgdb)
    assert {t: len(v) for t, v in got.items()} == {t: len(v) for t, v in want.items()}
    assert got == want
