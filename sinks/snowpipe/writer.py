"""Snowpipe destination: a flow's changes as files on a Snowflake stage, loaded with ``COPY INTO`` (docs/destinations.md
"Snowpipe").

The writer is the Snowflake writer (:class:`sinks.snowflake.writer.SnowflakeWriter`: connection, DSN, state table,
meta table, type map, schema evolution, errors without the password) in append mode, with its own load path:

Files
    Per destination table and apply (an epoch's end, or a cut inside a big epoch), the changes become one file of
    rows: the table's columns (the before image for a delete), then ``__op`` (insert / update / delete / read /
    truncate), ``__lsn``, ``__ord`` and ``__ts`` (the commit time), as the Snowflake destination's append mode writes
    them. Format ``parquet`` (pyarrow), ``avro`` (an object container file, fastavro, field types as the avro wire
    format's), ``json`` (newline-delimited objects, values as the json wire format writes them). JSON-typed columns
    (VARIANT / ARRAY / OBJECT) travel as JSON text. The name comes from the positions of the first and last change::

        {flow}-{schema}.{table}-{FIRST_LSN}-{FIRST_ORD}-{LAST_LSN}-{LAST_ORD}.{parquet|avro|json}

    (16 upper-case hex digits each; names escaped to ``[A-Za-z0-9_]``, the flow's also ``-``, with ``~XX``), so
    the same changes get the same name: a replay overwrites (``PUT ... OVERWRITE=TRUE``) instead of adding a file.
    The file goes to ``@stage[/stage_path]/``, or to the table stage ``@schema.%table`` when no stage is set.

Copy (``copy_on_write=true``, ``auto_ingest=false``)
    The table is created from the source's shape with the Snowflake type map (plus the four columns above), columns
    are added as the source adds them; then ``COPY INTO table (cols) FROM (SELECT $1:"col"::TYPE ... FROM @location)
    FILES=('<name>') FILE_FORMAT=(TYPE=...)`` (``FORMAT_NAME=`` with ``file_format``), in the transaction that
    stores the high-water (``WALLABY_META.__WALLABY_STATE``). Exactly once: the rows of a file and the high-water
    above them commit together; a crash before the commit loses both, the replay writes the same changes again
    (under the same name when the epoch is cut alike) and loads them; a batch at or below the committed high-water
    is skipped. Only the files named in FILES are loaded, never what else the stage holds; Snowflake's load history
    would skip a file loaded before in any case.

Upload only (``auto_ingest=true``)
    The files are PUT and the high-water stored after them; a pipe on the stage loads them (Snowpipe's load history
    loads a file name once). Before the first PUT of an epoch the writer marks the state (``__WALLABY_SNOWPIPE_
    UPLOADS``): a crash between a PUT and the high-water's commit leaves files above the high-water that the pipe
    may have loaded. A writer starting on such a mark LISTs the location and skips, per table, every change inside
    the position range of one of this flow's files above the high-water (a file holds every change of its table in
    its range), so none lands twice. No table is created, but the meta table records the columns and Snowflake types.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections import deque
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from sinks.base import PermanentSinkError, WriterSink
from sinks.snowflake import writer as sfw
from sinks.snowflake.dsn import DsnError, parse_dsn
from sinks.snowflake.options import SnowflakeDestinationOptions
from sinks.snowflake.types import canonical_type, is_json_type, snowflake_type
from sinks.snowpipe.options import SnowpipeDestinationOptions
from sinks.snowpipe.stage import StageError, stage_location
from sinks.sql.engine import ApplyError, _Pending, fill_value
from sinks.sql.merge import merge_pending
from sinks.sql.reduce import SEQ_COL, q
from wallaby.core.changes import BEFORE_PREFIX, LSN_COL, OP_COL, ORD_COL, ZERO, Position
from wallaby.core.identity import SourceCheck, SourceIdentity
from wallaby.wire.avrofmt import _avro_names, _avro_type, _avro_value
from wallaby.wire.jsonfmt import value_converter
from wallaby.wire.model import canonical

log = logging.getLogger("wallaby.sinks.snowpipe")

APPEND_COLS = sfw.APPEND_COLS
EXTENSIONS = {"parquet": "parquet", "avro": "avro", "json": "json"}
UPLOADS = "__WALLABY_SNOWPIPE_UPLOADS"
_NAME_RE = re.compile(r"^(?P<prefix>.+)-(?P<fl>[0-9A-F]{16})-(?P<fo>[0-9A-F]{16})-(?P<ll>[0-9A-F]{16})"
                      r"-(?P<lo>[0-9A-F]{16})\.(?P<ext>[a-z]+)$")


# ---------------------------------------------------------------------------------------------------- names

def _esc(text: str, keep: str = "_") -> str:
    """``text`` with every character outside ``[A-Za-z0-9]`` and ``keep`` as ``~XX`` (UTF-8 bytes): a file name
    part that needs no quoting in a stage path and maps back to one name only."""
    return "".join(ch if (ch.isascii() and (ch.isalnum() or ch in keep)) else
                   "".join(f"~{b:02X}" for b in ch.encode()) for ch in text)


def file_prefix(flow_id: str, dest: tuple[str, str]) -> str:
    """``{flow}-{schema}.{table}``: the flow id keeps its ``-`` (the table's names have none, so the last ``-``
    before the table is the separator)."""
    return f"{_esc(flow_id, '_-')}-{_esc(dest[0])}.{_esc(dest[1])}"


def file_name(flow_id: str, dest: tuple[str, str], first: Position, last: Position, fmt: str) -> str:
    """The staged file of the changes of ``dest`` from ``first`` to ``last`` (module docstring)."""
    return (f"{file_prefix(flow_id, dest)}-{first.lsn:016X}-{first.ordinal:016X}-{last.lsn:016X}"
            f"-{last.ordinal:016X}.{EXTENSIONS[fmt]}")


def parse_file_name(name: str) -> tuple[str, Position, Position, str] | None:
    """``(prefix, first, last, ext)`` of a file name this destination writes (any directory part ignored)."""
    m = _NAME_RE.match(name.rpartition("/")[2])
    if m is None:
        return None
    return (m["prefix"], Position(int(m["fl"], 16), int(m["fo"], 16)), Position(int(m["ll"], 16), int(m["lo"], 16)),
            m["ext"])


def snowflake_options(options: SnowpipeDestinationOptions) -> SnowflakeDestinationOptions:
    """The options of the Snowflake writer underneath: append mode, the same DSN, tables, type map and meta table
    (state and meta table in the Snowflake destination's default ``WALLABY_META`` schema)."""
    d = options.model_dump(by_alias=True, exclude_none=True)
    for k in ("stage", "stage_path", "format", "file_format", "copy_on_write", "auto_ingest"):
        d.pop(k, None)
    d["write_mode"] = "append"
    return SnowflakeDestinationOptions.model_validate(d)


def _lit(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------------------------------------------- files

def _write_parquet(table: pa.Table, path: str) -> None:
    pq.write_table(table, path, compression="zstd")


def _write_json(table: pa.Table, path: str) -> None:
    """Newline-delimited JSON objects, values as the json wire format writes them."""
    names = table.schema.names
    cols = []
    for i, f in enumerate(table.schema):
        conv = value_converter(f.type)
        values = canonical(table.column(i))
        cols.append(values if conv is None else [None if v is None else conv(v) for v in values])
    with open(path, "wb") as out:
        buf = io.BytesIO()
        for row in zip(*cols, strict=True):
            buf.write(orjson.dumps(dict(zip(names, row, strict=True))))
            buf.write(b"\n")
        out.write(buf.getvalue())


class _Named:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


def avro_field_names(names: list[str]) -> list[str]:
    return _avro_names([_Named(n) for n in names])  # type: ignore[list-item]


def _write_avro(table: pa.Table, path: str) -> None:
    """An Avro object container file of the rows, field types as the avro wire format's (names made valid)."""
    import fastavro

    defined: set[str] = set()
    fields = avro_field_names(table.schema.names)
    schema = {"type": "record", "name": "Row", "namespace": "wallaby.snowpipe", "fields": [
        {"name": n, "type": ["null", _avro_type(f.type, defined)], "default": None}
        for n, f in zip(fields, table.schema, strict=True)]}
    # canonical values: dates and times as the logical types' integers (exact for every value)
    cols = [[_avro_value(v, f.type) for v in canonical(table.column(i))] for i, f in enumerate(table.schema)]
    records = [dict(zip(fields, row, strict=True)) for row in zip(*cols, strict=True)]
    with open(path, "wb") as out:
        fastavro.writer(out, fastavro.parse_schema(schema), records, codec="null")


WRITERS = {"parquet": _write_parquet, "json": _write_json, "avro": _write_avro}


# ---------------------------------------------------------------------------------------------------- the writer

class SnowpipeWriter(sfw.SnowflakeWriter):
    """Stages each apply's changes as one file per table and loads it (module docstring)."""

    def __init__(self, name: str, flow_id: str, options: SnowpipeDestinationOptions, resume_state: Any = None, *,
                 source: SourceCheck | None = None, max_buffer_rows: int = 500_000,
                 max_buffer_bytes: int = sfw.MAX_BUFFER_BYTES):
        if not isinstance(options, SnowpipeDestinationOptions):
            options = SnowpipeDestinationOptions.model_validate(options)
        self.pipe = options
        self.copy = bool(options.copy_on_write and not options.auto_ingest)
        try:
            self.location = stage_location(options, parse_dsn(options.dsn).kwargs.get("schema"))
        except (DsnError, StageError) as exc:
            raise PermanentSinkError(name, f"Snowpipe {'stage' if isinstance(exc, StageError) else 'dsn'}: {exc}") \
                from None
        self.fmt = options.format
        self.files: deque[str] = deque(maxlen=1000)  # the last files this writer staged, in order
        self._orphans: dict[str, list[tuple[Position, Position]]] = {}  # file prefix -> ranges to skip
        self._marked = False  # auto_ingest: the uploads mark is set for the open epoch
        self._uploads = f"{q('WALLABY_META')}.{q(UPLOADS)}"
        self._stored_raw = ZERO  # the high-water as stored, before the source judges it
        super().__init__(name, flow_id, snowflake_options(options), resume_state, source=source,
                         max_buffer_rows=max_buffer_rows, max_buffer_bytes=max_buffer_bytes)
        self.stats.update(files=0, loaded_files=0, skipped_files=0, orphan_rows=0)
        if self._hw.stored != self._stored_raw:  # a reset discarded the high-water: its orphans are not ours
            self._orphans.clear()

    # ------------------------------------------------------------------ state

    def _where(self, where: str | None) -> str:
        shown = self._dsn.shown
        return (f"Snowpipe {shown} (stage {self.location}), table {where}: " if where
                else f"Snowpipe {shown} (stage {self.location}): ")

    def _open_state(self) -> tuple[int, int, str | None] | None:
        import snowflake.connector.errors as sferr

        row = super()._open_state()
        if row is not None:
            self._stored_raw = Position(int(row[0]), int(row[1]))
        if self.copy:
            return row
        try:
            self._sql(f"CREATE TABLE IF NOT EXISTS {self._uploads} (FLOW_ID VARCHAR NOT NULL, DESTINATION VARCHAR"
                      " NOT NULL, LSN NUMBER(20,0), ORDINAL NUMBER(20,0), UPDATED_AT TIMESTAMP_TZ)")
            mark = self._sql(f"SELECT count(*) FROM {self._uploads} WHERE FLOW_ID = %s AND DESTINATION = %s",
                             (self.flow_id, self.name)).fetchone()[0]
            self._con.commit()
            if mark:
                self._find_orphans(self._stored_raw)
        except sferr.Error as exc:
            self.close()
            raise PermanentSinkError(self.name, f"cannot open Snowflake {self._dsn.shown} (stage {self.location}):"
                                                f" {self._clean(exc)}") from None
        return row

    def _find_orphans(self, stored: Position) -> None:
        """Files of this flow above the high-water ``stored`` (an epoch that crashed after a PUT): their ranges."""
        flow = _esc(self.flow_id, "_-") + "-"
        n = 0
        for listed in self._list_files():
            parsed = parse_file_name(listed)
            if parsed is None or not parsed[0].startswith(flow) or parsed[3] != EXTENSIONS[self.fmt]:
                continue
            if parsed[2] > stored:
                self._orphans.setdefault(parsed[0], []).append((parsed[1], parsed[2]))
                n += 1
        log.info("destination %r: %d file(s) of a crashed epoch above the high-water %s on %s", self.name, n, stored,
                 self.location, extra={"flow": self.flow_id})

    def _list_files(self) -> list[str]:
        """The names of the files at the location (``LIST``; a name may carry directories)."""
        return [str(r[0]) for r in self._sql(f"LIST {self.location}").fetchall()]

    def _store_and_commit(self, mark: Position) -> None:
        if self._marked:  # the files above the last high-water are now below the new one
            self._sql(f"DELETE FROM {self._uploads} WHERE FLOW_ID = %s AND DESTINATION = %s",
                      (self.flow_id, self.name))
            self._tx = True
        super()._store_and_commit(mark)
        self._marked = False

    def _mark_uploads(self) -> None:
        """auto_ingest: before the epoch's first PUT, say (committed) that files above the high-water may exist."""
        if self._marked:
            return
        self._sql(f"DELETE FROM {self._uploads} WHERE FLOW_ID = %s AND DESTINATION = %s", (self.flow_id, self.name))
        self._sql(f"INSERT INTO {self._uploads} (FLOW_ID, DESTINATION, LSN, ORDINAL, UPDATED_AT) SELECT %s, %s, %s,"
                  " %s, current_timestamp()", (self.flow_id, self.name, self._hw.stored.lsn, self._hw.stored.ordinal))
        self._con.commit()  # (what else the transaction holds is the meta table's rows: no row data)
        self._marked = True

    # ------------------------------------------------------------------ tables

    def _plan(self, p: _Pending) -> sfw._Plan | None:
        if self.copy:
            return super()._plan(p)
        # upload only: no table is made; the types are the ones a table for these files would have
        cols = {n: snowflake_type(c, self._mappings) for n, c in self._columns(p).items()}
        clash = [c for c in cols if c in dict(APPEND_COLS)]
        if clash:
            self._fail(f"{p.dest[0]}.{p.dest[1]}", f"source columns {clash} clash with the columns"
                                                   f" {[c for c, _ in APPEND_COLS]} of the staged files")
        self._tables[p.dest] = sfw.DestTable({**cols, **dict(APPEND_COLS)}, load="-")
        return None

    def _run_plan(self, p: _Pending, plan: sfw._Plan) -> None:
        """The Snowflake writer's DDL (create, add, widen) without its load table: COPY loads the target."""
        self._run_ddl(p, plan).load = "-"

    # ------------------------------------------------------------------ rows

    def _apply_rows(self, p: _Pending) -> None:
        dest = self._tables[p.dest]
        columns = self._columns(p)
        qt = f"{q(p.dest[0])}.{q(p.dest[1])}"
        if p.fills:  # a column added with a default: the rows loaded before it hold it (as in Postgres)
            self._dml_tables.add(p.dest)
            for c in p.fills:
                value = fill_value(c)[0].as_py()
                if isinstance(value, (dict, list)):
                    value = orjson.dumps(value).decode()
                self._sql(f"UPDATE {qt} SET {q(c.name)} = {self._conv(dest, c.name, '%s')}", (value,))
            p.fills = []
        if self.options.meta_table_enabled:
            self._record_meta(p, dest)
        if not p.items:
            return
        src = merge_pending(p.table, p.items, columns, True, duckdb_infinity=False)
        prefix = file_prefix(self.flow_id, p.dest)
        if self._orphans.get(prefix):
            src = self._drop_orphaned(prefix, src)
        if src.num_rows == 0:
            return
        self._dml_tables.add(p.dest)
        self.stats["applied_rows"] += src.num_rows
        lsn, ordn = src.column(LSN_COL), src.column(ORD_COL)
        n = src.num_rows
        first = Position(lsn[0].as_py(), ordn[0].as_py())
        last = Position(lsn[n - 1].as_py(), ordn[n - 1].as_py())
        self._duck.register("__wallaby_src", src)
        out = sfw._clamp_infinity(self._rows(src, dest, columns))
        name = file_name(self.flow_id, p.dest, first, last, self.fmt)
        path = os.path.join(self._tmp, name)
        WRITERS[self.fmt](out, path)
        if not self.copy:
            self._mark_uploads()
        try:
            self._sql(f"PUT 'file://{path}' {self.location} AUTO_COMPRESS=FALSE OVERWRITE=TRUE")
        finally:
            os.remove(path)
        self.files.append(name)
        self.stats["files"] += 1
        if self.copy:
            self._copy(qt, dest, out.schema.names, name)

    def _drop_orphaned(self, prefix: str, src: pa.Table) -> pa.Table:
        """``src`` without the changes a file of a crashed epoch holds (upload only; module docstring)."""
        ranges = self._orphans[prefix]
        pos = zip(src.column(LSN_COL).to_pylist(), src.column(ORD_COL).to_pylist(), strict=True)
        keep = [not any(f <= Position(lsn, o) <= last for f, last in ranges) for lsn, o in pos]
        dropped = keep.count(False)
        if not dropped:
            return src
        self.stats["orphan_rows"] += dropped
        log.info("destination %r: %d change(s) already staged by a crashed epoch skipped", self.name, dropped,
                 extra={"flow": self.flow_id})
        return src.filter(pa.array(keep))

    def _rows(self, src: pa.Table, dest: sfw.DestTable, columns: dict) -> pa.Table:
        """One row per change: the columns (the before image for a delete), then ``__op`` ... ``__ts``."""
        names = list(columns)

        def value(c: str) -> str:
            if src.schema.get_field_index(BEFORE_PREFIX + c) >= 0:  # (a delete's metadata columns: after)
                return f"CASE WHEN {OP_COL} = 'delete' THEN coalesce({q(BEFORE_PREFIX + c)}, {q(c)}) ELSE {q(c)} END"
            return q(c)

        sel = ", ".join(f"{self._val(src, dest, c, value(c))} AS {q(c)}" for c in names)
        return self._duck.execute(
            f"SELECT {sel}{', ' if sel else ''}__op AS __op, CAST(__lsn AS DECIMAL(20,0)) AS __lsn,"
            f" CAST(__ord AS DECIMAL(20,0)) AS __ord, __ts AS __ts FROM __wallaby_src ORDER BY {SEQ_COL}"
        ).fetch_arrow_table()

    def copy_statement(self, qt: str, dest: sfw.DestTable, names: list[str], file: str) -> str:
        """``COPY INTO`` the table from exactly ``file`` (a transformation: each column cast to its type)."""
        fields = avro_field_names(names) if self.fmt == "avro" else names
        exprs = []
        for n, f in zip(names, fields, strict=True):
            t = dest.columns.get(n, "VARCHAR")
            v = f"$1:{q(f)}"
            if is_json_type(t):
                e = f"PARSE_JSON({v}::VARCHAR)"
                exprs.append(f"CAST({e} AS {t})" if t in ("ARRAY", "OBJECT") else e)
            elif self.fmt == "json" and canonical_type(t).startswith("BINARY"):
                exprs.append(f"TO_BINARY({v}::VARCHAR, 'BASE64')")
            else:
                exprs.append(f"{v}::{t}")
        if self.pipe.file_format:
            file_format = f"FILE_FORMAT=(FORMAT_NAME={_lit(self.pipe.file_format)})"
        else:
            file_format = f"FILE_FORMAT=(TYPE={self.fmt.upper()})"
        return (f"COPY INTO {qt} ({', '.join(q(n) for n in names)}) FROM (SELECT {', '.join(exprs)} FROM"
                f" {self.location}) FILES=({_lit(file)}) {file_format}")

    def _copy(self, qt: str, dest: sfw.DestTable, names: list[str], file: str) -> None:
        result = self._sql(self.copy_statement(qt, dest, names, file)).fetchall()
        for r in result:
            status = str(r[1]).upper() if len(r) > 1 else ""
            if status == "LOAD_SKIPPED":
                self.stats["skipped_files"] += 1
                log.info("destination %r: %s was loaded into %s before (load history); skipped", self.name, file,
                         qt, extra={"flow": self.flow_id})
            elif status in ("LOADED", ""):
                self.stats["loaded_files"] += 1
            else:
                raise ApplyError(f"COPY INTO {qt} of {file}: {status} {r[6] if len(r) > 6 else ''}".strip())


def make_sink(name: str, flow_id: str, options: SnowpipeDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    """The destination of a flow spec (the DSN is parsed now: a bad one is refused before anything connects)."""
    try:
        stage_location(options, parse_dsn(options.dsn).kwargs.get("schema"))
    except (DsnError, StageError) as exc:
        raise PermanentSinkError(name, f"Snowpipe {'stage' if isinstance(exc, StageError) else 'dsn'}: {exc}") \
            from None
    return WriterSink(name, lambda resume_state: SnowpipeWriter(name, flow_id, options, resume_state, source=source))


def stored_position(name: str, flow_id: str, options: SnowpipeDestinationOptions
                    ) -> tuple[Position, SourceIdentity | None, str] | None:
    return sfw.stored_position(name, flow_id, snowflake_options(options))


def discard_position(name: str, flow_id: str, options: SnowpipeDestinationOptions) -> None:
    sfw.discard_position(name, flow_id, snowflake_options(options))


__all__ = ["SnowpipeWriter", "discard_position", "file_name", "make_sink", "parse_file_name", "stage_location",
           "stored_position"]
