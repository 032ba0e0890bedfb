"""The SQLite flow/checkpoint store holds flow secrets: private to its owner (file 0600, new directories 0700)."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat

import pytest

from wallaby.state.sqldb import SQLiteDatabase, open_database


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)  # the usual umask: without care, files come out 0644 and directories 0755
    yield
    os.umask(old)


def test_created_private_with_its_directories_and_side_files(tmp_path, loose_umask):
    path = tmp_path / "a" / "b" / "checkpoints.db"
    db = open_database({"WALLABY_CHECKPOINT_PATH": str(path)})
    try:
        db.run("CREATE TABLE t (x TEXT)")
        db.run("INSERT INTO t VALUES ('postgres://u:secret@h/db')")
        assert _mode(path) == 0o600
        assert _mode(tmp_path / "a") == 0o700 and _mode(tmp_path / "a" / "b") == 0o700
        for side in ("-wal", "-shm"):  # WAL mode: the side files exist while the database is open
            assert _mode(f"{path}{side}") == 0o600
    finally:
        db.close()


def test_existing_directory_left_alone(tmp_path, loose_umask):
    os.chmod(tmp_path, 0o755)
    SQLiteDatabase(tmp_path / "c.db").close()
    assert _mode(tmp_path) == 0o755 and _mode(tmp_path / "c.db") == 0o600


def test_an_existing_wide_file_is_tightened(tmp_path, loose_umask, caplog):
    path = tmp_path / "old.db"
    keep = sqlite3.connect(path)  # a store made by an older wallaby, still open elsewhere (its -wal exists)
    keep.execute("PRAGMA journal_mode=WAL")
    keep.execute("CREATE TABLE t (x)")
    keep.execute("INSERT INTO t VALUES (1)")
    keep.commit()
    os.chmod(path, 0o644)
    os.chmod(f"{path}-wal", 0o644)
    try:
        with caplog.at_level(logging.INFO, logger="wallaby.store"):
            db = SQLiteDatabase(path)
        assert db.run("SELECT x FROM t") == [(1,)]
        db.close()
    finally:
        keep.close()
    assert _mode(path) == 0o600
    assert any(str(path) in r.getMessage() and "0644" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file owned by another user needs root")
def test_a_wide_file_of_another_user_is_named_in_a_warning(tmp_path, caplog):
    path = tmp_path / "theirs.db"
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)
    os.chown(path, 65534, 65534)
    with caplog.at_level(logging.WARNING, logger="wallaby.store"):
        SQLiteDatabase(path).close()
    assert _mode(path) == 0o644  # not ours: left as it is ...
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(path) in warned[0].getMessage()  # ... and named
    assert "uid 65534" in warned[0].getMessage() and "chmod 600" in warned[0].getMessage()
