"""Random change histories run on Postgres, shared by the destinations' end-to-end property tests: tables h (keyed)
and k (keyless, REPLICA IDENTITY FULL), DML in transactions of random sizes."""

from __future__ import annotations

import psycopg
from hypothesis import strategies as st


def create_tables(conn: psycopg.Connection, *, toast: bool = False) -> None:
    conn.execute("CREATE TABLE h (id int PRIMARY KEY, v int, t text)")
    if toast:
        conn.execute("ALTER TABLE h ALTER COLUMN t SET STORAGE EXTERNAL")
    conn.execute("CREATE TABLE k (a int, b int)")
    conn.execute("ALTER TABLE k REPLICA IDENTITY FULL")


def history(max_size: int = 40) -> st.SearchStrategy:
    """Steps (op, key, value); ``commit`` ends a transaction."""
    return st.lists(st.tuples(st.sampled_from(["insert", "update", "delete", "key", "truncate", "commit"]),
                              st.integers(1, 12), st.integers(-999, 999)), min_size=1, max_size=max_size)


def play(conn: psycopg.Connection, ops, *, toast: bool = False) -> None:
    """Run ``ops`` on h and k. ``toast``: h.t is long (stored out of line) for some rows and updates leave it
    unchanged (an unchanged TOAST value in the stream); else updates change it too."""
    for op, key, val in ops:
        if op == "insert":
            conn.execute("INSERT INTO h VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                         (key, val, f"t{val}" * (3000 if toast and val % 5 == 0 else 1)))
            conn.execute("INSERT INTO k VALUES (%s, %s)", (key % 4, val % 3))
        elif op == "update":
            extra = "" if toast else ", t = t || 'u'"
            conn.execute(f"UPDATE h SET v = %s{extra} WHERE id = %s", (val, key))
            conn.execute("UPDATE k SET b = %s WHERE ctid = (SELECT min(ctid) FROM k WHERE a = %s)", (val % 3, key % 4))
        elif op == "delete":
            conn.execute("DELETE FROM h WHERE id = %s", (key,))
            conn.execute("DELETE FROM k WHERE ctid = (SELECT max(ctid) FROM k WHERE a = %s)", (key % 4,))
        elif op == "key":
            conn.execute("UPDATE h SET id = id + 100 WHERE id = %s AND NOT EXISTS (SELECT 1 FROM h WHERE id = %s)",
                         (key, key + 100))
        elif op == "truncate" and val % 4 == 0:
            conn.execute("TRUNCATE h, k")
        elif op == "commit":
            conn.commit()
    conn.commit()
