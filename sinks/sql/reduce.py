"""The epoch reduction every table-materializing destination shares: one epoch's changes of a table (one Arrow table,
``__seq`` in WAL order: :func:`sinks.sql.merge.merge_pending`) reduced to what the table must become. DuckDB computes
it: the destination's own connection for DuckDB and DuckLake (the changes registered as ``__wallaby_src``), a private
in-memory one for the warehouses, which then ship the result in bulk.

Keyed tables (:func:`reduce_keyed`)
    Each change *mentions* keys: inserts/updates the new key (a "set"), deletes the old key (an "unset"), an update
    that changes the key also unsets its old key. The final state of a key is decided by its last mention::

        __wallaby_f: k, max(__seq), arg_max(__set, __seq) FROM mentions GROUP BY k

    so the destination deletes every key of ``__wallaby_f`` and inserts the rows of the ``__set`` ones. When the
    epoch does not carry every value of those rows (an unchanged TOAST value never sent in the epoch, a column only
    the destination has), ``__wallaby_red`` holds the final rows with, per such column, ``__keep.<c>``: the value is
    the one the destination holds for the row's identity before the epoch, found under the key ``__from.<k>``
    (the identity's key before the epoch: row identities are followed across key changes by parent pointers, the
    latest earlier "set" of an update's old key, collapsed by pointer jumping). The latest value an identity was sent
    in the epoch wins (``arg_max({'v': c}, __seq) FILTER (WHERE c was sent)``); an identity that began with an
    insert in the epoch keeps nothing.

Tables without a key, or REPLICA IDENTITY FULL (:func:`reduce_keyless`)
    Rows are a multiset: each insert adds its row, each delete removes its before image, an update does both
    (unchanged TOAST values from the before image). ``__wallaby_net`` holds each distinct row with ``__n``, the net
    number of copies to add (> 0) or remove (< 0); since every delete in the WAL removes an existing row, the order
    inside the epoch does not change the result.

``cast(expr, column)`` turns a value into the destination's type in SQL (DuckDB's writer casts to its column types
here, so keys compare as stored); the warehouses pass values through and cast on their side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from wallaby.core.changes import BEFORE_PREFIX, OP_COL, OP_DELETE, UNCHANGED_COL, Column
from wallaby.core.sqltext import sql_string as lit  # a string literal

SEQ_COL = "__seq"
KEEP = "__keep."  # __keep.<c>: take the destination's value of c (keyed reduction)
FROM = "__from."  # __from.<k>: the key the destination holds the identity's row under before the epoch
VALUE = "__v."  # __v.<c>: the epoch's latest value of a column resolved per identity (NULL: keep, or none)

Cast = Callable[[str, str], str]


def _plain(expr: str, column: str) -> str:
    return expr


class ReduceError(Exception):
    """The changes cannot be reduced (a key column missing, updates without a before image on a keyless table)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def q(ident: str) -> str:
    """Quote an identifier (DuckDB, and standard SQL)."""
    return '"' + ident.replace('"', '""') + '"'


def unchanged_names(src: pa.Table) -> set[str]:
    """The columns some change of ``src`` left unchanged (TOAST values not sent)."""
    col = src.column(UNCHANGED_COL)
    if col.null_count == len(col):
        return set()
    flat = pc.list_flatten(col)
    return {v for v in pc.unique(flat).to_pylist() if v is not None}


@dataclass(slots=True)
class KeyedReduction:
    """What :func:`reduce_keyed` left in the connection: always ``__wallaby_f`` (the final mention of every touched
    key: the keys, ``__seq``, ``__set``); with :attr:`resolve`, ``__wallaby_red`` (the final rows: the keys, the
    values of :attr:`names` not in :attr:`toast`, ``__v.<c>`` and ``__keep.<c>`` for every column of :attr:`toast`
    and :attr:`extra`, ``__from.<k>`` for every key, ``__ins``)."""

    keys: tuple[str, ...]
    names: list[str]  # the source columns of the changes
    toast: list[str] = field(default_factory=list)  # non-key columns some change left unchanged
    extra: list[str] = field(default_factory=list)  # the destination's columns the changes do not have
    resolve: bool = False
    new_key: Callable[[str, str], str] = _plain  # (key column, relation prefix) -> the key after a change, cast

    @property
    def temp_tables(self) -> tuple[str, ...]:
        return ("__wallaby_f", "__wallaby_red", "__wallaby_c", "__wallaby_r")

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        for tmp in self.temp_tables:
            con.execute(f"DROP TABLE IF EXISTS {tmp}")


