"""DuckLake destination: the DuckDB destination's writer, on a DuckLake catalog attached to its connection.

Options are :class:`DuckLakeOptions` (USAGE.md "DuckLake Destination", ``sinks.ducklake.options``): every DuckDB
destination option plus ``catalog``, ``catalog_name``, ``data_path``, ``override_data_path``, ``install_extensions``.
The writer is :class:`DuckLakeWriter`, a :class:`~sinks.duckdb.writer.DuckDBWriter` whose connection
(:meth:`DuckLakeWriter._open_connection`) is DuckDB's on ``dsn`` with the lake attached and in use::

    LOAD '<ducklake.duckdb_extension of the duckdb-extension-ducklake wheel>'   -- and sqlite / postgres / httpfs
    CREATE OR REPLACE SECRET ... (TYPE s3, ...)                                 -- s3:// data paths, from AWS_*
    ATTACH 'ducklake:<catalog>' AS <catalog_name> (DATA_PATH '<data_path>', OVERRIDE_DATA_PATH true)
    USE <catalog_name>

So everything the DuckDB writer does (buffering, the set-based apply of each mode, schema evolution, the meta table
``main.__wallaby_meta`` and the high-water in ``main.__wallaby_state``) happens in the lake: one DuckDB transaction
per epoch (or per ``WALLABY_DUCKDB_MAX_TX_BYTES`` while catching up) is one DuckLake snapshot holding the epoch's
changes and the high-water; a replay after a crash skips what the lake holds (exactly once).

Extensions
    Loaded from their wheels (``duckdb-extension-<name>==<duckdb's version>``; the file inside the wheel, so nothing
    is downloaded); DuckDB's auto-install is turned off. With ``install_extensions=false`` only what DuckDB's
    extension directory already holds is loaded (``LOAD <name>``). A missing one is a PermanentSinkError naming the
    wheel and the option. ``ducklake`` always; ``sqlite_scanner`` for a ``sqlite:`` catalog, ``postgres_scanner``
    for a ``postgres:`` one, ``httpfs`` for object storage (``s3://``). The sqlite wheel names its file
    ``sqlite.duckdb_extension`` while DuckDB finds the entry point by the file's name, so it is loaded through a
    link named ``sqlite_scanner.duckdb_extension`` in a private temporary directory.

Object storage
    A ``data_path`` of ``s3://bucket/prefix`` (or a catalog that recorded one) gets a temporary DuckDB secret built
    from the standard AWS environment: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
    ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for another
    endpoint (then path-style URLs, TLS as the URL's scheme says). Nothing of it is logged or shown in errors.

What DuckLake does not do that the DuckDB writer does
    - Change a column's type other than by DuckLake's promotions (wider integers, float -> double, wider decimals,
      date -> timestamp, ...). A source type change the lake cannot follow raises the DuckDB writer's
      ``RetypeError``: the epoch is rolled back and the worker holds the flow at the change (the DDL gate), naming
      the table, the column and both types, as for DuckDB.
    - Keep ``INTERVAL`` values in its Parquet files (milliseconds only, no negative intervals) or ``HUGEINT``
      (written as DOUBLE): Postgres ``interval`` lands in ``VARCHAR`` (DuckDB's interval text, which casts back
      to ``INTERVAL`` exactly; ``type_mappings`` wins), and mappings to those types are refused by the options.
    - Store ``BIT``, ``ENUM``, ``UNION``, ``BIGNUM`` or fixed-size arrays: a ``type_mappings`` value of one of
      them fails when the table is created, with DuckLake's message.
    Everything else the writer uses works in a DuckLake transaction: ``CREATE SCHEMA``, temporary tables (in
    DuckDB's ``temp`` catalog, not the lake), ``DELETE ... USING``, ``rowid`` in the keyless apply (DuckLake row
    ids), ``ALTER`` after a ``DELETE`` (the DuckDB writer still commits before such an ``ALTER``, one snapshot
    more), ``UPDATE`` of a column added in the same transaction.

Opening
    A catalog that cannot be opened (a ``sqlite:`` or DuckDB file in a missing directory, a ``postgres:`` server
    that refuses, a ``data_path`` the catalog does not record without ``override_data_path``) is one
    PermanentSinkError naming ``catalog`` (and ``data_path``), passwords masked; when the ``dsn`` file does not
    exist yet the catalog is first attached on an in-memory connection, so a bad catalog leaves no file behind. A
    DuckDB-file catalog is locked by the process that attaches it (as any DuckDB file): a new worker waits for the
    old one up to ``WALLABY_DUCKDB_LOCK_WAIT``; readers need a ``sqlite:`` or ``postgres:`` catalog.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import duckdb
import psycopg

from sinks.base import PermanentSinkError, TransientSinkError, WriterSink
from sinks.duckdb.apply import RetypeError, q
from sinks.duckdb.staging import resolve_in
from sinks.duckdb.writer import DUCKDB_LOCK_WAIT, STATE_TABLE, DuckDBWriter, _Pending, _safe_dsn
from sinks.ducklake.options import DuckLakeDestinationOptions as DuckLakeOptions
from sinks.ducklake.options import catalog_kind, is_remote
from sinks.retry import Steps, retry
from sinks.sql.reduce import lit
from sinks.sql.staging import ResolvedTable, check_resolvable, select
from wallaby.core.changes import Column, Position
from wallaby.core.duckdb_extensions import DUCKLAKE, HTTPFS, POSTGRES, SQLITE, Extension, load_file
from wallaby.core.errors import MASK, FieldProblem, redact_dsn
from wallaby.core.identity import SourceCheck, SourceIdentity
from wallaby.core.options import join_path

log = logging.getLogger("wallaby.sinks.ducklake")

# Postgres types whose DuckDB type DuckLake cannot keep exactly (see the module docstring): the DuckLake destination's
# defaults, under the destination's own type_mappings.
DUCKLAKE_TYPE_MAP = {"interval": "VARCHAR"}


_LOCK_STEPS = Steps(0.1, 2.0, 2.0)  # waits while a DuckDB-file catalog is held by another process
_SECRET = "__wallaby_ducklake_s3"


# --------------------------------------------------------------------------- extensions


def needed_extensions(options: DuckLakeOptions) -> list[Extension]:
    """The extensions attaching ``options``' catalog needs before the ATTACH (httpfs may be needed after it too,
    when the catalog recorded a remote data path: :func:`attach_lake`)."""
    kind, _ = catalog_kind(options.catalog)
    out = [DUCKLAKE]
    if kind == "sqlite":
        out.append(SQLITE)
    elif kind == "postgres":
        out.append(POSTGRES)
    if is_remote(options.data_path):
        out.append(HTTPFS)
    return out


def _loaded(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = ?", [name]).fetchone()
    return bool(row and row[0])


def load_extension(con: duckdb.DuckDBPyConnection, ext: Extension, install: bool) -> None:
    """Load ``ext`` into ``con``'s database: from its wheel (``install``), else only an installed copy (DuckDB's
    extension directory). Never downloads. PermanentSinkError-ready text in a ValueError when it cannot."""
    if _loaded(con, ext.name):
        return
    pin = f"{ext.wheel}=={duckdb.__version__}"
    if install:
        path = ext.wheel_file()
        if path is not None:
            load_file(con, ext, path)
            return
        try:
            con.execute(f"LOAD {ext.name}")  # installed in DuckDB's extension directory (never downloaded)
            return
        except duckdb.Error:
            raise ValueError(f"the DuckDB extension {ext.name!r} (needed for {ext.needed_for}) is not installed:"
                             f" install its wheel with `pip install {pin}` (install_extensions=true loads it from"
                             f" the wheel; nothing is downloaded at run time)") from None
    try:
        con.execute(f"LOAD {ext.name}")
    except duckdb.Error:
        directory = con.execute("SELECT current_setting('extension_directory')").fetchone()[0] or \
            os.path.expanduser("~/.duckdb/extensions")
        raise ValueError(f"install_extensions=false and the DuckDB extension {ext.name!r} (needed for"
                         f" {ext.needed_for}) is not installed in DuckDB's extension directory ({directory}):"
                         f" install it there, or set install_extensions=true to load it from the {pin} wheel")\
            from None


# --------------------------------------------------------------------------- catalog and secrets


def catalog_password(catalog: str) -> str | None:
    """The password a ``postgres:`` catalog carries (URL or conninfo), to mask it wherever it could show."""
    kind, location = catalog_kind(catalog)
    if kind != "postgres":
        return None
    try:
        return psycopg.conninfo.conninfo_to_dict(location).get("password") or None
    except psycopg.Error:
        return None


def shown_catalog(catalog: str) -> str:
    """The catalog fit to show: a ``postgres:`` catalog's password masked."""
    kind, location = catalog_kind(catalog)
    if kind == "postgres":
        return mask("postgres:" + location, catalog)
    return catalog.strip()


