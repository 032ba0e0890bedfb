"""TOAST rehydration: fill unchanged TOAST values (``__unchanged``) before the destinations see a batch.

``toast_fetch`` (source option; docs/toast.md has the details):

- ``off``: the step is not in the dataflow.
- ``source``: per table and batch ONE query reselects the unchanged columns of
  those rows by key (the distinct keys as ``unnest``ed text arrays joined to the
  table, each cast to the key column's ``format_type``). Values come in libpq's
  text format, i.e. each type's output text under the source's session
  settings, exactly what pgoutput sends (a ``::text`` cast is not that for
  bool, bpchar or inet), and are decoded by :func:`sources.postgres.pgtypes.decode_column`
  into the column's exact Arrow type. Found rows lose their ``__unchanged``; a
  row not found (deleted since) keeps it, so the destination keeps its value.
- ``full``: the same query for every column; found rows get their whole after
  image replaced.
- ``cache``: an LRU of ``toast_cache_size`` entries (and at most
  ``WALLABY_TOAST_CACHE_BYTES`` of values, 256 MiB), (table oid, key) -> the
  last values the stream carried of the table's TOASTable columns (varlena,
  storage not plain). Inserts and loads fill an entry, updates refresh what they
  carry (a key change moves it), deletes drop it, truncates and ddl events drop
  the table's. Unchanged columns found with the same type oid, typmod and Arrow
  type come from it; misses fall back to ``source`` and their values fill the
  entry's gaps. The snapshot (bytewax state) is the entries only, oldest first,
  values as exact Python values of the Arrow storage type: bounded by the size.

What a reselect sees: the row as committed NOW in the source, which may be
later than the change being rehydrated (a later update's value). If that later
change is in the stream too, the destination ends correct anyway. Cached values
are exact as of their position in the stream.

Left alone: tables without a key (REPLICA IDENTITY FULL carries the old row in
the before image; NOTHING cannot update), key values without a text form here
(an infinite timestamp), tables or columns dropped since (a warning). One
connection per step instance, opened lazily, reconnected once when lost;
failures raise :class:`wallaby.core.errors.SourceError` naming the server.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Stream
from psycopg import pq

from sources.postgres import pgtypes
from sources.postgres.connection import connect, is_transient, quote_ident, server_name
from sources.postgres.rds_iam import register
from wallaby.core import changes as ch
from wallaby.core import settings
from wallaby.core.changes import ChangeBatch, Event, TableChanges, TableSchema
from wallaby.core.errors import SourceError

log = logging.getLogger("wallaby.toast")

MODES = ("source", "full", "cache")
_CATALOG_SQL = ("SELECT attname, format_type(atttypid, atttypmod), atttypid, atttypmod, attndims, attlen, attstorage"
                " FROM pg_attribute WHERE attrelid = %s::oid AND attnum > 0 AND NOT attisdropped")
Key = tuple[str, ...]
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


@dataclass(frozen=True)
class _Col:
    sql_type: str  # format_type(): what a key text is cast to
    ctype: pgtypes.ColumnType
    toastable: bool  # varlena, storage not plain


def _storage(t: pa.DataType) -> pa.DataType:
    """Temporal types as their integers (nested too): Python holds those exactly (infinity, BC, 24:00)."""
    if pa.types.is_list(t):
        return pa.list_(_storage(t.value_type))
    if pa.types.is_date32(t):
        return pa.int32()
    if pa.types.is_timestamp(t) or pa.types.is_time64(t):
        return pa.int64()
    return t


def _to_py(arr: pa.Array) -> list[Any]:
    st = _storage(arr.type)
    return (arr if st == arr.type else arr.cast(st)).to_pylist()


def _from_py(values: list[Any], t: pa.DataType) -> pa.Array:
    st = _storage(t)
    arr = pa.array(values, st)
    return arr if st == t else arr.cast(t)


def key_texts(arr: pa.Array) -> list[str | None]:
    """Postgres input text of each key value (None: NULL or no text form)."""
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr.to_pylist()
    if pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return arr.cast(pa.string()).to_pylist()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return [None if v is None else "\\x" + v.hex() for v in arr.to_pylist()]
    out: list[str | None] = []
    for s in arr:
        try:
            out.append(_literal(s.as_py()))
        except (ValueError, OverflowError):  # not a Python value: infinity, BC, past 9999
            out.append(None)
    return out


def _literal(v: Any) -> str | None:
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    return str(v) if isinstance(v, str | int) else None


def _keys(rows: pa.RecordBatch, names: list[str]) -> list[Key | None]:
    cols = [key_texts(rows.column(n)) for n in names]
    return [None if any(v is None for v in k) else k for k in zip(*cols, strict=True)]


def _unify(orig: pa.Array, new: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """Both arrays in one type: ``new`` cast to ``orig``'s, else ``orig`` to ``new``'s (a numeric NaN batch)."""
    if new.type == orig.type:
        return orig, new
    try:
        return orig, new.cast(orig.type)
    except _ARROW_ERRORS:
        pass
    try:
        return orig.cast(new.type), new
    except _ARROW_ERRORS:
        return None


def _array_text(values: list[str]) -> bytes:
    """A Postgres array literal of the values, every element quoted."""
    return ("{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}").encode()


def _exec_raw(conn: psycopg.Connection, sql: str, params: list[bytes]) -> list[list[bytes | None]]:
    """One statement in libpq's text format: each value exactly as its type's output function writes it (what
    pgoutput sends too; a ``::text`` cast is not that for bool, bpchar or inet)."""
    res = conn.pgconn.exec_params(sql.encode(), params)
    if res.status == pq.ExecStatus.FATAL_ERROR:
        state = res.error_field(pq.DiagnosticField.SQLSTATE)
        message = res.error_message.decode(errors="replace").strip()
        raise psycopg.errors.lookup(state.decode())(message) if state else psycopg.OperationalError(message)
    return [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]


# The cache is also bounded by the size of the values it holds (toast_cache_size counts entries, and TOASTed
# values are big by definition: 10000 entries of 100 KB would be 1 GB). WALLABY_TOAST_CACHE_BYTES sets it.
TOAST_CACHE_BYTES = settings.on_import().toast_cache_bytes


def _value_bytes(v: Any) -> int:
    """About what a cached value holds (its text or bytes; a fixed cost for anything else)."""
    if isinstance(v, str | bytes | bytearray):
        return 48 + len(v)
    if isinstance(v, list | tuple):
        return 56 + sum(_value_bytes(x) for x in v)
    if isinstance(v, dict):
        return 64 + sum(_value_bytes(k) + _value_bytes(x) for k, x in v.items())
    return 32


def _entry_bytes(entry: dict[str, tuple[tuple, Any]]) -> int:
    return 64 + sum(_value_bytes(v) for _sig, v in entry.values())


class ToastCache:
    """LRU of (relid, key) -> {column: (signature, value)}; bounded by ``size`` entries and ``max_bytes`` of values.

    Every change goes through these methods, which keep the byte count."""

    def __init__(self, size: int, state: Any = None, max_bytes: int | None = None):
        self.size = size
        self.max_bytes = TOAST_CACHE_BYTES if max_bytes is None else max_bytes
        self.bytes = 0
        self.entries: OrderedDict[tuple[int, Key], dict[str, tuple[tuple, Any]]] = OrderedDict()
        self._sizes: dict[tuple[int, Key], int] = {}
        for relid, key, cols in (state or {}).get("entries", [])[-size:]:
            self.put(relid, tuple(key), {c: (tuple(sig), v) for c, sig, v in cols})

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, relid: int, key: Key) -> dict[str, tuple[tuple, Any]] | None:
        entry = self.entries.get((relid, key))
        if entry is not None:
            self.entries.move_to_end((relid, key))
        return entry

    def put(self, relid: int, key: Key, entry: dict[str, tuple[tuple, Any]]) -> None:
        k = (relid, key)
        self.pop(relid, key)
        self.entries[k] = entry
        self._sizes[k] = n = _entry_bytes(entry)
        self.bytes += n
        self._evict()

    def fill(self, relid: int, key: Key, column: str, value: tuple[tuple, Any]) -> None:
        """Add a column the entry lacks (a reselected value), if the entry is still there."""
        k = (relid, key)
        entry = self.entries.get(k)
        if entry is None or column in entry:
            return
        entry[column] = value
        n = _value_bytes(value[1])
        self._sizes[k] += n
        self.bytes += n
        self._evict()

    def pop(self, relid: int, key: Key) -> None:
        k = (relid, key)
        if self.entries.pop(k, None) is not None:
            self.bytes -= self._sizes.pop(k)

    def _evict(self) -> None:
        while self.entries and (len(self.entries) > self.size or self.bytes > self.max_bytes):
            k, _ = self.entries.popitem(last=False)
            self.bytes -= self._sizes.pop(k)

    def drop_tables(self, relids: set[int]) -> None:
        for relid, key in [k for k in self.entries if k[0] in relids]:
            self.pop(relid, key)

    def snapshot(self) -> dict:
        """The entries only, oldest first, in new containers (bytewax pickles it later)."""
        return {"v": 1, "entries": [(relid, key, tuple((c, sig, v) for c, (sig, v) in cols.items()))
                                    for (relid, key), cols in self.entries.items()]}


@dataclass
class _Plan:
    """One row segment: what it gets from the cache and what it needs from the source."""

    seg: TableChanges
    unchanged: list[list[str] | None]
    cached: dict[int, dict[str, Any]] = field(default_factory=dict)  # row -> {column: python value}
    wanted: dict[int, tuple[Key, list[str]]] = field(default_factory=dict)  # row -> (key, columns to reselect)


@dataclass
class _Request:
    table: TableSchema
    cols: dict[str, None] = field(default_factory=dict)  # ordered set
    keys: dict[Key, int] = field(default_factory=dict)  # distinct key -> its index in the query


class Rehydrator:
    """The step's logic without bytewax: :meth:`process` one ChangeBatch at a time, in order."""

    def __init__(self, dsn: str, mode: str, cache_size: int = 10000, flow_id: str = "", state: Any = None):
        if mode not in MODES:
            raise ValueError(f"toast_fetch {mode!r}: expected one of {', '.join(MODES)}")
        self.dsn, self.mode, self.flow_id = dsn, mode, flow_id
        self.server = server_name(dsn)
        self.cache = ToastCache(cache_size, state) if mode == "cache" else None
        self.conn: psycopg.Connection | None = None
        self.types: dict[int, pgtypes.PgType] = dict(pgtypes.BUILTIN_TYPES)
        self.catalogs: dict[tuple, dict[str, _Col]] = {}
        self.sigs: dict[tuple, tuple] = {}
        self.stats = {"queries": 0, "hits": 0, "misses": 0, "filled": 0}

    # -- the source connection ------------------------------------------------------------------------------
    def _query(self, sql: str, params: Any, raw: bool = False) -> list[Any]:
        """Rows of ``sql``; ``raw``: through libpq with text parameters, values as the types' output text (bytes)."""
        for attempt in (0, 1):
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.dsn, application_name=f"wallaby-toast:{self.flow_id}")
            try:
                return _exec_raw(self.conn, sql, params) if raw else self.conn.execute(sql, params).fetchall()
            except psycopg.Error as exc:
                bad = self.conn.closed or self.conn.broken or self.conn.pgconn.status == pq.ConnStatus.BAD
                if attempt == 0 and (bad or is_transient(exc)):
                    log.warning("toast: lost the connection to %s (%s); reconnecting", self.server, exc)
                    self.close()
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def _error(self, table: TableSchema, exc: psycopg.Error) -> None:
        """Returns when the table is to be skipped (gone or changed since); raises SourceError otherwise."""
        state = getattr(exc, "sqlstate", None) or ""
        if state[:2] in ("42", "22"):
            log.warning("toast: cannot reselect from %s on %s (%s); its unchanged values stay unchanged",
                        table.qualified, self.server, str(exc).strip().splitlines()[0])
            return
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        err = SourceError(f"could not reselect TOAST values of {table.qualified} from source Postgres"
                          f" {self.server}: {first}", server=self.server, sqlstate=state or None)
        err.transient = is_transient(exc)
        raise err from None

    def catalog(self, table: TableSchema) -> dict[str, _Col]:
        sig = (table.relid, tuple((c.name, c.type_oid, c.typmod) for c in table.columns))
        if sig not in self.catalogs:
            try:
                rows = self._query(_CATALOG_SQL, (table.relid,))
                unknown = {int(r[2]) for r in rows} - set(self.types)
                if unknown:
                    self.types.update(pgtypes.resolve_types(self.conn, unknown))
            except psycopg.Error as exc:
                self._error(table, exc)
                rows = []
            self.catalogs[sig] = {
                name: _Col(sql_type, pgtypes.column_type(int(oid), int(typmod), self.types, max(int(ndims), 1)),
                           int(attlen) == -1 and storage != "p")
                for name, sql_type, oid, typmod, ndims, attlen, storage in rows}
        return self.catalogs[sig]

    def _sig(self, table: TableSchema, col: str, t: pa.DataType) -> tuple:
        c = table.column(col)
        sig = (c.type_oid, c.typmod, str(t))
        return self.sigs.setdefault(sig, sig)

    # -- batches --------------------------------------------------------------------------------------------
    def process(self, batch: ChangeBatch) -> ChangeBatch:
        plans: dict[int, _Plan] = {}
        requests: dict[int, _Request] = {}
        for i, seg in enumerate(batch.segments):
            if isinstance(seg, Event):
                if self.cache is not None and seg.op in (ch.OP_TRUNCATE, ch.OP_DDL) and seg.tables:
                    self.cache.drop_tables({t.relid for t in seg.tables})
                continue
            t = seg.table
            if t.replica_identity not in ("d", "i") or not t.key_names or not len(seg):
                continue
            touched = seg.rows.column(ch.UNCHANGED_COL).null_count < len(seg)
            if not touched and self.cache is None:
                continue
            plan = _Plan(seg, seg.rows.column(ch.UNCHANGED_COL).to_pylist())
            if self.cache is not None:
                self._cache_pass(plan)
            else:
                keys = _keys(seg.rows, list(t.key_names))
                cols = list(t.column_names) if self.mode == "full" else None
                for r, u in enumerate(plan.unchanged):
                    if u and keys[r] is not None:
                        plan.wanted[r] = (keys[r], cols or u)
            for key, cols in plan.wanted.values():
                req = requests.setdefault(t.relid, _Request(t))
                req.cols.update(dict.fromkeys(cols))
                req.keys.setdefault(key, len(req.keys))
            if plan.wanted or plan.cached:
                plans[i] = plan
        if not plans:
            return batch
        fetched = {relid: self._fetch(req) for relid, req in requests.items()}
        segments = list(batch.segments)
        for i, plan in plans.items():
            segments[i] = self._merge(plan, fetched.get(plan.seg.table.relid))
        return replace(batch, segments=segments)  # its snapshot mark and caught_up kept

    def _cache_pass(self, plan: _Plan) -> None:
        """Rows in WAL order against the cache: hits into ``plan.cached``, misses into ``plan.wanted``."""
        assert self.cache is not None
        t, rows = plan.seg.table, plan.seg.rows
        cat = self.catalog(t)
        names = list(t.key_names)
        after = _keys(rows, names)
        before = _keys(rows, [ch.BEFORE_PREFIX + k for k in names]) if plan.seg.has_before else [None] * len(rows)
        toast = [c for c in t.column_names if (cat[c].toastable if c in cat else False)]
        values = {c: _to_py(rows.column(c)) for c in toast}
        sigs = {c: self._sig(t, c, rows.column(c).type) for c in t.column_names}
        for r, op_ in enumerate(rows.column(ch.OP_COL).to_pylist()):
            old_key, new_key = before[r] or after[r], after[r]
            if op_ == ch.OP_DELETE:
                self.cache.pop(t.relid, old_key)
            if op_ == ch.OP_DELETE or new_key is None:
                continue
            if op_ in (ch.OP_INSERT, ch.OP_READ):
                self.cache.put(t.relid, new_key, {c: (sigs[c], values[c][r]) for c in toast})
                continue
            if op_ != ch.OP_UPDATE:
                continue
            entry = dict(self.cache.get(t.relid, old_key) or {})
            unchanged = plan.unchanged[r] or []
            hits = {c: entry[c][1] for c in unchanged if c in entry and entry[c][0] == sigs[c]}
            if unchanged:
                self.stats["hits" if len(hits) == len(unchanged) else "misses"] += 1
            if hits:
                plan.cached[r] = hits
            missing = [c for c in unchanged if c not in hits]
            if missing:
                plan.wanted[r] = (new_key, missing)
            for c in toast:
                if c not in unchanged:
                    entry[c] = (sigs[c], values[c][r])
            for c in missing:
                entry.pop(c, None)
            if old_key != new_key:
                self.cache.pop(t.relid, old_key)
            self.cache.put(t.relid, new_key, entry)

    def _fetch(self, req: _Request) -> tuple[dict[Key, int], dict[str, list[bytes | None]], list[bool]] | None:
        """One query for the table: the requested columns' output text for each distinct key, in key order."""
        t = req.table
        cat = self.catalog(t)
        keys = list(t.key_names)
        cols = [c for c in req.cols if c in cat]
        if not cols or any(k not in cat for k in keys):
            return None
        n = len(req.keys)
        alias = ", ".join(["i"] + [f"k{j}" for j in range(len(keys))])
        arrays = ", ".join(f"${j + 1}::{'int4' if j == 0 else 'text'}[]" for j in range(len(keys) + 1))
        on = " AND ".join(f"t.{quote_ident(k)} = u.k{j}::{cat[k].sql_type}" for j, k in enumerate(keys))
        sql = (f"SELECT u.i, {', '.join(f't.{quote_ident(c)}' for c in cols)}"
               f" FROM unnest({arrays}) AS u({alias})"
               f" JOIN {quote_ident(t.schema)}.{quote_ident(t.name)} AS t ON {on}")
        params = [f"{{{','.join(map(str, range(n)))}}}".encode()]
        params += [_array_text([k[j] for k in req.keys]) for j in range(len(keys))]
        self.stats["queries"] += 1
        try:
            result = self._query(sql, params, raw=True)
        except psycopg.Error as exc:
            self._error(t, exc)
            return None
        texts: dict[str, list[bytes | None]] = {c: [None] * n for c in cols}
        found = [False] * n
        for row in result:
            i = int(row[0])
            found[i] = True
            for c, v in zip(cols, row[1:], strict=True):
                texts[c][i] = v
        return req.keys, texts, found

    def _merge(self, plan: _Plan, fetched: Any) -> TableChanges:
        t, rows = plan.seg.table, plan.seg.rows
        n = len(rows)
        keys, texts, found = fetched if fetched is not None else ({}, {}, [])
        filled: dict[int, set[str]] = {}
        arrays, fields = list(rows.columns), list(rows.schema)
        cat = self.catalog(t) if texts else {}
        for ci, name in enumerate(rows.schema.names):
            orig = rows.column(ci)
            cache_rows = [r for r, v in plan.cached.items() if name in v]
            src_rows = [r for r, (k, cols) in plan.wanted.items()
                        if name in cols and name in texts and found[keys[k]]]
            if not cache_rows and not src_rows:
                continue
            parts, idx = [orig], np.arange(n, dtype=np.int64)
            try:
                if cache_rows:
                    parts.append(_from_py([plan.cached[r][name] for r in cache_rows], orig.type))
                    idx[cache_rows] = n + np.arange(len(cache_rows))
                if src_rows:
                    # a string column (text, or a numeric batch holding NaN) takes the text as it is
                    ct = pgtypes.ColumnType(t.column(name).type_name) if orig.type == pa.string() else cat[name].ctype
                    new = pgtypes.decode_column(ct, texts[name])
                    unified = _unify(orig, new)
                    if unified is None:
                        raise ValueError(f"{new.type} does not fit {orig.type}")
                    orig, new = unified
                    parts = [orig] + [p.cast(orig.type) for p in parts[1:]] + [new]
                    idx[src_rows] = n + len(cache_rows) + np.array([keys[plan.wanted[r][0]] for r in src_rows])
            except (ValueError, KeyError, *_ARROW_ERRORS) as exc:
                log.warning("toast: cannot fill %s.%s (%s); its unchanged values stay unchanged", t.qualified, name,
                            exc)
                continue
            arrays[ci] = pa.concat_arrays(parts).take(pa.array(idx))
            fields[ci] = pa.field(name, arrays[ci].type, fields[ci].nullable)
            for r in cache_rows + src_rows:
                filled.setdefault(r, set()).add(name)
        if not filled:
            return plan.seg
        unchanged = [u if r not in filled or not u else ([c for c in u if c not in filled[r]] or None)
                     for r, u in enumerate(plan.unchanged)]
        self.stats["filled"] += sum(1 for r in filled if plan.unchanged[r] and not unchanged[r])
        ui = rows.schema.get_field_index(ch.UNCHANGED_COL)
        arrays[ui] = pa.array(unchanged, pa.list_(pa.string()))
        out = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, metadata=rows.schema.metadata))
        if self.cache is not None and plan.wanted:
            self._remember(t, out, plan, filled)
        return TableChanges(t, out)

    def _remember(self, t: TableSchema, rows: pa.RecordBatch, plan: _Plan, filled: dict[int, set[str]]) -> None:
        """Reselected values fill the gaps of the cache entries (never over a value the stream carried later)."""
        assert self.cache is not None
        for r, (key, cols) in plan.wanted.items():
            for c in cols:
                if c in filled.get(r, ()):
                    col = rows.column(c)
                    self.cache.fill(t.relid, key, c, (self._sig(t, c, col.type), _to_py(col.slice(r, 1))[0]))

    def snapshot(self) -> Any:
        return self.cache.snapshot() if self.cache is not None else None


class _ToastLogic(op.StatefulBatchLogic):
    def __init__(self, rehydrator: Rehydrator):
        self.rehydrator = rehydrator

    def on_batch(self, values: list[ChangeBatch]) -> tuple[list[ChangeBatch], bool]:
        return [self.rehydrator.process(b) for b in values], op.StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[ChangeBatch], bool]:
        self.rehydrator.close()
        return [], op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        return self.rehydrator.snapshot()


def toast_step(changes: Stream, spec: Any) -> Stream:
    """``changes`` (``(flow_id, ChangeBatch)`` items) with unchanged TOAST values filled per ``toast_fetch``."""
    opts = spec.source_options()
    if opts.toast_fetch == "off":
        return changes

    def build(state: Any) -> _ToastLogic:
        if opts.aws_rds_iam:  # this worker process may not hold the source partition that registered it

            register(opts, spec.id)
        return _ToastLogic(Rehydrator(opts.dsn, opts.toast_fetch, opts.toast_cache_size, spec.id, state))

    return op.stateful_batch("toast", changes, build)