def reduce_keyed(con: duckdb.DuckDBPyConnection, src: pa.Table, columns: dict[str, Column], keys: tuple[str, ...],
                 dest_columns: list[str], cast: Cast = _plain) -> KeyedReduction:
    """Reduce the changes registered as ``__wallaby_src`` (``src``) of a keyed table (see the module docstring)."""
    for k in keys:
        if k not in columns:
            raise ReduceError(f"key column {k!r} is missing from the changes")
    names = list(columns)
    has_before = src.schema.get_field_index(BEFORE_PREFIX + keys[0]) >= 0
    unchanged = unchanged_names(src) & set(names)
    extra = [c for c in dest_columns if c not in columns]

    def unch(c: str, rel: str = "") -> str:
        return f"coalesce(list_contains({rel}{UNCHANGED_COL}, {lit(c)}), false)"

    def before(c: str, rel: str = "") -> str:
        return f"{rel}{q(BEFORE_PREFIX + c)}"

    def newkey(k: str, rel: str = "") -> str:  # the key after the change
        if k in unchanged and has_before:
            return f"CASE WHEN {unch(k, rel)} THEN {before(k, rel)} ELSE {rel}{q(k)} END"
        return f"{rel}{q(k)}"

    def oldkey(k: str, rel: str = "") -> str:  # the key before the change (updates, deletes)
        if has_before:
            return f"CASE WHEN {before(keys[0], rel)} IS NOT NULL THEN {before(k, rel)} ELSE {newkey(k, rel)} END"
        return newkey(k, rel)

    key_list = ", ".join(q(k) for k in keys)
    key_change = False
    if has_before and pc.any(
            pc.and_(pc.equal(src.column(OP_COL), "update"), pc.is_valid(src.column(BEFORE_PREFIX + keys[0])))).as_py():
        differs = " OR ".join(f"{before(k)} IS DISTINCT FROM {newkey(k)}" for k in keys)
        key_change = bool(con.execute(
            f"SELECT count(*) FROM __wallaby_src WHERE {OP_COL} = 'update' AND {before(keys[0])} IS NOT NULL"
            f" AND ({differs})").fetchone()[0])

    # 1. the final mention of every touched key
    mention = ", ".join(
        f"{cast(f'CASE WHEN {OP_COL} = {lit(OP_DELETE)} THEN {oldkey(k)} ELSE {newkey(k)} END', k)} AS {q(k)}"
        for k in keys)
    mentions = f"SELECT {SEQ_COL}, {OP_COL} <> 'delete' AS __set, {mention} FROM __wallaby_src"
    if key_change:
        olds = ", ".join(f"{cast(oldkey(k), k)} AS {q(k)}" for k in keys)
        differs = " OR ".join(f"{before(k)} IS DISTINCT FROM {newkey(k)}" for k in keys)
        mentions += (f" UNION ALL SELECT {SEQ_COL}, false, {olds} FROM __wallaby_src WHERE {OP_COL} = 'update'"
                     f" AND {before(keys[0])} IS NOT NULL AND ({differs})")
    con.execute(f"CREATE OR REPLACE TEMP TABLE __wallaby_f AS SELECT {key_list}, max({SEQ_COL}) AS {SEQ_COL},"
                f" arg_max(__set, {SEQ_COL}) AS __set FROM ({mentions}) GROUP BY {key_list}")
    toast = [c for c in names if c in unchanged and c not in keys]
    red = KeyedReduction(keys, names, toast, extra, resolve=bool(toast) or bool(extra),
                         new_key=lambda k, rel: cast(newkey(k, rel), k))
    if not red.resolve:
        return red

    # 2. the values the epoch does not carry, per row identity
    aggs = [f"bool_or(s.{OP_COL} IN ('insert', 'read')) AS __ins"]
    aggs += [f"arg_max({{'v': s.{q(c)}}}, s.{SEQ_COL}) FILTER (WHERE NOT {unch(c, 's.')}) AS {q('__r.' + c)}"
             for c in toast]
    if key_change:
        # parent of an update = latest earlier "set" of its old key; collapse chains by pointer jumping
        sets = ", ".join(f"{cast(newkey(k), k)} AS {q(k)}" for k in keys)
        olds = ", ".join(f"{cast(oldkey(k), k)} AS {q(k)}" for k in keys)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE __wallaby_c AS
            WITH mm AS (
                SELECT {SEQ_COL}, 1 AS __kind, {sets} FROM __wallaby_src WHERE {OP_COL} <> 'delete'
                UNION ALL
                SELECT {SEQ_COL}, 0 AS __kind, {olds} FROM __wallaby_src WHERE {OP_COL} = 'update'
            ), pp AS (
                SELECT {SEQ_COL}, __kind, max(CASE WHEN __kind = 1 THEN {SEQ_COL} END) OVER (
                    PARTITION BY {key_list} ORDER BY {SEQ_COL}, __kind
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS __prev
                FROM mm
            )
            SELECT {SEQ_COL}, coalesce(__prev, {SEQ_COL}) AS __anc FROM pp WHERE __kind = 0
            UNION ALL
            SELECT {SEQ_COL}, {SEQ_COL} FROM __wallaby_src WHERE {OP_COL} IN ('insert', 'read')""")
        for _ in range(64):
            moved = con.execute(
                f"UPDATE __wallaby_c SET __anc = p.__anc FROM __wallaby_c AS p"
                f" WHERE __wallaby_c.__anc = p.{SEQ_COL} AND p.__anc <> p.{SEQ_COL}").fetchone()[0]
            if not moved:
                break
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE __wallaby_r AS SELECT c.__anc, {', '.join(aggs)}"
            f" FROM __wallaby_src AS s JOIN __wallaby_c AS c ON c.{SEQ_COL} = s.{SEQ_COL} GROUP BY c.__anc")
        origin = [f"{cast(oldkey(k, 'rs.'), k)} AS {q(FROM + k)}" for k in keys]
        joins = (f" JOIN __wallaby_c AS c ON c.{SEQ_COL} = f.{SEQ_COL}"
                 f" JOIN __wallaby_r AS r ON r.__anc = c.__anc"
                 f" JOIN __wallaby_src AS rs ON rs.{SEQ_COL} = c.__anc")
    else:
        newkeys = ", ".join(f"{cast(newkey(k, 's.'), k)} AS {q(k)}" for k in keys)
        con.execute(f"CREATE OR REPLACE TEMP TABLE __wallaby_r AS SELECT {newkeys}, {', '.join(aggs)}"
                    f" FROM __wallaby_src AS s WHERE s.{OP_COL} <> 'delete' GROUP BY ALL")
        origin = [f"f.{q(k)} AS {q(FROM + k)}" for k in keys]
        joins = " JOIN __wallaby_r AS r ON " + " AND ".join(f"r.{q(k)} = f.{q(k)}" for k in keys)
    sel = []
    for c in names:
        if c in keys:
            sel.append(f"{cast(newkey(c, 's.'), c)} AS {q(c)}")
        elif c in toast:
            rc = f"r.{q('__r.' + c)}"
            sel.append(f"CASE WHEN {rc} IS NOT NULL THEN {cast(rc + '.v', c)} END AS {q(VALUE + c)}")
            sel.append(f"{rc} IS NULL AND NOT r.__ins AS {q(KEEP + c)}")
        else:
            sel.append(f"{cast('s.' + q(c), c)} AS {q(c)}")
    sel += [f"NOT r.__ins AS {q(KEEP + c)}" for c in extra]
    con.execute(f"CREATE OR REPLACE TEMP TABLE __wallaby_red AS SELECT {', '.join(sel)}, {', '.join(origin)},"
                f" r.__ins FROM __wallaby_f AS f JOIN __wallaby_src AS s ON s.{SEQ_COL} = f.{SEQ_COL}{joins}"
                f" WHERE f.__set")
    return red


def reduce_keyless(con: duckdb.DuckDBPyConnection, src: pa.Table, columns: dict[str, Column],
                   cast: Cast = _plain) -> None:
    """Reduce the changes registered as ``__wallaby_src`` (``src``) of a table without a key to ``__wallaby_net``
    (see the module docstring)."""
    names = list(columns)
    has_before = src.schema.get_field_index(BEFORE_PREFIX + names[0]) >= 0
    if not has_before:
        raise ReduceError(
            "updates or deletes without a before image on a table without a replica-identity key; set "
            "REPLICA IDENTITY FULL (or add a primary key) on the source table")
    unchanged = unchanged_names(src) & set(names)
    cols = ", ".join(q(c) for c in names)

    def after(c: str) -> str:
        if c in unchanged:
            return (f"CASE WHEN coalesce(list_contains({UNCHANGED_COL}, {lit(c)}), false)"
                    f" THEN {q(BEFORE_PREFIX + c)} ELSE {q(c)} END")
        return q(c)

    adds = ", ".join(f"{cast(after(c), c)} AS {q(c)}" for c in names)
    dels = ", ".join(f"{cast(q(BEFORE_PREFIX + c), c)} AS {q(c)}" for c in names)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE __wallaby_net AS
        SELECT {cols}, sum(__w)::BIGINT AS __n FROM (
            SELECT {adds}, 1 AS __w FROM __wallaby_src WHERE {OP_COL} <> 'delete'
            UNION ALL
            SELECT {dels}, -1 AS __w FROM __wallaby_src WHERE {OP_COL} IN ('update', 'delete')
        ) GROUP BY {cols} HAVING sum(__w) <> 0""")


__all__ = ["FROM", "KEEP", "SEQ_COL", "VALUE", "KeyedReduction", "ReduceError", "lit", "q", "reduce_keyed",
           "reduce_keyless", "unchanged_names"]