# "postgres:postgresql://user:pw@host" reads as "user postgres, password postgresql://user:pw" to the DSN redaction;
# a space after the catalog kind keeps the URL whole (and its password masked as a URL's)
_KIND_BEFORE_URL = re.compile(r"\bpostgres:(?=postgres(?:ql)?://)")


def mask(text: str, catalog: str, secrets: tuple[str | None, ...] = ()) -> str:
    """``text`` with every password and secret of the catalog and the AWS environment masked."""
    for secret in (catalog_password(catalog), *secrets):
        if secret and len(secret) >= 4:  # shorter ones would mask words; redact_dsn still masks them
            text = text.replace(secret, MASK)
    return redact_dsn(_KIND_BEFORE_URL.sub("postgres: ", text))


def _aws_secrets(environ: Mapping[str, str]) -> tuple[str | None, ...]:
    return environ.get("AWS_SECRET_ACCESS_KEY"), environ.get("AWS_SESSION_TOKEN")


def s3_secret_sql(environ: Mapping[str, str]) -> str | None:
    """The ``CREATE SECRET`` (TYPE s3, temporary: in memory only) built from the standard AWS environment, or None
    when it sets nothing (httpfs's own defaults then). ValueError for a key without its secret."""
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    token = environ.get("AWS_SESSION_TOKEN")
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if bool(key) != bool(secret):
        have, need = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if key else \
            ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        raise ValueError(f"{have} is set but {need} is not")
    parts = ["TYPE s3"]
    if key and secret:
        parts += [f"KEY_ID {lit(key)}", f"SECRET {lit(secret)}"]
        if token:
            parts.append(f"SESSION_TOKEN {lit(token)}")
    if region:
        parts.append(f"REGION {lit(region)}")
    if endpoint:
        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not url.netloc:
            raise ValueError(f"{'AWS_ENDPOINT_URL_S3' if environ.get('AWS_ENDPOINT_URL_S3') else 'AWS_ENDPOINT_URL'}"
                             " is not a URL (expected http(s)://host[:port])")
        parts += [f"ENDPOINT {lit(url.netloc + url.path.rstrip('/'))}", "URL_STYLE 'path'",
                  f"USE_SSL {'true' if url.scheme != 'http' else 'false'}"]
    if len(parts) == 1:
        return None
    return f"CREATE OR REPLACE TEMPORARY SECRET {_SECRET} ({', '.join(parts)})"


