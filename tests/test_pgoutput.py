"""The pgoutput decoder on real bytes captured from the server (pg_logical_slot_peek_binary_changes)."""

from __future__ import annotations

import psycopg
import pytest

from sources.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    DecodeError,
    Decoder,
    Delete,
    Insert,
    Keepalive,
    LogicalMessage,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfo,
    Update,
    XLogData,
    decode_copy_data,
    standby_status,
)


def capture(conn: psycopg.Connection, slot: str, proto: int = 4, streaming: bool = False) -> list[bytes]:
    opts = ["proto_version", str(proto), "publication_names", "pub", "messages", "true"]
    if streaming:
        opts += ["streaming", "on"]
    rows = conn.execute(
        "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, VARIADIC %s::text[])",
        (slot, opts),
    ).fetchall()
    return [bytes(r[0]) for r in rows]


@pytest.fixture
def conn(pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text, big text, m mood)")
        c.execute("ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL")
        c.execute("CREATE TABLE full_t (a int, b text)")
        c.execute("ALTER TABLE full_t REPLICA IDENTITY FULL")
        c.execute("CREATE PUBLICATION pub FOR ALL TABLES")
        c.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        yield c


@pytest.mark.parametrize("proto", [1, 2, 3, 4])
def test_every_message_kind(conn, proto):
    big = "x" * 20000
    conn.execute("INSERT INTO t VALUES (1, 'héllo 🦘', %s, 'happy'), (2, NULL, 'b', 'sad')", (big,))
    conn.execute("UPDATE t SET v = 'w' WHERE id = 1")  # big stays unchanged -> 'u'
    conn.execute("UPDATE t SET id = 10 WHERE id = 2")  # key change -> old key 'K'
    conn.execute("DELETE FROM t WHERE id = 10")
    conn.execute("INSERT INTO full_t VALUES (1, 'a')")
    conn.execute("UPDATE full_t SET b = 'b'")  # REPLICA IDENTITY FULL -> old row 'O'
    conn.execute("DELETE FROM full_t")
    conn.execute("TRUNCATE t, full_t RESTART IDENTITY")
    conn.execute("SELECT pg_logical_emit_message(true, 'wallaby_test', %s::bytea)", (b"payload \x00 bytes",))
    msgs = [Decoder(proto).decode(b) for b in capture(conn, "s", proto)]
    kinds = [type(m).__name__ for m in msgs]
    assert kinds.count("Begin") == kinds.count("Commit") == 9, f"{proto}: " + " ".join(kinds)

    rel = next(m for m in msgs if isinstance(m, Relation) and m.name == "t")
    assert (rel.namespace, rel.replica_identity) == ("public", "d")
    assert [(c.name, c.key) for c in rel.columns] == [("id", True), ("v", False), ("big", False), ("m", False)]
    assert rel.columns[0].type_oid == 23
    typ = next(m for m in msgs if isinstance(m, TypeInfo))
    assert (typ.namespace, typ.name) == ("public", "mood")

    ins = [m for m in msgs if isinstance(m, Insert) and m.relid == rel.relid]
    assert ins[0].new == [b"1", "héllo 🦘".encode(), big.encode(), b"happy"]
    assert ins[1].new == [b"2", None, b"b", b"sad"]

    upd = [m for m in msgs if isinstance(m, Update) and m.relid == rel.relid]
    assert upd[0].new == [b"1", b"w", UNCHANGED, b"happy"] and upd[0].old is None
    assert upd[1].old_kind == "K" and upd[1].old == [b"2", None, None, None] and upd[1].new[0] == b"10"

    dels = [m for m in msgs if isinstance(m, Delete)]
    assert dels[0].old_kind == "K" and dels[0].old[0] == b"10"
    full_rel = next(m for m in msgs if isinstance(m, Relation) and m.name == "full_t")
    assert full_rel.replica_identity == "f"
    full_upd = next(m for m in msgs if isinstance(m, Update) and m.relid == full_rel.relid)
    assert full_upd.old_kind == "O" and full_upd.old == [b"1", b"a"] and full_upd.new == [b"1", b"b"]
    assert dels[1].old_kind == "O" and dels[1].old == [b"1", b"b"]

    tr = next(m for m in msgs if isinstance(m, Truncate))
    assert set(tr.relids) == {rel.relid, full_rel.relid} and tr.restart_identity and not tr.cascade

    lm = next(m for m in msgs if isinstance(m, LogicalMessage))
    assert lm.transactional and lm.prefix == "wallaby_test" and lm.content == b"payload \x00 bytes"

    begin, commit = msgs[0], next(m for m in msgs if isinstance(m, Commit))
    assert isinstance(begin, Begin) and begin.final_lsn == commit.commit_lsn < commit.end_lsn
    assert begin.commit_ts == commit.commit_ts > 1_600_000_000_000_000


def test_streamed_transaction(conn):
    conn.execute("SET logical_decoding_work_mem = '64kB'")
    with conn.transaction():
        conn.execute("INSERT INTO t SELECT g, repeat('v', 200), 'b', 'sad' FROM generate_series(1, 3000) g")
    with conn.transaction():
        conn.execute("INSERT INTO t SELECT g, repeat('v', 200), 'b', 'sad' FROM generate_series(5001, 8000) g")
        conn.execute("SAVEPOINT s1")
        conn.execute("INSERT INTO t SELECT g, repeat('v', 200), 'b', 'sad' FROM generate_series(9001, 9500) g")
        conn.execute("ROLLBACK TO SAVEPOINT s1")
    raw = capture(conn, "s", proto=2, streaming=True)
    dec = Decoder(2)
    msgs = [dec.decode(b) for b in raw]
    kinds = {type(m) for m in msgs}
    assert {StreamStart, StreamStop, StreamCommit, StreamAbort} <= kinds, kinds
    inserts = [m for m in msgs if isinstance(m, Insert)]
    assert inserts and all(m.xid is not None for m in inserts)  # in-stream messages carry the xid
    commits = [m for m in msgs if isinstance(m, StreamCommit)]
    assert len(commits) == 2 and commits[0].commit_lsn < commits[0].end_lsn
    abort = next(m for m in msgs if isinstance(m, StreamAbort))
    assert abort.subxid != abort.xid


def test_replication_framing():
    x = decode_copy_data(b"w" + (1).to_bytes(8, "big") + (2).to_bytes(8, "big") + (3).to_bytes(8, "big") + b"B")
    assert isinstance(x, XLogData) and (x.start_lsn, x.end_lsn, x.send_time, x.payload) == (1, 2, 3, b"B")
    k = decode_copy_data(b"k" + (5).to_bytes(8, "big") + (6).to_bytes(8, "big") + b"\x01")
    assert isinstance(k, Keepalive) and k.end_lsn == 5 and k.reply_requested
    s = standby_status(1, 2, 3, 4, True)
    assert s[0:1] == b"r" and len(s) == 34 and s[-1] == 1


def test_malformed_messages_are_clear_errors():
    with pytest.raises(DecodeError, match="unknown pgoutput message kind 'Z'"):
        Decoder().decode(b"Z")
    with pytest.raises(DecodeError, match="malformed pgoutput message 'I'"):
        Decoder().decode(b"I\x00\x00")
    with pytest.raises(DecodeError, match="tuple column kind"):
        Decoder().decode(b"I\x00\x00\x00\x01N\x00\x01x")
    with pytest.raises(DecodeError):
        decode_copy_data(b"q")
