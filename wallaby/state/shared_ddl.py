"""One lock for wallaby's own DDL in a Postgres database.

Workers of different flows often start at the same moment on one database: an API server relaunching its running
flows, a scheduled tick running each of them, a backfill beside its stream. Each creates what it needs if missing
(the ``wallaby`` schema, the source-state table, the DDL capture's function and event triggers, the heartbeat and
backfill-state tables, the pgstream tables, the flow store's migrations). ``CREATE ... IF NOT EXISTS`` is not safe
against itself: two sessions that both find the object missing both create it, and the second fails on the
catalog's unique index (``pg_namespace_nspname_index``, ``pg_type_typname_nsp_index``) or with "already exists".
Measured: four flows set up at once on a fresh database failed this way in every run of three.

:func:`shared_ddl` runs a block in one transaction that first takes a transaction-scoped advisory lock, the same
for all of wallaby in the database, so these blocks run one after another and each sees what the one before made.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The advisory lock's key (hashed by the server). Advisory locks are per database, so flows on other databases of
# the same server do not wait for each other.
LOCK_KEY = "wallaby:shared-ddl"
# How long a block waits for another worker's: the blocks are a few catalog statements each (milliseconds), so a
# wait this long means a session holding the lock is stuck; the caller gets LockNotAvailable (SQLSTATE 55P03).
LOCK_WAIT = "60s"


@contextmanager
def shared_ddl(conn: Any) -> Iterator[None]:
    """Run the block in a transaction on ``conn`` (a psycopg connection) holding the database's lock for wallaby's
    DDL. Nested in an open transaction, it becomes a savepoint and the lock is held until the outer one ends."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (LOCK_KEY,))
        conn.execute("SET LOCAL lock_timeout = DEFAULT")
        yield


__all__ = ["LOCK_KEY", "LOCK_WAIT", "shared_ddl"]
