"""A ClickHouse for tests: the ClickHouse engine from ``chdb`` behind ClickHouse's HTTP interface, in a subprocess.

No ClickHouse server package can be installed here, but ``chdb`` embeds the current ClickHouse engine in a Python
extension. This module serves that engine over the HTTP protocol that ``clickhouse-connect`` speaks, so that code
under test talks to a real engine through the real driver. It runs as ``python -m tests.chserver --port P --path DIR
--user U --password PW`` in a subprocess: a crash, or chdb's process-global engine, never touches the test process.

Use it by importing the fixture: ``from tests.chserver import clickhouse  # noqa: F401``. It yields a
:class:`ClickHouseServer` (``host``, ``port``, ``user``, ``password``, ``url`` and ``client()``). When
``WALLABY_TEST_CLICKHOUSE_URL`` is set (``http://user:password@host:port``) the fixture yields that server instead and
starts nothing. A server that cannot start, or a configured one that does not answer, fails the run with its output;
it is never skipped.

What the server does, as ClickHouse's HTTP handler does it:

* ``GET /ping`` (and ``GET /`` without a query) answers ``Ok.``; queries come as ``GET/POST /?query=...`` and/or the
  POST body (the ``query`` parameter, a newline and the body are one query text), or as ``multipart/form-data``
  fields (``query``, ``param_*``; external-data files are refused).
* Authentication by HTTP Basic, ``X-ClickHouse-User``/``X-ClickHouse-Key`` headers or ``user``/``password``
  parameters (none: user ``default``, empty password); a wrong user or password is answered 403 with
  ``Code: 516 ... (AUTHENTICATION_FAILED)`` and ``X-ClickHouse-Exception-Code: 516``.
* ``INSERT ... FORMAT <fmt>`` followed by data (and ``INSERT ... VALUES``, as format Values) streams the data into the
  engine's own input format (chdb's ``send_insert``), so Native, Arrow, RowBinary, TSV, JSONEachRow... are parsed
  against the table as ClickHouse does.
  Other statements run as they are; the output format is the query's ``FORMAT`` clause, else ``default_format``,
  else TabSeparated, reported in ``X-ClickHouse-Format`` for statements that return a result set.
* Request bodies with ``Content-Encoding`` lz4 (frame), zstd, gzip, deflate (and br when ``brotli`` is installed),
  chunked or not; responses compressed with the first of zstd, br, lz4, gzip, deflate that ``Accept-Encoding`` lists,
  unless ``enable_http_compression=0``. ClickHouse's own block compression (``compress=1``/``decompress=1``) is not
  implemented and is refused with NOT_IMPLEMENTED; ``clickhouse-connect`` does not use it.
* Every other URL parameter is a setting for that query: applied with ``SET`` before it and undone after it, so an
  unknown setting fails as in ClickHouse. ``param_<name>`` binds ``{name:Type}`` query parameters. ``database`` is
  the query's database. ``session_id`` keeps ``USE``/``SET`` state across requests (one chdb connection per session,
  ``session_timeout`` seconds idle, default 60; ``session_check=1`` needs the session to exist); without it each
  request gets a fresh connection. ``query_id`` is echoed in ``X-ClickHouse-Query-Id``. ``wait_end_of_query``,
  ``buffer_size``, ``quota_key``, ``role`` and ``client_protocol_version`` are accepted and have no effect: results are
  always sent whole after the query ends, and Native output has no block-info header (the driver's protocol probe then
  keeps protocol 0, as with a proxy that drops the parameter).
* Engine errors answer ``Code: N. DB::Exception: ... (NAME) (version V)`` with ClickHouse's HTTP status for that
  code and ``X-ClickHouse-Exception-Code: N``; multi-statement queries are refused as in ClickHouse.
* Engine calls are serialized by one lock; chdb holds one engine per process on one data directory.

Not supported: TLS, the native TCP protocol, external data, readonly for GET requests, progress headers while a query
runs, and streaming of results (a result is built whole in memory, then sent).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy as email_policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest

from tests.servers import free_port, running

START_TIMEOUT = 60.0
URL_ENV = "WALLABY_TEST_CLICKHOUSE_URL"
REPO_ROOT = Path(__file__).resolve().parent.parent

# URL parameters that belong to the HTTP interface, not to the query's settings
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "session_id", "session_timeout",
    "session_check", "query_id", "buffer_size", "wait_end_of_query", "client_protocol_version", "role", "compress",
    "decompress",
})
DEFAULT_SESSION_TIMEOUT = 60
MAX_SESSION_TIMEOUT = 3600
# chdb's Python wrapper turns these output "formats" into Python objects; they are not ClickHouse formats
_PYTHON_ONLY_FORMATS = frozenset({"dataframe", "datastore", "arrowtable"})
# Statements whose first keyword makes them return a result set (a leading "(" does too)
_RESULT_KEYWORDS = frozenset({
    b"SELECT", b"WITH", b"FROM", b"SHOW", b"DESCRIBE", b"DESC", b"EXISTS", b"EXPLAIN", b"CHECK", b"KILL", b"WATCH",
})

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp), by error name
_STATUS_BY_NAME: dict[str, int] = {"REQUIRED_PASSWORD": 401, "QUERY_IS_TOO_LARGE": 413, "NOT_IMPLEMENTED": 501,
                                   "SOCKET_TIMEOUT": 503, "CANNOT_OPEN_FILE": 503, "HTTP_LENGTH_REQUIRED": 411,
                                   "TIMEOUT_EXCEEDED": 408, "CANNOT_SCHEDULE_TASK": 503, "UNSUPPORTED_MEDIA_TYPE": 415}
_STATUS_BY_NAME.update(dict.fromkeys((
    "UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"), 403))
_STATUS_BY_NAME.update(dict.fromkeys((
    "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
    "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
    "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
    "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
    "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"), 400))
_STATUS_BY_NAME.update(dict.fromkeys((
    "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE", "UNKNOWN_DATABASE",
    "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT",
    "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"), 404))

_CODE_RE = re.compile(r"Code: (\d+)\.")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")
_VERSION_TRAILER_RE = re.compile(r"\(version [^()]*(?:\([^()]*\))?[^()]*\)\s*$")
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------------------------------------------------
# The server (runs in the subprocess; chdb is imported there only)


class ClickHouseException(Exception):
    """An error answered the way ClickHouse answers it: ``Code: N. DB::Exception: ... (NAME)``."""

    def __init__(self, code: int, name: str, text: str):
        super().__init__(f"Code: {code}. DB::Exception: {text}. ({name})")
        self.code = code
        self.name = name

    @property
    def message(self) -> str:
        return self.args[0]


class EngineError(Exception):
    """An error raised by the engine, carrying its own ``Code: N. DB::Exception: ...`` text."""

    def __init__(self, message: str, code: int, name: str | None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.name = name


def _engine_error(exc: BaseException) -> EngineError:
    text = str(exc)
    start = text.find("Code: ")
    if start < 0:
        return EngineError(f"Code: 1001. DB::Exception: {text.strip()}. (STD_EXCEPTION)", 1001, "STD_EXCEPTION")
    text = text[start:].strip()
    code = _CODE_RE.match(text)
    names = _NAME_RE.findall(text)
    return EngineError(text, int(code.group(1)) if code else 1001, names[-1] if names else None)


# A ClickHouse query, token by token, just enough to find what the HTTP handler has to know: the statement's kind,
# an INSERT's data format and where its data starts, the output FORMAT clause, the names a SET assigns, and whether
# there is a second statement. Strings, quoted identifiers, comments and brackets are skipped over as units.
_TOKEN_RE = re.compile(rb"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>'(?:[^'\\]|\\.|'')*(?:'|\Z))
  | (?P<quoted>"(?:[^"\\]|\\.|"")*(?:"|\Z)|`(?:[^`\\]|\\.|``)*(?:`|\Z))
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9][0-9A-Za-z_.]*)
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<semi>;)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


@dataclass
class Statement:
    text: bytes                       # the statement to run (for an INSERT with data: up to its FORMAT clause)
    kind: bytes = b""                 # first keyword, upper case; b"(" for a parenthesized query
    insert_format: str | None = None  # INSERT ... FORMAT <this> (VALUES: Values): the data that follows
    data_offset: int = 0              # where that data starts in the query text
    output_format: str | None = None  # FORMAT clause of a query returning rows
    set_names: list[str] = field(default_factory=list)  # settings a SET statement assigns
    multi: bool = False               # a second statement follows a ';'

    @property
    def returns_rows(self) -> bool:
        return self.kind in _RESULT_KEYWORDS or self.kind == b"("


def _data_start(text: bytes, pos: int) -> int:
    """Where an INSERT's inline data starts after its format name: after spaces and one line break (ClickHouse's
    rule: after the first newline if there is one, else after all the whitespace)."""
    end = len(text)
    while pos < end and text[pos] in b" \t\f":
        pos += 1
    if pos < end and text[pos] == 0x0D:
        pos += 1
    if pos < end and text[pos] == 0x0A:
        pos += 1
    return pos


def parse_statement(text: bytes) -> Statement:
    stmt = Statement(text)
    tokens: list[tuple[str, bytes, int, int]] = []  # top-level tokens: (kind, upper text, start, end)
    depth = 0
    pos = 0
    end = len(text)
    after_semicolon = False
    insert_select = False
    while pos < end:
        match = _TOKEN_RE.match(text, pos)
        assert match is not None  # the pattern matches any byte
        group = match.lastgroup or "other"
        start, pos = match.start(), match.end()
        if group in ("space", "comment"):
            continue
        if after_semicolon and group != "semi":
            stmt.multi = True
            break
        if group == "open":
            if depth == 0 and not tokens:
                stmt.kind = b"("
            depth += 1
            continue
        if group == "close":
            depth = max(0, depth - 1)
            continue
        if depth:
            continue
        if group == "semi":
            after_semicolon = True
            continue
        value = match.group().upper() if group == "word" else match.group()
        if not stmt.kind and group == "word":
            stmt.kind = value
        prev = tokens[-1] if tokens else None
        tokens.append((group, value, start, pos))
        if stmt.kind == b"INSERT" and not insert_select:
            named = prev is not None and prev[1] in (b"INTO", b"TABLE", b"FUNCTION", b".")  # a table's name
            if group == "word" and value == b"VALUES" and not named:  # as FORMAT Values, data right after VALUES
                stmt.insert_format, stmt.data_offset, stmt.text = "Values", pos, text[:start].rstrip()
                return stmt
            if group == "word" and value in (b"SELECT", b"WITH"):
                insert_select = True  # INSERT ... SELECT: no data follows, any FORMAT word is the SELECT's
                continue
            if (group == "word" and prev is not None and prev[0] == "word" and prev[1] == b"FORMAT"
                    and len(tokens) >= 3 and tokens[-3][1] not in (b"INTO", b"TABLE", b"FUNCTION", b".")):
                stmt.insert_format = match.group().decode()
                stmt.data_offset = _data_start(text, pos)
                stmt.text = text[:prev[2]].rstrip()
                return stmt
    if stmt.kind == b"SET":
        for i, token in enumerate(tokens[1:], start=1):
            if token[0] == "word" and (i == 1 or tokens[i - 1][1] == b","):
                stmt.set_names.append(text[token[2]:token[3]].decode())
    if stmt.returns_rows:
        for i in range(len(tokens) - 2, -1, -1):
            kind, value, _, _ = tokens[i]
            after = tokens[i + 2] if i + 2 < len(tokens) else None
            if (kind == "word" and value == b"FORMAT" and tokens[i + 1][0] == "word"
                    and (after is None or after[1] == b"SETTINGS")):
                stmt.output_format = text[tokens[i + 1][2]:tokens[i + 1][3]].decode()
                break
    return stmt


def _decompress(data: bytes, encoding: str) -> bytes:
    """A request body sent with ``Content-Encoding``."""
    encoding = encoding.strip().lower()
    if not data or encoding in ("", "identity"):
        return data
    try:
        if encoding == "lz4":
            import lz4.frame

            parts = []
            rest = data
            while rest:  # the driver sends one LZ4 frame per block, one after the other
                decompressor = lz4.frame.LZ4FrameDecompressor()
                parts.append(decompressor.decompress(rest))
                if not decompressor.eof:
                    raise ValueError("truncated LZ4 frame")
                rest = decompressor.unused_data
            return b"".join(parts)
        if encoding == "zstd":
            return _zstd().decompress(data)
        if encoding in ("gzip", "x-gzip"):
            import gzip

            return gzip.decompress(data)
        if encoding == "deflate":
            import zlib

            return zlib.decompress(data)
        if encoding == "br":
            import brotli  # type: ignore[import-not-found]

            return brotli.decompress(data)
    except ImportError as exc:
        raise ClickHouseException(
            48, "NOT_IMPLEMENTED", f"Content-Encoding {encoding} is not available: {exc}") from exc
    except Exception as exc:
        raise ClickHouseException(
            27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            f"Cannot decompress the request body ({encoding}): {exc}") from exc
    raise ClickHouseException(36, "BAD_ARGUMENTS", f"Unknown HTTP Content-Encoding: {encoding}")


def _zstd():
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
    except ImportError:
        from backports import zstd  # type: ignore[import-not-found,no-redef]
    return zstd


def _compressor(accept_encoding: str):
    """(Content-Encoding, compress function) for a response, in ClickHouse's order of preference; or None."""
    accepted = accept_encoding.lower()
    for name in ("zstd", "br", "lz4", "gzip", "deflate"):
        if name not in accepted:
            continue
        try:
            if name == "zstd":
                return name, _zstd().compress
            if name == "br":
                import brotli  # type: ignore[import-not-found]

                return name, brotli.compress
            if name == "lz4":
                import lz4.frame

                return name, lz4.frame.compress
            if name == "gzip":
                import gzip

                return name, gzip.compress
            import zlib

            return name, zlib.compress
        except ImportError:
            continue
    return None


