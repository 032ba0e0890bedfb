"""Shared fixtures: a real local Postgres (wal_level=logical) for the whole session.

The server's data directory lives under .cache/test-pg/ and is reused between
runs; the server is started at session start and stopped at session end. Each
test that needs a database gets a fresh one (``pgdb``), dropped afterwards
together with any replication slot left in it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings

from wallaby.control.localpg import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"

# Hypothesis: `make test-rapid RAPID_CHECKS=N` runs N examples per property test;
# the plain suite runs a smaller number so it stays quick.
settings.register_profile(
    "wallaby",
    max_examples=int(os.environ.get("WALLABY_RAPID_CHECKS", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.load_profile("wallaby")


def pytest_collection_modifyitems(config, items):
    """Every hypothesis test is a property test (`-m property` selects them)."""
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.property)


def _pg_dir():
    """.cache/test-pg, held with a lock for this session; when another pytest session holds it, a directory of
    this session's own (so one session ending never stops the server another one uses)."""
    import fcntl
    import shutil

    CACHE.mkdir(exist_ok=True)
    if os.environ.get("WALLABY_TEST_PG_DIR"):  # a directory of its own, kept
        return Path(os.environ["WALLABY_TEST_PG_DIR"]), None, None
    lock = open(CACHE / "test-pg.lock", "w")  # noqa: SIM115 - held for the whole session
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return CACHE / "test-pg", lock, None
    except BlockingIOError:
        lock.close()
        own = CACHE / f"test-pg-{os.getpid()}"
        return own, None, lambda: shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> LocalPostgres:
    """The session's local Postgres. Fails the run with the reason if it cannot start."""
    directory, lock, cleanup = _pg_dir()
    server = LocalPostgres(directory, port=int(os.environ.get("WALLABY_TEST_PG_PORT", "0")))
    try:
        server.start()
        server.wait_ready()
    except Exception as exc:  # a service that cannot start fails the run, it is never skipped
        pytest.fail(f"local Postgres could not be started: {exc}", pytrace=False)
    # A throwaway server: slots left by an interrupted earlier run would hold names the tests use.
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
    yield server
    server.stop()
    if lock is not None:
        lock.close()
    if cleanup is not None:
        cleanup()


def _drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,)
            )
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse:
                import time

                time.sleep(0.5)
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pgdb(pg: LocalPostgres):
    """DSN of a fresh database on the session server; dropped (with its slots) after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = pg.dsn()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg.dsn(name)
    _drop_database(admin, name)
