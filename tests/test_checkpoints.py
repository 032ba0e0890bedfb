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
