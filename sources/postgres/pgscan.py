"""The backfill's bulk reader: DuckDB's postgres extension runs a chunk's ``SELECT`` as ``COPY (...) TO STDOUT
(FORMAT binary)``, parses it straight into DuckDB vectors (C++, without the GIL) and hands it on as Arrow.

Why this reader: measured on the bench's narrow table (2M rows, 25 chunks of 8 MB, the same select list and the same
decoding of the text columns, one process, two runs each), the client's CPU was 1.38-1.40 s against 2.26-2.41 s
with the ADBC PostgreSQL driver (also binary COPY into Arrow in C++) it replaces; a whole backfill into DuckDB read
in 3.3 s instead of 3.8 s. The extension comes from the ``duckdb-extension-postgres-scanner`` wheel for the pinned
duckdb (loaded from the wheel's file, never downloaded).

A process has one in-memory DuckDB (one thread) with the extension loaded (:func:`database`: loading the
extension into a database costs ~0.14 s). One :class:`PostgresScan` is one part's: the source attached to it
read-only under a name of its own (~0.01 s; detached again at its close, so nothing of it outlives the part, and a
password that changes, an IAM token, is the current one) and a DuckDB cursor for its transaction. That
transaction (the extension's ``BEGIN ... ISOLATION LEVEL REPEATABLE READ READ ONLY``, on the first
statement) joins the backfill's exported snapshot with ``SET TRANSACTION SNAPSHOT`` as that first statement
(``postgres_execute``), so every chunk (``postgres_query``) reads the snapshot's rows.

The extension maps some types otherwise than the streaming path, so the reader takes natively only
:data:`NATIVE_OIDS` and has every other column sent as its output text (as ``bytea``: any bytes of any database
encoding reach the decoder unchanged). Out of the native set: ``bpchar`` (the extension drops the padding pgoutput
sends) and ``time`` (``24:00:00`` becomes ``00:00:00``). Dates and timestamps at ``-infinity`` come as the type's
minimum plus one and are put back by the caller (:data:`NEG_INFINITY`).
"""

from __future__ import annotations

import atexit
import itertools
import re
import threading
from typing import Any

import pyarrow as pa

from wallaby.core.duckdb_extensions import POSTGRES, load_file
from wallaby.core.errors import redact_dsn
from wallaby.core.sqltext import sql_string

# Postgres types the extension gives exactly as the streaming path decodes them: bool, bytea, int8, int2, int4,
# text, json, float4, float8, varchar, date, timestamp, timestamptz, jsonb.
NATIVE_OIDS = frozenset({16, 17, 20, 21, 23, 25, 114, 700, 701, 1043, 1082, 1114, 1184, 3802})
# -infinity as the extension gives it (the integer's minimum plus one), by the Arrow storage of dates / timestamps
NEG_INFINITY = {pa.int32(): -(2**31) + 1, pa.int64(): -(2**63) + 1}

# Statements go to the server as SQL string literals, not as bound parameters: DuckDB's Python parameter binding
# imports pandas on first use (~0.2 s of a worker's start).
_ERROR = re.compile(r"ERROR:\s+(.*)", re.S)
_MISSING_RELATION = re.compile(r'relation "[^"]*" does not exist')
_lock = threading.Lock()
_database: Any = None  # the process's DuckDB (database())
_names = itertools.count()  # the scans' attachment names: pg0, pg1, ...


class ScanError(Exception):
    """What the server or the extension said, passwords masked; ``missing_relation`` when a relation was not found."""

    def __init__(self, message: str):
        super().__init__(message)
        self.missing_relation = bool(_MISSING_RELATION.search(message))


def _message(exc: Exception) -> str:
    """The server's own words when the extension passes them on (after its "Failed to execute query ..."), else the
    extension's message; passwords masked either way."""
    text = str(exc)
    found = _ERROR.search(text)
    return redact_dsn((found.group(1) if found else text).strip())


def _duckdb() -> Any:
    import duckdb

    return duckdb


def open_duckdb() -> Any:
    """An in-memory DuckDB of one thread with the postgres extension loaded from its wheel (the first load in a
    process maps the library: ~0.35 s; :func:`warm` does it ahead)."""
    duckdb = _duckdb()
    con = duckdb.connect(":memory:", config={"threads": 1, "autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    try:
        path = POSTGRES.wheel_file()
        if path is None:
            raise ScanError(f"the DuckDB extension {POSTGRES.name!r} (the backfill's reader) is not installed:"
                            f" install its wheel with `pip install {POSTGRES.wheel}=={duckdb.__version__}`")
        load_file(con, POSTGRES, path)
    except BaseException:
        con.close()
        raise
    return con


def database() -> Any:
    """The process's DuckDB with the extension loaded (made on first use)."""
    global _database
    with _lock:
        if _database is None:
            _database = open_duckdb()
        return _database


def warm(arrow_to_duckdb: bool = False) -> threading.Thread:
    """Make :func:`database` in a thread now, while the caller sets the backfill up, so the first part does not
    wait for it. ``arrow_to_duckdb`` (the rows go into a DuckDB destination): also import pandas, which DuckDB's
    Python client imports the first time it is handed an Arrow table (~0.3 s), so the first write does not wait."""
    def load() -> None:
        try:
            database()
            if arrow_to_duckdb:
                import pandas  # noqa: F401
        except Exception:  # the part that needs it reports it
            pass

    thread = threading.Thread(target=load, name="wallaby-backfill-warm", daemon=True)
    thread.start()
    atexit.register(thread.join)  # a process ending meanwhile (bad input) waits for it: DuckDB aborts otherwise
    return thread


class PostgresScan:
    """One read-only transaction on the source (``conninfo``, libpq's form) through DuckDB's postgres extension."""

    def __init__(self, conninfo: str, snapshot: str | None):
        duckdb = _duckdb()
        db = database()
        self._name = f"pg{next(_names)}"
        try:
            with _lock:
                db.execute(f"ATTACH {sql_string(conninfo)} AS {self._name} (TYPE postgres, READ_ONLY)")
        except duckdb.Error as exc:
            raise ScanError(_message(exc)) from None
        self._con = db.cursor()
        try:
            self._con.execute("BEGIN")  # one DuckDB transaction: one transaction on the server, chunk after chunk
            if snapshot:
                self.execute(f"SET TRANSACTION SNAPSHOT {sql_string(snapshot)}")
        except duckdb.Error as exc:
            self.close()
            raise ScanError(_message(exc)) from None
        except BaseException:
            self.close()
            raise

    def execute(self, sql: str) -> None:
        """Run ``sql`` on the server in the transaction (its first statement begins it)."""
        duckdb = _duckdb()
        try:
            self._con.execute(f"CALL postgres_execute('{self._name}', {sql_string(sql)})")
        except duckdb.Error as exc:
            raise ScanError(_message(exc)) from None

    def fetch(self, sql: str) -> pa.Table:
        """The rows of ``sql`` (its output columns need distinct names), read in the transaction."""
        duckdb = _duckdb()
        try:
            query = f"SELECT * FROM postgres_query('{self._name}', {sql_string(sql)})"
            return self._con.execute(query).to_arrow_table()
        except duckdb.Error as exc:
            raise ScanError(_message(exc)) from None

    def close(self) -> None:
        for end in (self._con.close, self._detach):
            try:
                end()
            except Exception:  # the server may be gone already: nothing is left to end
                pass

    def _detach(self) -> None:
        db = database()
        with _lock:
            db.execute(f"DETACH {self._name}")
