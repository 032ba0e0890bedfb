"""From pgoutput Relation messages to the table shapes and column decoders the batcher uses (:class:`TypeResolver`):
column types resolved in pg_type, a partition named after its root, the values a column added with a constant
default holds for older rows, whether the table was rewritten. The backfill's reader uses it too, so a snapshot's
rows have the stream's shapes."""

from __future__ import annotations

import dataclasses
import logging
import struct

import psycopg
import pyarrow as pa
from psycopg import pq

from sources.postgres import pgbinary, pgtypes
from sources.postgres.batcher import TableState
from sources.postgres.connection import connect, server_name
from sources.postgres.pgoutput import Relation, TypeInfo
from wallaby.core.changes import Column, TableSchema
from wallaby.core.errors import SourceError

log = logging.getLogger("wallaby.source")


class TypeResolver:
    """Builds TableStates from Relation messages, looking up unknown type OIDs in pg_type."""

    def __init__(self, dsn: str, resolve_types: bool, flow_id: str):
        self.dsn = dsn
        self.enabled = resolve_types
        self.flow_id = flow_id
        self.known: dict[int, pgtypes.PgType] = dict(pgtypes.BUILTIN_TYPES)
        self.utf8_valid = False  # set from the replication connection: text needs no UTF-8 validation
        self._conn: psycopg.Connection | None = None
        self.array_oids: dict[int, int] = {}  # type oid -> its array type's (binary_as_text)

    def _meta(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, application_name=f"wallaby-types:{self.flow_id}")
        return self._conn

    def __call__(self, rel: Relation, types: dict[int, TypeInfo], old: TableState | None) -> TableState:
        ndims: dict[str, int] = {}
        if self.enabled:
            unknown = {c.type_oid for c in rel.columns if c.type_oid not in self.known}
            try:
                if unknown:
                    self.known.update(pgtypes.resolve_types(self._meta(), unknown))
                if any(self.known.get(c.type_oid) and self.known[c.type_oid].elem_oid for c in rel.columns):
                    rows = self._meta().execute(
                        "SELECT attname, attndims FROM pg_attribute WHERE attrelid = %s AND attnum > 0",
                        (rel.relid,),
                    ).fetchall()
                    ndims = {name: max(int(d), 1) for name, d in rows}
            except psycopg.Error as exc:
                self._conn = None
                raise SourceError(f"could not resolve column types of {rel.namespace}.{rel.name}: {exc}",
                                  server=server_name(self.dsn)) from exc
        for oid, t in types.items():  # Type messages name custom types even without resolve_types
            self.known.setdefault(oid, pgtypes.PgType(oid=oid, name=t.name, schema=t.namespace, kind="b",
                                                      base_oid=0, elem_oid=0, extension=None))
        missing, root, node, after, in_rows, dropped, attnums = (
            self.catalog_facts(rel) if self.enabled else ({}, (rel.namespace, rel.name), None, False, set(), None, {}))
        columns, ctypes = [], []
        for c in rel.columns:
            ct = pgtypes.column_type(c.type_oid, c.typmod, self.known, ndims.get(c.name, 1))
            # built-in text-like types and enums/domains (their text is stored validated); not extension types,
            # whose output functions may write any bytes
            if self.utf8_valid and ct.family == "text" and ct.extension is None and not ct.type_name.startswith("oid:"):
                ct = dataclasses.replace(ct, utf8_valid=True)
            ctypes.append(ct)
            columns.append(Column(name=c.name, type_oid=c.type_oid, type_name=ct.type_name, typmod=ct.typmod,
                                  key=c.key, arrow_type=ct.arrow_type, base_type=ct.base_type,
                                  extension=ct.extension, missing=self._missing(ct, missing.get(c.name), rel),
                                  default_in_rows=c.name in in_rows))
        version = 1 if old is None else old.schema.version + 1
        namespace, name = root
        numbers = tuple(attnums.get(c.name, 0) for c in rel.columns) if attnums else None
        schema = TableSchema(rel.relid, namespace, name, tuple(columns), rel.replica_identity, version,
                             filenode=node, storage_after=after, dropped=dropped, attnums=numbers)
        if old is not None and old.schema.same_shape(schema) and not schema.storage_moved(old.schema):
            return old
        return TableState(schema, ctypes, self.binary_as_text)

    def binary_as_text(self, oid: int, raw: pa.Array) -> pa.Array:
        """Binary send-format values of type ``oid`` -> their text, as pgoutput sends it with binary off.

        One round trip: the values go as one array parameter in binary, the server runs the type's receive
        function on each, and the result comes back in text format (the type's output function, under the
        session settings the walsender uses), in order, NULLs kept. For types sources/postgres/pgbinary.py does
        not decode (its docstring)."""
        values = raw.cast(pa.binary()).to_pylist() if raw.type != pa.binary() else raw.to_pylist()
        if oid not in self.array_oids:
            log.info("type oid %d came in binary and has no binary decoder here: its values go through the server's"
                     " receive and output functions (a round trip per batch)", oid, extra={"flow": self.flow_id})
        try:
            conn = self._meta()
            array_oid = self.array_oids.get(oid)
            if array_oid is None:
                row = conn.execute("SELECT typarray::int8 FROM pg_type WHERE oid = %s", (oid,)).fetchone()
                array_oid = self.array_oids[oid] = int(row[0]) if row else 0
            if array_oid:  # one array parameter, one row per value
                res = _exec(conn, _RECV_TEXT_SQL, [array_send(oid, values)], [array_oid])
                texts = [res.get_value(r, 0) for r in range(res.ntuples)]
            else:  # an array type (no array type of its own): one parameter per value, one row of them
                texts = []
                for at in range(0, len(values), RECV_TEXT_PARAMS):
                    chunk = values[at:at + RECV_TEXT_PARAMS]
                    sql = ("SELECT " + ", ".join(f"${j + 1}" for j in range(len(chunk)))).encode()
                    res = _exec(conn, sql, chunk, [oid] * len(chunk))
                    texts += [res.get_value(0, j) for j in range(len(chunk))]
        except psycopg.Error as exc:
            self._conn = None
            raise SourceError(f"could not turn binary values of type oid {oid} into text: {exc}",
                              server=server_name(self.dsn)) from exc
        if len(texts) != len(values):
            raise SourceError(f"the server turned {len(values)} binary values of type oid {oid} into {len(texts)}",
                              server=server_name(self.dsn))
        return pa.array(texts, pa.binary())

    def catalog_facts(self, rel: Relation) -> tuple[dict[str, str], tuple[str, str], int | None, bool, set[str],
                                                    int | None, dict[str, int]]:
        """What the catalog says of a relation beyond its Relation message, in one query:

        - the text of each column's missing value (``pg_attribute.attmissingval``: what rows older than an ``ADD
          COLUMN ... DEFAULT <constant>`` hold for it), by column name, columns without one left out; read as the
          catalog is now: a table rewritten since then holds the values in its rows instead (docs/ddl.md);
        - the table its changes land in: a partition's root table (``pg_partition_root``), so a partitioned table is
          one destination table even when its publication publishes the partitions as themselves
          (``publish_via_partition_root`` false; said at start by ``setup.publication_notes``); else itself;
        - its storage (``pg_relation_filenode``), as it is now: a change of it is a rewrite
          (``TableSchema.rewritten_since``);
        - whether the catalog has moved past the message's shape (a column of the message gone or retyped, or a
          column added after its last): then the storage read may be that of a later rewrite;
        - the columns with a default (or a generation expression) and no missing value (``Column.default_in_rows``);
        - how many dropped columns it keeps (``TableSchema.dropped``, for ``storage_moved``);
        - each live column's number (``attnum``), by name (``TableSchema.attnums``, for ``readded``).
        """
        try:
            row = self._meta().execute(
                "SELECT pg_relation_filenode(c.oid), n.nspname, r.relname,"
                " (SELECT coalesce(json_object_agg(a.attname, (a.attmissingval::text::text[])[1]), '{}')"
                "  FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND a.atthasmissing"
                "  AND NOT a.attisdropped),"
                " (SELECT coalesce(json_agg(json_build_array(a.attname, a.atttypid, a.atttypmod, a.attgenerated <> '',"
                "  a.atthasdef AND NOT a.atthasmissing, a.attnum) ORDER BY a.attnum), '[]')"
                "  FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),"
                " (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attisdropped)"
                " FROM pg_class c LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid)"
                " LEFT JOIN pg_namespace n ON n.oid = r.relnamespace WHERE c.oid = %s", (rel.relid,)).fetchone()
        except psycopg.Error as exc:
            self._conn = None
            raise SourceError(f"could not read the catalog entry of {rel.namespace}.{rel.name}: {exc}",
                              server=server_name(self.dsn)) from exc
        if row is None:
            return {}, (rel.namespace, rel.name), None, False, set(), None, {}
        node, root_schema, root_name, missing, now, dropped = row
        root = (root_schema, root_name) if root_name is not None else (rel.namespace, rel.name)
        in_rows = {name for name, _oid, _mod, _gen, filled, _num in now if filled}
        attnums = {name: int(num) for name, *_, num in now}
        return dict(missing or {}), root, node, catalog_moved_on(rel, now), in_rows, int(dropped), attnums

    @staticmethod
    def _missing(ct: pgtypes.ColumnType, text: str | None, rel: Relation) -> pa.Array | None:
        if text is None:
            return None
        try:
            return pgtypes.decode_column(ct, [text.encode()])
        except ValueError:
            log.warning("%s.%s: its missing value %r does not decode as %s; rows older than the column get NULL in"
                        " the destinations", rel.namespace, rel.name, text, ct.type_name)
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def catalog_moved_on(rel: Relation, catalog: list) -> bool:
    """Whether the catalog's live columns (``[name, type oid, typmod, generated, ...]`` in attnum order) are past
    ``rel``'s shape: a column of the message is gone or has another type, or a plain column follows the message's
    last one (columns are added at the end). Columns the message may leave out (a publication's column list, a
    generated column a server does not publish) count only when they are added at the end and not generated."""
    at = {name: (i, oid, mod) for i, (name, oid, mod, *_) in enumerate(catalog)}
    last = -1
    for c in rel.columns:
        found = at.get(c.name)
        if found is None or (found[1], found[2]) != (c.type_oid, c.typmod):
            return True
        last = max(last, found[0])
    return any(not gen for _name, _oid, _mod, gen, *_ in catalog[last + 1:])


