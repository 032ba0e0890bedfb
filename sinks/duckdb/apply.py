"""The set-based SQL that applies an epoch's changes of one table to DuckDB (see sinks/duckdb/writer.py for the
design): the shared epoch reduction (:mod:`sinks.sql.reduce`) run in the destination's own connection, then DuckDB's
delete + insert.

Each function gets the connection, the quoted target table, the epoch's changes registered as ``__wallaby_src``
(``src``, with ``__seq`` in WAL order), the source columns and the target's columns and types.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sinks.sql.engine import ApplyError, RetypeError
from sinks.sql.reduce import FROM, KEEP, SEQ_COL, VALUE, ReduceError, q, reduce_keyed, reduce_keyless
from wallaby.core.changes import BEFORE_PREFIX, OP_COL, OP_READ, Column

APPEND_COLS = (("__op", "VARCHAR"), ("__lsn", "UBIGINT"), ("__ord", "UBIGINT"), ("__ts", "TIMESTAMPTZ"))
__all__ = ["APPEND_COLS", "SEQ_COL", "ApplyError", "DestTable", "RetypeError", "apply_append", "apply_keyed",
           "apply_keyless", "q"]


@dataclass(slots=True)
class DestTable:
    columns: dict[str, str]  # name -> DuckDB type, in table order




# --------------------------------------------------------------------------- target mode, keyed


def apply_keyed(
    con: duckdb.DuckDBPyConnection, qt: str, src: pa.Table, columns: dict[str, Column], dest: DestTable,
    keys: tuple[str, ...], reads_once: bool = False, fresh: bool = False, absent: bool = False,
) -> None:
    """The epoch reduced by :func:`sinks.sql.reduce.reduce_keyed` in this connection (keys cast to the target's
    types), then every touched key deleted and the final rows inserted. ``reads_once``: read rows come from one
    snapshot (each key once; see ``SnapshotMark.consistent``). ``fresh``: the target holds no row these changes
    could match (the writer knows it: see ``DuckDBWriter._still_fresh``), so read rows are appended without looking
    for their keys. ``absent``: an epoch of inserts only whose keys the target cannot hold (all above its highest:
    ``DuckDBWriter._keys_absent``), appended without the delete that makes an insert an upsert."""
    T = dest.columns
    for k in keys:
        if k not in columns:
            raise ApplyError(f"key column {k!r} is missing from the changes")
    names = list(columns)

    def cast(expr: str, c: str) -> str:
        return f"CAST({expr} AS {T[c]})"

    ops = set(pc.unique(src.column(OP_COL)).to_pylist())
    if ops == {"insert"} or (ops == {OP_READ} and reads_once):
        # only inserts, or only reads of one snapshot: keys are unique within the epoch (a second insert needs a
        # delete in between; a snapshot reads each row once)
        if not (fresh and ops == {OP_READ}) and not (absent and ops == {"insert"}):
            match_s = " AND ".join(f"t.{q(k)} = {cast('s.' + q(k), k)}" for k in keys)
            con.execute(f"DELETE FROM {qt} AS t USING __wallaby_src AS s WHERE {match_s}")  # an insert upserts
        sel = ", ".join(cast(q(c), c) for c in names)
        con.execute(f"INSERT INTO {qt} ({', '.join(q(c) for c in names)}) SELECT {sel} FROM __wallaby_src")
        return
    try:
        red = reduce_keyed(con, src, columns, keys, list(T), cast)
    except ReduceError as exc:
        raise ApplyError(exc.message) from None
    match_f = " AND ".join(f"t.{q(k)} = f.{q(k)}" for k in keys)
    if not red.resolve:
        con.execute(f"DELETE FROM {qt} AS t USING __wallaby_f AS f WHERE {match_f}")
        sel = ", ".join(red.new_key(c, "s.") if c in keys else cast(f"s.{q(c)}", c) for c in names)
        con.execute(
            f"INSERT INTO {qt} ({', '.join(q(c) for c in names)}) SELECT {sel} FROM __wallaby_src AS s"
            f" JOIN __wallaby_f AS f ON f.{SEQ_COL} = s.{SEQ_COL} WHERE f.__set"
        )
        red.drop(con)
        return
    # the values the epoch does not carry come from the target, under the identity's key before the epoch (read
    # before the delete)
    sel = [f"CASE WHEN red.{q(KEEP + c)} THEN t.{q(c)} ELSE red.{q(VALUE + c)} END AS {q(c)}" if c in red.toast
           else f"red.{q(c)}" for c in names]
    sel += [f"CASE WHEN red.{q(KEEP + c)} THEN t.{q(c)} END AS {q(c)}" for c in red.extra]
    origin = " AND ".join(f"t.{q(k)} = red.{q(FROM + k)}" for k in keys)
    con.execute(f"CREATE OR REPLACE TEMP TABLE __wallaby_fin AS SELECT {', '.join(sel)} FROM __wallaby_red AS red"
                f" LEFT JOIN {qt} AS t ON {origin}")
    con.execute(f"DELETE FROM {qt} AS t USING __wallaby_f AS f WHERE {match_f}")
    all_cols = ", ".join(q(c) for c in [*names, *red.extra])
    con.execute(f"INSERT INTO {qt} ({all_cols}) SELECT {all_cols} FROM __wallaby_fin")
    con.execute("DROP TABLE __wallaby_fin")
    red.drop(con)


# --------------------------------------------------------------------------- target mode, no key


def apply_keyless(
    con: duckdb.DuckDBPyConnection, qt: str, src: pa.Table, columns: dict[str, Column], dest: DestTable
) -> None:
    """Inserts only: appended. Else the net multiset of :func:`sinks.sql.reduce.reduce_keyless`: surplus copies
    inserted, missing ones deleted by ``rowid`` from the rows matching ``IS NOT DISTINCT FROM`` on every column."""
    T = dest.columns
    names = list(columns)
    cols = ", ".join(q(c) for c in names)

    def cast(expr: str, c: str) -> str:
        return f"CAST({expr} AS {T[c]})"

    ops = set(pc.unique(src.column(OP_COL)).to_pylist())
    if ops <= {"insert", "read"}:
        sel = ", ".join(cast(q(c), c) for c in names)
        con.execute(f"INSERT INTO {qt} ({cols}) SELECT {sel} FROM __wallaby_src")
        return
    try:
        reduce_keyless(con, src, columns, cast)
    except ReduceError as exc:
        raise ApplyError(exc.message) from None
    match = " AND ".join(f"t.{q(c)} IS NOT DISTINCT FROM d.{q(c)}" for c in names)
    con.execute(
        f"""DELETE FROM {qt} WHERE rowid IN (
            SELECT __rid FROM (
                SELECT t.rowid AS __rid, d.__n, row_number() OVER (PARTITION BY d.__g ORDER BY t.rowid) AS __rn
                FROM {qt} AS t JOIN (SELECT *, row_number() OVER () AS __g FROM __wallaby_net WHERE __n < 0) AS d
                ON {match}
            ) WHERE __rn <= -__n)"""
    )
    con.execute(
        f"INSERT INTO {qt} ({cols}) SELECT {cols} FROM"
        f" (SELECT {cols}, unnest(range(__n)) FROM __wallaby_net WHERE __n > 0)"
    )
    con.execute("DROP TABLE __wallaby_net")


# --------------------------------------------------------------------------- append mode


def apply_append(
    con: duckdb.DuckDBPyConnection, qt: str, src: pa.Table, columns: dict[str, Column], dest: DestTable
) -> None:
    T = dest.columns
    names = list(columns)

    def value(c: str) -> str:
        if src.schema.get_field_index(BEFORE_PREFIX + c) >= 0:
            return f"CASE WHEN {OP_COL} = 'delete' THEN {q(BEFORE_PREFIX + c)} ELSE {q(c)} END"
        return q(c)

    meta = [c for c, _ in APPEND_COLS]
    sel = ", ".join([*(f"CAST({value(c)} AS {T[c]})" for c in names), *(q(c) for c in meta)])
    cols = ", ".join(q(c) for c in [*names, *meta])
    con.execute(f"INSERT INTO {qt} ({cols}) SELECT {sel} FROM __wallaby_src ORDER BY {SEQ_COL}")