def _content_type(fmt: str | None) -> str:
    name = (fmt or "").lower()
    if not name:
        return "text/plain; charset=UTF-8"
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        return "text/csv; charset=UTF-8; header=" + ("present" if "withnames" in name else "absent")
    if name.startswith(("json", "ndjson", "jsonl")):
        return "application/json; charset=UTF-8"
    if name == "xml":
        return "application/xml; charset=UTF-8"
    if name.startswith(("native", "rowbinary", "arrow", "parquet", "orc", "avro", "protobuf", "msgpack", "capnproto",
                        "bson", "npy", "raw")):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


@dataclass
class Result:
    body: bytes = b""
    output_format: str | None = None
    summary: dict[str, str] = field(default_factory=dict)
    timezone: str = ""


class _Handle:
    """One chdb connection: its own current database and settings, like a ClickHouse session."""

    def __init__(self, conn: Any, timeout: int = DEFAULT_SESSION_TIMEOUT, session_id: str = ""):
        self.conn = conn
        self.session_id = session_id
        self.broken = False  # its settings could not be put back (e.g. readonly=1): not to be used again
        self.database = "default"
        self.changed: dict[str, str] = {}  # settings changed by the session's own SET statements
        self.timeout = timeout
        self.last_used = time.monotonic()


class Engine:
    """chdb's engine on one data directory, a connection per session, every engine call under one lock."""

    def __init__(self, path: str):
        import chdb

        self._connect = chdb.connect
        self.path = path
        self.lock = threading.Lock()
        self._root = chdb.connect(path)  # keeps the engine up while sessions come and go
        self.chdb_version = chdb.__version__
        self.version, self.timezone = self._root.query(
            "SELECT version(), timezone()", "TabSeparated").bytes().decode().strip().split("\t")
        rows = self._root.query(
            "SELECT name, value FROM system.settings WHERE name = 'enable_http_compression'", "TabSeparated")
        self.defaults = dict(line.split("\t", 1) for line in rows.bytes().decode().splitlines())
        self.sessions: dict[str, _Handle] = {}

    def close(self) -> None:
        with self.lock:
            for handle in self.sessions.values():
                handle.conn.close()
            self.sessions.clear()
            self._root.close()

    def _handle(self, params: dict[str, str]) -> tuple[_Handle, bool]:
        """The session's connection (created if new), or a fresh one for this request only (True)."""
        now = time.monotonic()
        for sid, handle in list(self.sessions.items()):
            if now - handle.last_used > handle.timeout:
                handle.conn.close()
                del self.sessions[sid]
        session_id = params.get("session_id", "")
        if not session_id:
            return _Handle(self._connect(self.path)), True
        timeout = DEFAULT_SESSION_TIMEOUT
        if params.get("session_timeout"):
            try:
                timeout = int(params["session_timeout"])
            except ValueError:
                raise ClickHouseException(
                    27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
                    f"Invalid session timeout: '{params['session_timeout']}'") from None
            if not 0 <= timeout <= MAX_SESSION_TIMEOUT:
                raise ClickHouseException(
                    469, "INVALID_SESSION_TIMEOUT",
                    f"Session timeout '{timeout}' is larger than max_session_timeout: {MAX_SESSION_TIMEOUT}")
        handle = self.sessions.get(session_id)
        if handle is None:
            if params.get("session_check", "0") not in ("", "0"):
                raise ClickHouseException(372, "SESSION_NOT_FOUND", f"Session {session_id} not found")
            handle = self.sessions[session_id] = _Handle(self._connect(self.path), session_id=session_id)
        handle.timeout = timeout
        handle.last_used = now
        return handle, False

    @staticmethod
    def _run(conn: Any, sql: str | bytes, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        try:
            return conn.query(sql, fmt, params=params or {})
        except Exception as exc:
            raise _engine_error(exc) from None

    def execute(self, stmt: Statement, data: bytes | None, params: dict[str, str]) -> Result:
        settings: dict[str, str] = {}
        binds: dict[str, str] = {}
        for key, value in params.items():
            if key.startswith("param_"):
                binds[key[6:]] = value
            elif key not in TRANSPORT_PARAMS:
                if not _SETTING_NAME_RE.match(key):
                    raise ClickHouseException(115, "UNKNOWN_SETTING", f"Unknown setting '{key}'")
                settings[key] = value
        for key in ("compress", "decompress"):
            if params.get(key, "0").lower() not in ("", "0", "false"):
                raise ClickHouseException(
                    48, "NOT_IMPLEMENTED",
                    f"The test server does not implement ClickHouse block compression ({key}=1); "
                    "use HTTP compression (Accept-Encoding / Content-Encoding)")
        if not stmt.text.strip():
            raise ClickHouseException(62, "SYNTAX_ERROR", "Empty query")
        if stmt.multi:
            raise ClickHouseException(62, "SYNTAX_ERROR", "Multi-statements are not allowed")
        fmt = stmt.output_format or params.get("default_format") or "TabSeparated"
        if fmt.lower() in _PYTHON_ONLY_FORMATS:
            raise ClickHouseException(73, "UNKNOWN_FORMAT", f"Unknown output format {fmt}")
        with self.lock:
            handle, temporary = self._handle(params)
            try:
                return self._execute(handle, temporary, stmt, data, fmt, settings, binds, params.get("database"))
            finally:
                if temporary or handle.broken:
                    handle.conn.close()
                    self.sessions.pop(handle.session_id, None)

    def _execute(self, handle: _Handle, temporary: bool, stmt: Statement, data: bytes | None, fmt: str,
                 settings: dict[str, str], binds: dict[str, str], database: str | None) -> Result:
        conn = handle.conn
        switched = bool(database) and database != handle.database
        ok = False
        try:
            if switched:
                self._run(conn, f"USE {_identifier(database or '')}")
            if settings:
                self._run(conn, "SET " + ", ".join(f"{k} = {_literal(v)}" for k, v in settings.items()))
            result = Result(timezone=settings.get("session_timezone") or self.timezone)
            if stmt.insert_format is not None:
                try:
                    inserter = conn.send_insert(stmt.text.decode("utf-8", "replace"), stmt.insert_format)
                except Exception as exc:
                    raise _engine_error(exc) from None
                with inserter:
                    try:
                        if data:
                            inserter.append(data)
                        done = inserter.finish()
                    except Exception as exc:
                        raise _engine_error(exc) from None
                result.summary = _summary(written_rows=done.rows_written, written_bytes=done.bytes_written,
                                          elapsed=done.elapsed)
            else:
                answer = self._run(conn, stmt.text, fmt, binds)
                result.body = answer.bytes() or b""
                if stmt.returns_rows:
                    result.output_format = fmt
                result.summary = _summary(
                    read_rows=answer.storage_rows_read(), read_bytes=answer.storage_bytes_read(),
                    written_rows=answer.rows_written(), written_bytes=answer.bytes_written(),
                    result_rows=answer.rows_read() if stmt.returns_rows else 0,
                    result_bytes=len(result.body), elapsed=answer.elapsed())
            ok = True
            return result
        finally:
            if not temporary:
                try:
                    self._restore(handle, stmt, ok, switched, settings)
                except EngineError:
                    handle.broken = True

    def _restore(self, handle: _Handle, stmt: Statement, ok: bool, switched: bool, settings: dict[str, str]) -> None:
        """Put the session back as it was before the request, keeping what its own USE or SET statement changed."""
        conn = handle.conn
        if ok and stmt.kind == b"USE":
            handle.database = self._run(conn, "SELECT currentDatabase()").bytes().decode().strip()
        elif switched:
            try:
                self._run(conn, f"USE {_identifier(handle.database)}")
            except EngineError:  # the session's database was dropped meanwhile
                handle.database = "default"
                self._run(conn, "USE default")
        if ok and stmt.kind == b"SET" and stmt.set_names:
            names = ", ".join(_literal(n) for n in stmt.set_names)
            rows = self._run(conn, f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})",
                             "JSONEachRow").bytes()
            for line in rows.splitlines():
                row = json.loads(line)
                if row["changed"]:
                    handle.changed[row["name"]] = row["value"]
                else:
                    handle.changed.pop(row["name"], None)
        if not settings:
            return
        assignments = [f"{k} = {_literal(handle.changed[k])}" if k in handle.changed else f"{k} = DEFAULT"
                       for k in settings]
        try:
            self._run(conn, "SET " + ", ".join(assignments))
        except EngineError:  # e.g. one of them was an unknown setting: undo the others one by one
            for assignment in assignments:
                try:
                    self._run(conn, "SET " + assignment)
                except EngineError as exc:
                    if exc.name != "UNKNOWN_SETTING":  # e.g. readonly=1 cannot be undone: drop the session
                        handle.broken = True