# Values per statement when a type has no array type to send them in (array types): well under the protocol's
# 65535 parameters; not measured (a path for arrays of types without a decoder, with binary on).
RECV_TEXT_PARAMS = 1000


def _exec(conn: psycopg.Connection, sql: bytes, values: list[bytes | None], oids: list[int]) -> pq.abc.PGresult:
    """One statement with binary parameters of the given types, result in text; psycopg's error on failure."""
    res = conn.pgconn.exec_params(sql, values, oids, [1] * len(values), 0)
    if res.status != pq.ExecStatus.TUPLES_OK:
        state = res.error_field(pq.DiagnosticField.SQLSTATE) or b"XX000"
        raise psycopg.errors.lookup(state.decode())(res.error_message.decode(errors="replace").strip())
    return res


# $1[i], not unnest($1): unnest would spread a composite's fields over columns
_RECV_TEXT_SQL = b"SELECT $1[i] FROM generate_subscripts($1, 1) AS i ORDER BY i"


def array_send(elem_oid: int, values: list[bytes | None]) -> bytes:
    """A 1-D array of ``elem_oid`` in array_send's format (what array_recv reads), from its elements' send bytes."""
    parts = [struct.pack(">iiIii", 1, int(any(v is None for v in values)), elem_oid, len(values), 1)]
    for v in values:
        parts.append(b"\xff\xff\xff\xff" if v is None else struct.pack(">i", len(v)) + v)
    return b"".join(parts)


# The published columns' types (a publication's column lists aside: a column left out is not sent at all).
_PUBLISHED_TYPES_SQL = """
SELECT DISTINCT a.atttypid::int8, a.atttypmod, greatest(a.attndims, 1)
FROM pg_publication_tables pt
JOIN pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE pt.pubname = ANY(%s)
"""


def binary_blockers(conn: psycopg.Connection, publications: list[str]) -> list[str]:
    """The names of the published columns' types sources/postgres/pgbinary.py cannot decode from binary (sorted,
    distinct): what keeps the source option ``binary=auto`` off."""
    rows = conn.execute(_PUBLISHED_TYPES_SQL, (publications,)).fetchall()
    known = dict(pgtypes.BUILTIN_TYPES)
    known.update(pgtypes.resolve_types(conn, {int(r[0]) for r in rows}))
    out = set()
    for oid, typmod, ndims in rows:
        ct = pgtypes.column_type(int(oid), int(typmod), known, int(ndims))
        if not pgbinary.decodes(ct):
            out.add(ct.type_name)
    return sorted(out)