def _configure_s3(con: duckdb.DuckDBPyConnection, options: DuckLakeOptions, environ: Mapping[str, str]) -> None:
    load_extension(con, HTTPFS, options.install_extensions)
    # httpfs uploads a file in parts of s3_uploader_max_filesize / 10000: 80 MB at its default of 800GB, more than
    # the writer's DuckDB memory cap (WALLABY_DUCKDB_MEMORY_LIMIT, 64MB) for every Parquet file it writes. At 50GB
    # (the least it takes; a Parquet file of the lake is far smaller) parts are 5 MB, S3's least part size.
    con.execute("SET s3_uploader_max_filesize = '50GB'")
    try:
        sql = s3_secret_sql(environ)
        if sql is not None:
            con.execute(sql)
    except (ValueError, duckdb.Error) as exc:
        raise ValueError(f"cannot set up the S3 credentials of the data path from the AWS environment:"
                         f" {mask(str(exc), options.catalog, _aws_secrets(environ))}") from None


def _attach_sql(options: DuckLakeOptions, read_only: bool) -> str:
    kind, location = catalog_kind(options.catalog)
    if kind in ("duckdb", "sqlite"):
        location = str(Path(location).expanduser())
    target = location if kind == "duckdb" else f"{kind}:{location}"
    params = []
    if options.data_path:
        data_path = options.data_path if is_remote(options.data_path) else str(Path(options.data_path).expanduser())
        params.append(f"DATA_PATH {lit(data_path)}")
        if options.override_data_path:
            params.append("OVERRIDE_DATA_PATH true")
    if read_only:
        params.append("READ_ONLY")
    tail = f" ({', '.join(params)})" if params else ""
    return f"ATTACH {lit('ducklake:' + target)} AS {q(options.catalog_name)}{tail}"


