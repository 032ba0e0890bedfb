"""wallaby's own database: the checkpoint store and the flow store share it.

Chosen by the environment (USAGE.md "Checkpoint Store"):

- ``WALLABY_CHECKPOINT_BACKEND``: ``sqlite`` or ``postgres``. Default: ``postgres``
  when ``WALLABY_POSTGRES_DSN`` is set, else ``sqlite``.
- ``WALLABY_CHECKPOINT_PATH``: the SQLite file (default ``~/.wallaby/checkpoints.db``).
- ``WALLABY_CHECKPOINT_DSN``: overrides the full DSN (a ``sqlite:///path`` or
  ``file:`` URI for SQLite, a Postgres DSN for Postgres).

SQL is written once with ``?`` placeholders; the Postgres backend turns them
into ``%s``. Each component (checkpoints, flows) keeps numbered migrations,
applied once and recorded in ``wallaby_schema_migrations``, so a newer wallaby
upgrades an older database in place.

The SQLite file holds flow definitions with their secrets (DSN passwords, keys,
tokens), so it is private to its owner: wallaby creates it 0600 (SQLite gives its
``-wal``/``-shm`` files the same mode) and the directories it creates for it
0700; an existing file (or side file) open to others is tightened to its owner's
bits when this user owns it, else a warning names it (:func:`make_private`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from wallaby.core.errors import ConfigError, FieldProblem, redact_dsn
from wallaby.state.shared_ddl import shared_ddl

log = logging.getLogger("wallaby.store")

# A migration step: one statement, or one per dialect {"sqlite": ..., "postgres": ...}.
Step = str | Mapping[str, str]

_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS wallaby_schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,"
    " applied_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (component, version))"
)


class SQLDatabase:
    """One connection, used by one thread at a time (a lock), with transactions and migrations."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0

    # Backends implement these three.
    def _execute(self, sql: str, params: Sequence) -> list:
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _end(self, ok: bool) -> None:
        raise NotImplementedError

    def run(self, sql: str, params: Sequence = ()) -> list:
        """Run one statement (``?`` placeholders); its rows, or [] when it returns none."""
        with self._lock:
            return self._execute(sql, tuple(params))

    @contextmanager
    def transaction(self) -> Iterator[SQLDatabase]:
        """A write transaction (nested calls join the outer one). SQLite takes its write lock at the start
        (``BEGIN IMMEDIATE``), Postgres rows are locked as they are updated."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._begin()
            self._depth = 1
            ok = False
            try:
                yield self
                ok = True
            finally:
                self._depth = 0
                self._end(ok)

    def migrate(self, component: str, steps: Sequence[Step]) -> None:
        """Apply the steps of ``component`` not applied yet (step i is version i + 1), in one write transaction
        that reads what is applied: processes that open a new store at once (the same flow started twice, an API
        server and its workers) apply each step once; the second waits for the first (SQLite's ``BEGIN
        IMMEDIATE``; Postgres: :meth:`PostgresDatabase.migrate`). Run one step at a time, two processes both
        found ``ADD COLUMN source`` missing and the second failed (CI, tests/test_positions.py)."""
        with self._lock, self.transaction():
            self.run(_MIGRATIONS_TABLE)
            rows = self.run("SELECT version FROM wallaby_schema_migrations WHERE component = ?", (component,))
            done = {int(r[0]) for r in rows}
            for version, step in enumerate(steps, start=1):
                if version in done:
                    continue
                sql = step if isinstance(step, str) else step[self.dialect]
                with self.transaction():
                    self.run(sql)
                    self.run("INSERT INTO wallaby_schema_migrations VALUES (?, ?, ?)",
                             (component, version, time.time()))

    def close(self) -> None:
        raise NotImplementedError


class SQLiteDatabase(SQLDatabase):
    dialect = "sqlite"

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = str(path)
        if self.path != ":memory:" and not self.path.startswith("file:"):
            p = Path(self.path).expanduser()
            try:
                make_private_dirs(p.parent)
            except OSError as exc:
                raise ConfigError("checkpoint store", [FieldProblem(
                    "WALLABY_CHECKPOINT_PATH", f"cannot create the directory of {p}: {exc.strerror or exc}")]) from None
            self.path = str(p)
            make_private(p)
        try:
            self._conn = sqlite3.connect(self.path, uri=self.path.startswith("file:"), check_same_thread=False,
                                         timeout=30, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout=30000")
            _wal_mode(self._conn)
            if not self.path.startswith("file:") and self.path != ":memory:":
                for suffix in ("-wal", "-shm"):  # created by SQLite with the file's mode; older ones may be wider
                    side = Path(self.path + suffix)
                    if side.exists():
                        make_private(side, create=False)
        except sqlite3.Error as exc:
            raise ConfigError("checkpoint store", [FieldProblem(
                "WALLABY_CHECKPOINT_PATH", f"cannot open SQLite database {self.path}: {exc}")]) from None

    def _execute(self, sql: str, params: Sequence) -> list:
        return self._conn.execute(sql, params).fetchall()

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _end(self, ok: bool) -> None:
        self._conn.execute("COMMIT" if ok else "ROLLBACK")

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def close(self) -> None:
        self._conn.close()


# How long opening a store waits to switch a new database to WAL while another process holds it (SQLite answers
# "database is locked" at once there, without its busy handler: another process migrating the new store).
WAL_SWITCH_WAIT = 30.0


def _wal_mode(conn: sqlite3.Connection) -> None:
    deadline = time.monotonic() + WAL_SWITCH_WAIT
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents 0700 (existing ones are left as they are)."""
    missing = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # whatever the umask


