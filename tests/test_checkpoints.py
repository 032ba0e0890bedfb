"""The checkpoint store: both backends, selection by environment, clear errors."""

from __future__ import annotations

import pytest

from wallaby.core.changes import Position
from wallaby.core.errors import ConfigError
from wallaby.state.checkpoints import Checkpoint, PostgresCheckpoints, SQLiteCheckpoints, open_store
from wallaby.state.sqldb import PostgresDatabase, SQLiteDatabase


def _exercise(store) -> None:
    assert store.get("f", "s") is None
    big = (1 << 63) + 5  # LSNs are unsigned 64-bit; the column is a signed BIGINT
    store.put(Checkpoint("f", "s", big, Position(big - 1, 3), 1.0))
    store.put(Checkpoint("g", "s", 10, Position(9, 1), 2.0))
    cp = store.get("f", "s")
    assert (cp.confirmed_lsn, cp.position) == (big, Position(big - 1, 3))
    store.put(Checkpoint("f", "s", big + 1, Position(big, 0), 3.0))
    assert store.get("f", "s").confirmed_lsn == big + 1
    assert [c.flow_id for c in store.list()] == ["f", "g"]
    assert [c.flow_id for c in store.list("g")] == ["g"]
    assert store.get("f", "s").as_dict()["confirmed_lsn"] == "80000000/6"


def test_sqlite_backend(tmp_path):
    store = SQLiteCheckpoints(tmp_path / "deep" / "cp.db")
    _exercise(store)
    store.close()
    again = SQLiteCheckpoints(tmp_path / "deep" / "cp.db")  # durable across processes
    assert again.get("g", "s").position == Position(9, 1)


def test_postgres_backend(pgdb):
    store = PostgresCheckpoints(pgdb)
    _exercise(store)
    store.close()


def test_environment_selects_the_backend(tmp_path, pgdb):
    s = open_store({"WALLABY_CHECKPOINT_PATH": str(tmp_path / "a.db")})
    assert isinstance(s.db, SQLiteDatabase) and s.db.path.endswith("a.db")
    s = open_store({"WALLABY_CHECKPOINT_DSN": f"sqlite:{tmp_path / 'b.db'}", "WALLABY_CHECKPOINT_BACKEND": "sqlite"})
    assert isinstance(s.db, SQLiteDatabase) and s.db.path.endswith("b.db")
    s = open_store({"WALLABY_POSTGRES_DSN": pgdb})  # postgres by default when the API DSN is set
    assert isinstance(s.db, PostgresDatabase)
    s.close()
    s = open_store({"WALLABY_CHECKPOINT_BACKEND": "postgres", "WALLABY_CHECKPOINT_DSN": pgdb})
    assert isinstance(s.db, PostgresDatabase)
    s.close()


def test_bad_backend_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="WALLABY_CHECKPOINT_BACKEND.*'sqlite' or 'postgres'"):
        open_store({"WALLABY_CHECKPOINT_BACKEND": "redis"})
    with pytest.raises(ConfigError, match="WALLABY_CHECKPOINT_DSN"):
        open_store({"WALLABY_CHECKPOINT_BACKEND": "postgres"})
    with pytest.raises(ConfigError) as err:
        open_store({"WALLABY_CHECKPOINT_BACKEND": "postgres",
                    "WALLABY_CHECKPOINT_DSN": "postgresql://u:s3cret@127.0.0.1:1/x?connect_timeout=2"})
    assert "s3cret" not in str(err.value)


def test_processes_that_open_a_new_sqlite_store_at_once_each_apply_its_steps_once(tmp_path):
    """Eight processes open one new SQLite store at the same moment, three times over (the same flow started twice,
    an API server and its workers): every one opens it (a step applied one at a time let two processes both find a
    column missing, and the second failed on 'duplicate column name'), and each step is recorded once."""
    import sqlite3
    import subprocess
    import sys

    code = ("import sys, time; from wallaby.state.checkpoints import open_store; t = float(sys.argv[2]);"
            " time.sleep(max(0.0, t - time.time()));"
            " s = open_store({'WALLABY_CHECKPOINT_BACKEND': 'sqlite', 'WALLABY_CHECKPOINT_PATH': sys.argv[1]});"
            " s.flow_store; s.close()")
    import time

    for round_ in range(3):
        path = tmp_path / f"c{round_}.db"
        at = str(time.time() + 1.5)  # every process past its imports, then all at once
        procs = [subprocess.Popen([sys.executable, "-c", code, str(path), at], stderr=subprocess.PIPE, text=True)
                 for _ in range(8)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), [e.strip().splitlines()[-1:] for e in errors if e.strip()]
        steps = sqlite3.connect(path).execute(
            "SELECT component, version, count(*) FROM wallaby_schema_migrations GROUP BY 1, 2").fetchall()
        assert steps and all(n == 1 for _, _, n in steps), steps