def _stored_data_path(con: duckdb.DuckDBPyConnection, options: DuckLakeOptions) -> str | None:
    try:
        row = con.execute("SELECT value FROM ducklake_options(?) WHERE option_name = 'data_path'",
                          [options.catalog_name]).fetchone()
    except duckdb.Error:
        return None
    return row[0] if row else None


# SQLite's SQLITE_BUSY / SQLITE_LOCKED, as the sqlite extension reports them
_SQLITE_BUSY = re.compile(r"database (table )?is locked")


def _is_lock(exc: Exception) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def attach_lake(con: duckdb.DuckDBPyConnection, options: DuckLakeOptions, name: str, *, read_only: bool = False,
                lock_wait: float | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Load the extensions, set up S3 credentials when the data path is object storage, attach ``options``' catalog
    as ``catalog_name`` and make it the connection's default database. PermanentSinkError (naming the options,
    secrets masked) when it cannot; TransientSinkError when a DuckDB-file catalog stays locked by another process
    for ``lock_wait`` seconds."""
    environ = os.environ if environ is None else environ
    shown = shown_catalog(options.catalog)
    try:
        con.execute("SET autoinstall_known_extensions = false")  # nothing is ever downloaded
        for ext in needed_extensions(options):
            if ext is HTTPFS:
                _configure_s3(con, options, environ)
            else:
                load_extension(con, ext, options.install_extensions)
    except ValueError as exc:
        raise PermanentSinkError(name, str(exc)) from None
    if not read_only and not options.data_path and catalog_kind(options.catalog)[0] == "sqlite" \
            and _local_catalog_missing(options):
        raise PermanentSinkError(name, f"the DuckLake catalog {shown} does not exist yet and a new catalog needs"
                                       " data_path (the root of its Parquet files: a directory or s3://bucket/prefix)")
    sql = _attach_sql(options, read_only)
    try:
        retry(lambda: con.execute(sql), policy=_LOCK_STEPS, retryable=_is_lock,
              deadline=DUCKDB_LOCK_WAIT if lock_wait is None else lock_wait,
              on_retry=lambda exc, attempt, delay: log.info("DuckLake catalog %s is held by another process;"
                                                            " waiting", shown))
    except duckdb.Error as exc:
        text = mask(str(exc), options.catalog, _aws_secrets(environ))
        if _is_lock(exc):
            raise TransientSinkError(name, f"DuckLake catalog {shown} is held by another process (a DuckDB-file"
                                           f" catalog has one writer process; use a sqlite: or postgres: catalog for"
                                           f" readers): {text}") from None
        if options.data_path:
            options_named = "catalog, data_path, override_data_path"
        elif catalog_kind(options.catalog)[0] != "duckdb":
            options_named = "catalog, data_path (a new sqlite: or postgres: catalog needs one)"
        else:
            options_named = "catalog"
        raise PermanentSinkError(name, f"cannot attach the DuckLake catalog {shown} as {options.catalog_name!r}"
                                       f" (options {options_named}): {text}") from None
    try:
        if not options.data_path and is_remote(_stored_data_path(con, options)):
            _configure_s3(con, options, environ)
        con.execute(f"USE {q(options.catalog_name)}")
    except (ValueError, duckdb.Error) as exc:
        raise PermanentSinkError(name, f"DuckLake catalog {shown}:"
                                       f" {mask(str(exc), options.catalog, _aws_secrets(environ))}") from None


def _local_catalog_missing(options: DuckLakeOptions) -> bool:
    """Whether the catalog is a local file (DuckDB or SQLite) that does not exist (nothing was ever written)."""
    kind, location = catalog_kind(options.catalog)
    return kind in ("duckdb", "sqlite") and not Path(location).expanduser().exists()


def open_lake(options: DuckLakeOptions, name: str, *, read_only: bool = False,
              lock_wait: float | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the lake attached and in use (for reading positions and resolving
    staging tables: the lake's data is the catalog's, not the ``dsn`` file's)."""
    con = duckdb.connect(":memory:")
    try:
        attach_lake(con, options, name, read_only=read_only, lock_wait=lock_wait)
    except BaseException:
        con.close()
        raise
    return con


