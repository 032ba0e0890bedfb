"""The pgstream destination and its consumers: StreamService, wallaby-admin stream, concurrency, leases."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import psycopg

from sinks.pgstream import writer as pgstream
from tests import WORKER
from tests.apiserver import ROOT, flow_file, make_server
from wallaby.wire import decode


def _flow(tmp_path, dsn: str, fmt: str = "json") -> dict:
    flow = json.loads(flow_file(tmp_path, dsn, "ps", duck=tmp_path / "unused.duckdb").read_text())
    flow["destinations"] = [{"name": "orders", "type": "pgstream", "options": {"dsn": dsn, "format": fmt}}]
    flow["source"]["options"]["batch_size"] = "5"  # many small messages
    return flow


def _run(tmp_path, flow: dict) -> None:
    path = tmp_path / "ps.json"
    path.write_text(json.dumps(flow))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(WALLABY_CHECKPOINT_PATH=str(tmp_path / "store.db"), WALLABY_EPOCH_INTERVAL="300ms")
    out = subprocess.run([*WORKER, "-flow-file", str(path), "-max-empty-reads", "2"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]


def _changes(conn, ids: list[int]) -> int:
    rows = conn.execute("SELECT wire_format, payload FROM wallaby.stream_messages WHERE id = ANY(%s)",
                        (ids,)).fetchall()
    return sum(len(decode(bytes(p), fmt).records) for fmt, p in rows)


def test_stream_messages_groups_leases_and_replay(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    flow = _flow(tmp_path, pgdb, "avro")
    _run(tmp_path, flow)
    with psycopg.connect(pgdb, autocommit=True) as c:
        for i in range(40):  # 40 transactions -> several messages
            c.execute("INSERT INTO orders SELECT g, 'n' FROM generate_series(%s::int, %s::int) g",
                      (i * 5 + 1, i * 5 + 5))
    _run(tmp_path, flow)
    _run(tmp_path, flow)  # nothing new: nothing written twice

    with psycopg.connect(pgdb, autocommit=True) as conn:
        total = conn.execute("SELECT count(*) FROM wallaby.stream_messages WHERE stream = 'orders'").fetchone()[0]
        all_ids = [r[0] for r in conn.execute("SELECT id FROM wallaby.stream_messages ORDER BY id")]
        assert total >= 10 and _changes(conn, all_ids) == 200  # every change once

    # Four consumers of one group, acking what they get: each message delivered once.
    got: list[int] = []
    lock = threading.Lock()

    def consume(name: str) -> None:
        with psycopg.connect(pgdb, autocommit=True) as conn:
            while True:
                msgs = pgstream.pull(conn, "orders", "search", 2, 30, name)
                if not msgs:
                    return
                with lock:
                    got.extend(m.id for m in msgs)
                pgstream.ack(conn, "orders", "search", [m.id for m in msgs])

    threads = [threading.Thread(target=consume, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == all_ids

    with psycopg.connect(pgdb, autocommit=True) as conn:
        # Another group sees everything again; a lease not acked comes back after the visibility.
        first = pgstream.pull(conn, "orders", "audit", 3, 1, "crashy")
        assert [m.id for m in first] == all_ids[:3]
        assert pgstream.pull(conn, "orders", "audit", 3, 1, "other")[0].id == all_ids[3]
        time.sleep(1.3)
        again = pgstream.pull(conn, "orders", "audit", 3, 30, "other")
        assert [m.id for m in again] == all_ids[:3]
        attempts = conn.execute("SELECT attempts FROM wallaby.stream_deliveries WHERE consumer_group = 'audit'"
                                " AND message_id = %s", (all_ids[0],)).fetchone()[0]
        assert attempts == 2
        # Replay: the search group's messages are ready again.
        assert pgstream.replay(conn, "orders", "search", from_lsn=0) == len(all_ids)
        assert len(pgstream.pull(conn, "orders", "search", 1000, 30)) == len(all_ids)


def test_stream_service_and_admin(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    flow = _flow(tmp_path, pgdb)
    _run(tmp_path, flow)
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("INSERT INTO orders VALUES (1, 'a'), (2, 'b')")
        c.execute("UPDATE orders SET note = 'c' WHERE id = 1")
    _run(tmp_path, flow)
    server = make_server(tmp_path).start()
    try:
        path = tmp_path / "ps.json"
        server.admin("flow", "create", "-file", str(path))  # the server finds the stream through the flow
        pulled = server.admin_json("stream", "pull", "-stream", "orders", "-group", "g", "-max", "10")
        msgs = pulled["messages"]
        assert msgs and all(m["wire_format"] == "json" for m in msgs)
        table_out = server.admin("stream", "pull", "-stream", "orders", "-group", "g2").stdout
        assert "orders" in table_out and "json" in table_out
        ids = ",".join(m["id"] for m in msgs)
        assert server.admin_json("stream", "ack", "-stream", "orders", "-group", "g", "-ids", ids)["acked"] == \
            str(len(msgs))
        assert server.admin_json("stream", "pull", "-stream", "orders", "-group", "g").get("messages", []) == []
        reset = server.admin_json("stream", "replay", "-stream", "orders", "-group", "g", "-since",
                                  "2000-01-01T00:00:00Z")
        assert reset["reset"] == str(len(msgs))
        missing = server.admin("stream", "pull", "-stream", "nope", "-group", "g", check=False)
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "orders" in missing.stderr
        bad = server.admin("stream", "replay", "-stream", "orders", "-group", "g", check=False)
        assert bad.returncode == 2 and "-since" in bad.stderr
    finally:
        server.stop()