def make_private(path: Path, create: bool = True) -> None:
    """``path`` readable by its owner only: created 0600 when missing (``create``); an existing file with group or
    other bits set is tightened when this user owns it, else a warning names it (wallaby cannot fix it)."""
    if create:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return  # an empty file is an empty SQLite database
        except FileExistsError:
            pass
        except OSError:
            return  # SQLite's own open reports it
    try:
        st = os.stat(path)
    except OSError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077 or not stat.S_ISREG(st.st_mode):
        return
    if st.st_uid == os.geteuid():
        try:
            os.chmod(path, mode & 0o700)
            log.info("checkpoint store: %s was open to others (mode %04o); now %04o", path, mode, mode & 0o700)
            return
        except OSError as exc:
            reason = exc.strerror or str(exc)
    else:
        reason = f"owned by uid {st.st_uid}, not by this user"
    log.warning("checkpoint store: %s is open to others (mode %04o) and holds flow secrets; wallaby could not"
                " tighten it (%s): chmod 600 it", path, mode, reason)


class PostgresDatabase(SQLDatabase):
    dialect = "postgres"

    def __init__(self, dsn: str, application_name: str = "wallaby-store"):
        import psycopg

        super().__init__()
        self._shown = redact_dsn(dsn)
        try:
            self._conn = psycopg.connect(dsn, autocommit=True, application_name=application_name)
        except psycopg.Error as exc:
            problem = f"cannot connect to the store's Postgres: {redact_dsn(str(exc).strip())}"
            raise ConfigError("checkpoint store", [FieldProblem("WALLABY_CHECKPOINT_DSN", problem)]) from None
        self._tx = None

    def _execute(self, sql: str, params: Sequence) -> list:
        cur = self._conn.execute(sql.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []

    def _begin(self) -> None:
        self._tx = self._conn.transaction()
        self._tx.__enter__()

    def _end(self, ok: bool) -> None:
        tx, self._tx = self._tx, None
        if tx is not None:
            if ok:
                tx.__exit__(None, None, None)
            else:
                tx.__exit__(RuntimeError, RuntimeError("rollback"), None)

    def migrate(self, component: str, steps: Sequence[Step]) -> None:
        """As for every store, under the database's lock for wallaby's DDL (:mod:`wallaby.state.shared_ddl`):
        processes that open a new store at once (an API server and its workers) do not apply a step twice."""
        with self._lock, self.transaction(), shared_ddl(self._conn):
            super().migrate(component, steps)

    def describe(self) -> str:
        return f"postgres {self._shown}"

    def close(self) -> None:
        self._conn.close()


def default_sqlite_path() -> Path:
    return Path(os.environ.get("WALLABY_CHECKPOINT_PATH", "~/.wallaby/checkpoints.db")).expanduser()


def open_database(env: Mapping[str, str] | None = None, application_name: str = "wallaby-store") -> SQLDatabase:
    """The database the environment names (see the module docstring)."""
    env = dict(os.environ if env is None else env)
    backend = env.get("WALLABY_CHECKPOINT_BACKEND", "").strip().lower()
    if not backend:
        backend = "postgres" if env.get("WALLABY_POSTGRES_DSN") else "sqlite"
    dsn = env.get("WALLABY_CHECKPOINT_DSN", "").strip()
    if backend == "sqlite":
        if dsn:
            path = dsn.removeprefix("sqlite://").removeprefix("sqlite:") if dsn.startswith("sqlite:") else dsn
            return SQLiteDatabase(path)
        return SQLiteDatabase(env.get("WALLABY_CHECKPOINT_PATH") or default_sqlite_path())
    if backend == "postgres":
        dsn = dsn or env.get("WALLABY_POSTGRES_DSN", "")
        if not dsn:
            raise ConfigError("checkpoint store", [FieldProblem(
                "WALLABY_CHECKPOINT_DSN", "the postgres checkpoint backend needs WALLABY_CHECKPOINT_DSN"
                " or WALLABY_POSTGRES_DSN")])
        return PostgresDatabase(dsn, application_name)
    raise ConfigError("checkpoint store", [FieldProblem(
        "WALLABY_CHECKPOINT_BACKEND", f"unknown backend {backend!r}; use 'sqlite' or 'postgres'")])