# --------------------------------------------------------------------------- the writer


def _options(options: Any) -> DuckLakeOptions:
    return options if isinstance(options, DuckLakeOptions) else DuckLakeOptions.model_validate(options)


class DuckLakeWriter(DuckDBWriter):
    """The DuckDB writer on a DuckLake catalog (see the module docstring): the connection is the lake's, a source
    type change the lake cannot follow holds the flow, ``interval`` lands in VARCHAR."""

    # Every commit is a lake snapshot with Parquet files of its own: only epochs commit (no flush per quiet moment)
    FLUSH_WHEN_CAUGHT_UP = False
    # the lake's tables are Parquet files of the lake's own sizes, not row groups of a DuckDB file
    ALIGNS_ROW_GROUPS = False

    def __init__(self, name: str, flow_id: str, options: DuckLakeOptions | Mapping[str, Any],
                 resume_state: Any = None, *, source: SourceCheck | None = None, **kwargs: Any):
        options = _options(options)
        super().__init__(name, flow_id, options, resume_state, source=source, **kwargs)
        self._mappings = {**DUCKLAKE_TYPE_MAP, **options.mappings()}

    # -- the connection

    def _open_connection(self) -> duckdb.DuckDBPyConnection:
        o = self.options
        self._dsn_shown = f"{_safe_dsn(o.dsn)}, DuckLake catalog {shown_catalog(o.catalog)}"
        dsn = o.dsn
        if dsn != ":memory:" and not dsn.startswith(("md:", "motherduck:")) and not Path(dsn).expanduser().exists():
            # a first start: try the catalog before the dsn file exists, so a bad catalog leaves nothing behind
            probe = duckdb.connect(":memory:")
            try:
                attach_lake(probe, o, self.name)
            finally:
                probe.close()
        con = super()._open_connection()
        try:
            attach_lake(con, o, self.name)
        except BaseException:
            con.close()
            raise
        return con

    def _clean(self, exc: BaseException) -> str:
        return mask(str(exc), self.options.catalog, _aws_secrets(os.environ))

    def _fail(self, where: str | None, message: str, held: tuple[str, str, Position] | None = None) -> NoReturn:
        """A ``sqlite:`` catalog that stayed locked (SQLite's ``database is locked``: a reader holding a query or
        transaction open, so the snapshot cannot commit) is busy, not broken: the epoch is rolled back as for any
        failure, and the error is transient (exit 75, restarted) rather than permanent."""
        try:
            super()._fail(where, message, held)
        except PermanentSinkError:
            if held is None and _SQLITE_BUSY.search(message):
                raise TransientSinkError(
                    self.name, f"{self._where(where)}the catalog is locked by another process, so the epoch could not"
                    f" commit (rolled back; nothing is lost: the slot did not move). A reader that leaves a query or"
                    f" transaction open on a sqlite: catalog blocks every commit: readers should fetch their results"
                    f" whole and end their transactions promptly: {message}") from None
            raise

    # -- type changes: DuckLake's promotions only

    def _widen_column(self, p: _Pending, qt: str, name: str, have: str, want: str, c: Column) -> None:
        """A widening DuckLake refuses (integer -> decimal of too few digits, anything -> VARCHAR) is the
        ``RetypeError`` that holds the flow at the DDL gate, not a plain failure."""
        before = self._applied_types.get((p.dest, name))
        if before is None:
            before = next((m.get("pg_type") for m in self._meta_columns(p) or [] if m["name"] == name), None)
        try:
            self._con.execute(f"ALTER TABLE {qt} ALTER {q(name)} SET DATA TYPE {want}")
        except duckdb.Error as exc:
            raise RetypeError(self._retype_message(name, have, want, before or "its earlier type", c.type_name, exc),
                              name) from None
        log.info("destination %r: %s.%s widened from %s to %s", self.name, qt, name, have, want,
                 extra={"flow": self.flow_id})

    def _retype_column(self, qt: str, name: str, have: str, want: str, old_pg: str, new_pg: str) -> None:
        try:
            self._con.execute(f"ALTER TABLE {qt} ALTER {q(name)} SET DATA TYPE {want}")
        except duckdb.Error as exc:
            raise RetypeError(self._retype_message(name, have, want, old_pg, new_pg, exc), name) from None
        log.warning("destination %r: %s.%s changed from %s to %s (the source changed it from %s to %s)", self.name,
                    qt, name, have, want, old_pg, new_pg, extra={"flow": self.flow_id})

    def _retype_message(self, name: str, have: str, want: str, old_pg: str, new_pg: str, exc: Exception) -> str:
        detail = self._clean(exc).splitlines()[0]
        return (f"column {name!r} changed type at the source from {old_pg} to {new_pg}; DuckLake cannot change the"
                f" column from {have} to {want} (it changes a type only by promotion: wider integers, float to"
                f" double, wider decimals, date to timestamp; {detail}). Map {new_pg} to {have} with the destination"
                f" option type_mappings if its values fit, or rebuild the column in the lake (ADD COLUMN, UPDATE,"
                f" DROP COLUMN, RENAME COLUMN) or drop the table and backfill it, then approve the DDL event")