def _summary(read_rows: int = 0, read_bytes: int = 0, written_rows: int = 0, written_bytes: int = 0,
             result_rows: int = 0, result_bytes: int = 0, elapsed: float = 0.0) -> dict[str, str]:
    return {"read_rows": str(read_rows), "read_bytes": str(read_bytes), "written_rows": str(written_rows),
            "written_bytes": str(written_bytes), "total_rows_to_read": "0", "result_rows": str(result_rows),
            "result_bytes": str(result_bytes), "elapsed_ns": str(int(elapsed * 1e9))}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the driver pools its connections
    engine: Engine
    user: str
    password: str
    verbose = False

    def version_string(self) -> str:
        return "chserver (chdb)"

    def log_message(self, format: str, *args: Any) -> None:
        if self.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        split = urlsplit(self.path)
        body = self._read_body()
        if split.path in ("/ping", "/replicas_status") or (split.path == "/" and self.command == "GET"
                                                            and not split.query):
            self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        if split.path != "/":
            self._send(404, f"There is no handle {split.path}\n\nUse / or /ping for health checks.\n".encode(),
                       {"Content-Type": "text/plain; charset=UTF-8"})
            return
        try:
            self._authenticate(params)
            if self.command == "POST":
                body = _decompress(body, self.headers.get("Content-Encoding", ""))
                content_type = self.headers.get("Content-Type", "")
                if content_type.lower().startswith("multipart/form-data"):
                    body = self._form(params, body, content_type)
            else:
                body = b""
            stmt, data = self._statement(params.get("query", "").encode(), body)
            result = self.engine.execute(stmt, data, params)
        except (ClickHouseException, EngineError) as exc:
            self._send_error(exc, query_id)
            return
        except Exception as exc:  # a bug here, not in the query: still answer as ClickHouse would
            traceback.print_exc()
            self._send_error(EngineError(f"Code: 1001. DB::Exception: {type(exc).__name__}: {exc}. (STD_EXCEPTION)",
                                         1001, "STD_EXCEPTION"), query_id)
            return
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": result.timezone,
                   "X-ClickHouse-Summary": json.dumps(result.summary, separators=(",", ":")),
                   "Content-Type": _content_type(result.output_format)}
        if result.output_format:
            headers["X-ClickHouse-Format"] = result.output_format
        payload = result.body
        compression = params.get("enable_http_compression", self.engine.defaults.get("enable_http_compression", "0"))
        if payload and compression not in ("0", "false"):
            chosen = _compressor(self.headers.get("Accept-Encoding", ""))
            if chosen:
                headers["Content-Encoding"] = chosen[0]
                payload = chosen[1](payload)
        self._send(200, payload, headers)

    @staticmethod
    def _statement(query: bytes, body: bytes) -> tuple[Statement, bytes | None]:
        """The statement and, for an INSERT with a FORMAT clause, its data. The ``query`` parameter, a newline and
        the body are one query text; data that is the whole body is not copied."""
        if query and body:
            head = parse_statement(query + b"\n")
            if head.insert_format is not None and head.data_offset == len(query) + 1:
                return head, body
            text = query + b"\n" + body
        else:
            text = query or body
        stmt = parse_statement(text)
        data = text[stmt.data_offset:] if stmt.insert_format is not None else None
        return stmt, data

    def _authenticate(self, params: dict[str, str]) -> None:
        user, password = "default", ""
        authorization = self.headers.get("Authorization", "")
        if self.headers.get("X-ClickHouse-User") is not None or self.headers.get("X-ClickHouse-Key") is not None:
            user = self.headers.get("X-ClickHouse-User") or "default"
            password = self.headers.get("X-ClickHouse-Key") or ""
        elif authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode()
            except ValueError:
                decoded = ""
            user, _, password = decoded.partition(":")
            user = user or "default"
        elif authorization:
            user, password = "default", "\0"  # a bearer token: no such thing here, so no user matches
        elif "user" in params or "password" in params:
            user, password = params.get("user") or "default", params.get("password", "")
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        if not (user_ok and password_ok):
            raise ClickHouseException(
                516, "AUTHENTICATION_FAILED",
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name")

    @staticmethod
    def _form(params: dict[str, str], body: bytes, content_type: str) -> bytes:
        """A multipart/form-data request: its ``query`` and ``param_*`` fields join the URL parameters."""
        message = BytesParser(policy=email_policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename() is not None:
                raise ClickHouseException(48, "NOT_IMPLEMENTED", "External data is not supported by the test server")
            if name:
                payload = part.get_payload(decode=True) or b""
                params[str(name)] = payload.decode()
        return b""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    break
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after the chunk
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_error(self, exc: ClickHouseException | EngineError, query_id: str) -> None:
        message = exc.message
        if not _VERSION_TRAILER_RE.search(message):
            message = f"{message} (version {self.engine.version})"
        status = _STATUS_BY_NAME.get(exc.name or "", 500)
        self._send(status, (message + "\n").encode(), {
            "Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": str(exc.code),
            "X-ClickHouse-Query-Id": query_id})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("X-ClickHouse-Server-Display-Name", "chserver")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", "timeout=10")
        self.end_headers()
        self.wfile.write(body)


def serve(port: int, path: str, user: str, password: str, host: str = "127.0.0.1", verbose: bool = False) -> None:
    engine = Engine(path)
    handler = type("BoundHandler", (Handler,), {"engine": engine, "user": user, "password": password,
                                                "verbose": verbose})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"chserver: ClickHouse {engine.version} (chdb {engine.chdb_version}) on http://{host}:{port}, "
          f"data in {path}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        engine.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="chdb's ClickHouse engine behind ClickHouse's HTTP interface")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True, help="the engine's data directory")
    parser.add_argument("--user", default="default")
    parser.add_argument("--password", default="")
    parser.add_argument("--timezone", default="UTC", help="the server's time zone (TZ); empty: the machine's")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    if args.timezone:
        os.environ["TZ"] = args.timezone  # chdb takes the server time zone from TZ when it starts
    serve(args.port, args.path, args.user, args.password, host=args.host, verbose=args.verbose)


# ---------------------------------------------------------------------------------------------------------------------
# The fixture (runs in the test process)


@dataclass(frozen=True)
class ClickHouseServer:
    """Where a ClickHouse HTTP interface answers, and as whom to connect."""

    host: str
    port: int
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"http://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}"

    def client(self, **kwargs: Any) -> Any:
        """A ``clickhouse_connect`` client for this server; keyword arguments go to ``get_client``."""
        import clickhouse_connect

        options: dict[str, Any] = {"host": self.host, "port": self.port, "username": self.user,
                                   "password": self.password}
        options.update(kwargs)
        return clickhouse_connect.get_client(**options)


def _answers(server: ClickHouseServer) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.host}:{server.port}/ping", timeout=1) as response:
            return response.read() == b"Ok.\n"
    except (OSError, urllib.error.HTTPError):
        return False


def _configured(url: str) -> ClickHouseServer:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        pytest.fail(f"{URL_ENV} must look like http://user:password@host:port, not {url!r}", pytrace=False)
    return ClickHouseServer(parts.hostname, parts.port or 8123, unquote(parts.username or "default"),
                            unquote(parts.password or ""))


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """A ClickHouse HTTP interface for the whole session: ``$WALLABY_TEST_CLICKHOUSE_URL``, else chdb's engine
    served by this module in a subprocess."""
    configured = os.environ.get(URL_ENV)
    if configured:
        server = _configured(configured)
        if not _answers(server):
            pytest.fail(f"ClickHouse at {URL_ENV} (http://{server.host}:{server.port}) does not answer /ping",
                        pytrace=False)
        yield server
        return
    server = ClickHouseServer("127.0.0.1", free_port(), "default", uuid.uuid4().hex)
    data = tmp_path_factory.mktemp("clickhouse") / "data"
    command = [sys.executable, "-m", "tests.chserver", "--port", str(server.port), "--path", str(data),
               "--user", server.user, "--password", server.password]
    with running(f"ClickHouse test server on port {server.port}", command, lambda: _answers(server),
                 timeout=START_TIMEOUT, cwd=str(REPO_ROOT)):
        yield server


if __name__ == "__main__":
    main()