# --------------------------------------------------------------------------- the plugin's hooks


def ducklake_sink(name: str, flow_id: str, options: DuckLakeOptions, source: SourceCheck | None = None) -> WriterSink:
    """A bytewax sink writing ``flow_id``'s changes into a DuckLake as destination ``name``."""
    options = _options(options)
    return WriterSink(name, lambda resume_state: DuckLakeWriter(name, flow_id, options, resume_state, source=source))


def make_sink(name: str, flow_id: str, options: DuckLakeOptions, source: SourceCheck | None = None) -> WriterSink:
    """The destination of a flow spec: its validated :class:`DuckLakeOptions`."""
    return ducklake_sink(name, flow_id, options, source)


def _read_position(con: duckdb.DuckDBPyConnection, options: DuckLakeOptions, name: str,
                   flow_id: str) -> tuple[Any, ...] | None:
    # literals, not parameters: DuckDB's parameter binding imports pandas (~0.4 s of a worker's start)
    cols = {r[0] for r in con.execute(
        f"SELECT column_name FROM duckdb_columns() WHERE database_name = {lit(options.catalog_name)}"
        " AND schema_name = 'main' AND table_name = '__wallaby_state'").fetchall()}
    if not cols:
        return None
    source = "source" if "source" in cols else "NULL"
    return con.execute(f"SELECT lsn, ordinal, {source} FROM {STATE_TABLE} WHERE flow_id = {lit(flow_id)}"
                       f" AND destination = {lit(name)}").fetchone()


def stored_position(name: str, flow_id: str,
                    options: DuckLakeOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    """The high-water destination ``name`` holds for ``flow_id`` and the source it came from, read through a
    read-only attach (None: no catalog, no state, or the catalog cannot be read now: the writer checks at open).
    Creates nothing."""
    options = _options(options)
    if _local_catalog_missing(options):
        return None
    try:
        con = open_lake(options, name, read_only=True, lock_wait=0)
    except (PermanentSinkError, TransientSinkError, duckdb.Error):
        return None
    try:
        row = _read_position(con, options, name, flow_id)
    except duckdb.Error:
        return None
    finally:
        con.close()
    if row is None:
        return None
    return (Position(int(row[0]), int(row[1])), SourceIdentity.from_json(row[2]),
            f"DuckLake {shown_catalog(options.catalog)}")


def discard_position(name: str, flow_id: str, options: DuckLakeOptions) -> None:
    """Forget the high-water destination ``name`` holds for ``flow_id`` (a reset asked for by the user)."""
    options = _options(options)
    if stored_position(name, flow_id, options) is None:
        return  # nothing stored (nothing is created to find that out)
    con = open_lake(options, name)
    try:
        con.execute(f"DELETE FROM {STATE_TABLE} WHERE flow_id = ? AND destination = ?", [flow_id, name])
    finally:
        con.close()


def resolve_staging(name: str, flow_id: str, options: DuckLakeOptions, tables: list[str] | None = None,
                    schemas: list[str] | None = None) -> list[ResolvedTable]:
    """Resolve destination ``name``'s staging tables of ``flow_id`` in the lake by ``batch_resolution``, as the
    DuckDB destination does (:mod:`sinks.duckdb.staging`; one transaction, so one DuckLake snapshot, per target
    table), through an in-memory connection with the lake attached."""
    options = _options(options)
    check_resolvable(name, options)
    if _local_catalog_missing(options):
        select({}, set(), tables, schemas, f"destination {name!r}")  # names are unknown: nothing was written
        return []
    con = open_lake(options, name)
    try:
        return resolve_in(con, name, flow_id, options, tables, schemas,
                          lambda where, text: f"DuckLake {shown_catalog(options.catalog)}{where}: cannot resolve"
                                              f" staging: {mask(text, options.catalog)}")
    finally:
        con.close()


def extension_problems(i: int, options: DuckLakeOptions) -> list[FieldProblem]:
    """The preflight's check of the DuckDB extensions the destination needs: each loads (from its wheel, or with
    ``install_extensions=false`` from DuckDB's extension directory) into a throwaway in-memory database. Nothing is
    created or downloaded."""
    options = _options(options)
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET autoinstall_known_extensions = false")
        for ext in needed_extensions(options):
            try:
                load_extension(con, ext, options.install_extensions)
            except ValueError as exc:
                return [FieldProblem(join_path("destinations", i, "options", "install_extensions"), str(exc))]
    finally:
        con.close()
    return []


__all__ = ["DUCKLAKE_TYPE_MAP", "DuckLakeOptions", "DuckLakeWriter", "Extension", "attach_lake", "discard_position",
           "ducklake_sink", "extension_problems", "make_sink", "needed_extensions", "open_lake", "resolve_staging",
           "s3_secret_sql", "shown_catalog", "stored_position"]
