"""The set-based SQL that applies an epoch's changes of one table to DuckDB (see sinks/duckdb.py for the design).

Each function gets the connection, the quoted target table, the epoch's changes registered as ``__wallaby_src``
(``src``, with ``__seq`` in WAL order), the source columns and the target's columns and types.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from wallaby.core.changes import BEFORE_PREFIX, OP_COL, OP_DELETE, OP_READ, UNCHANGED_COL, Column

APPEND_COLS = (("__op", "VARCHAR"), ("__lsn", "UBIGINT"), ("__ord", "UBIGINT"), ("__ts", "TIMESTAMPTZ"))
SEQ_COL = "__seq"


def q(ident: str) -> str:
    """Quote a DuckDB identifier."""
    return '"' + ident.replace('"', '""') + '"'


def lit(text: str) -> str:
    """A DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(slots=True)
class DestTable:
    columns: dict[str, str]  # name -> DuckDB type, in table order


class ApplyError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class RetypeError(ApplyError):
    """A column's values do not convert to the type the source changed it to."""

    def __init__(self, message: str, column: str):
        super().__init__(message)
        self.column = column


# --------------------------------------------------------------------------- target mode, keyed


def apply_keyed(
    con: duckdb.DuckDBPyConnection, qt: str, src: pa.Table, columns: dict[str, Column], dest: DestTable,
    keys: tuple[str, ...], reads_once: bool = False, fresh: bool = False,
) -> None:
    """``reads_once``: read rows come from one snapshot (each key once; see ``SnapshotMark.consistent``).
    ``fresh``: the target holds no row these changes could match (the writer knows it: see
    ``DuckDBWriter._still_fresh``), so read rows are appended without looking for their keys."""
    T = dest.columns
    for k in keys:
        if k not in columns:
            raise ApplyError(f"key column {k!r} is missing from the changes")
    names = list(columns)
    has_before = src.schema.get_field_index(BEFORE_PREFIX + keys[0]) >= 0
    unchanged = unchanged_names(src) & set(names)
    extra = [c for c in T if c not in columns]

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

    def cast(expr: str, c: str) -> str:
        return f"CAST({expr} AS {T[c]})"

    key_list = ", ".join(q(k) for k in keys)
    ops = set(pc.unique(src.column(OP_COL)).to_pylist())
    if ops == {"insert"} or (ops == {OP_READ} and reads_once):
        # only inserts, or only reads of one snapshot: keys are unique within the epoch (a second insert needs a
        # delete in between; a snapshot reads each row once)
        if not (fresh and ops == {OP_READ}):
            match_s = " AND ".join(f"t.{q(k)} = {cast('s.' + q(k), k)}" for k in keys)
            con.execute(f"DELETE FROM {qt} AS t USING __wallaby_src AS s WHERE {match_s}")  # an insert upserts
        sel = ", ".join(cast(q(c), c) for c in names)
        con.execute(f"INSERT INTO {qt} ({', '.join(q(c) for c in names)}) SELECT {sel} FROM __wallaby_src")
        return
    key_change = False
    if (
        has_before
        and pc.any(
            pc.and_(pc.equal(src.column(OP_COL), "update"), pc.is_valid(src.column(BEFORE_PREFIX + keys[0])))
        ).as_py()
    ):
        differs = " OR ".join(f"{before(k)} IS DISTINCT FROM {newkey(k)}" for k in keys)
        key_change = bool(
            con.execute(
                f"SELECT count(*) FROM __wallaby_src WHERE {OP_COL} = 'update' AND {before(keys[0])} IS NOT NULL"
                f" AND ({differs})"
            ).fetchone()[0]
        )

    # 1. the final mention of every touched key
    mention = ", ".join(
        f"{cast(f'CASE WHEN {OP_COL} = {lit(OP_DELETE)} THEN {oldkey(k)} ELSE {newkey(k)} END', k)} AS {q(k)}"
        for k in keys
    )
    mentions = f"SELECT {SEQ_COL}, {OP_COL} <> 'delete' AS __set, {mention} FROM __wallaby_src"
    if key_change:
        olds = ", ".join(f"{cast(oldkey(k), k)} AS {q(k)}" for k in keys)
        differs = " OR ".join(f"{before(k)} IS DISTINCT FROM {newkey(k)}" for k in keys)
        mentions += (
            f" UNION ALL SELECT {SEQ_COL}, false, {olds} FROM __wallaby_src WHERE {OP_COL} = 'update'"
            f" AND {before(keys[0])} IS NOT NULL AND ({differs})"
        )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE __wallaby_f AS SELECT {key_list}, max({SEQ_COL}) AS {SEQ_COL},"
        f" arg_max(__set, {SEQ_COL}) AS __set FROM ({mentions}) GROUP BY {key_list}"
    )
    match_f = " AND ".join(f"t.{q(k)} = f.{q(k)}" for k in keys)
    resolve = bool(unchanged - set(keys)) or bool(extra)

    if not resolve:
        con.execute(f"DELETE FROM {qt} AS t USING __wallaby_f AS f WHERE {match_f}")
        sel = ", ".join(cast(newkey(c, "s.") if c in keys else f"s.{q(c)}", c) for c in names)
        con.execute(
            f"INSERT INTO {qt} ({', '.join(q(c) for c in names)}) SELECT {sel} FROM __wallaby_src AS s"
            f" JOIN __wallaby_f AS f ON f.{SEQ_COL} = s.{SEQ_COL} WHERE f.__set"
        )
        con.execute("DROP TABLE __wallaby_f")
        return

    # 2. resolve unchanged TOAST values and target-only columns per row identity
    toast = [c for c in names if c in unchanged and c not in keys]
    aggs = [f"bool_or(s.{OP_COL} IN ('insert', 'read')) AS __ins"]
    aggs += [
        f"arg_max({{'v': s.{q(c)}}}, s.{SEQ_COL}) FILTER (WHERE NOT {unch(c, 's.')}) AS {q('__r.' + c)}"
        for c in toast
    ]
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
            SELECT {SEQ_COL}, {SEQ_COL} FROM __wallaby_src WHERE {OP_COL} IN ('insert', 'read')"""
        )
        for _ in range(64):
            moved = con.execute(
                f"UPDATE __wallaby_c SET __anc = p.__anc FROM __wallaby_c AS p"
                f" WHERE __wallaby_c.__anc = p.{SEQ_COL} AND p.__anc <> p.{SEQ_COL}"
            ).fetchone()[0]
            if not moved:
                break
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE __wallaby_r AS SELECT c.__anc, {', '.join(aggs)}"
            f" FROM __wallaby_src AS s JOIN __wallaby_c AS c ON c.{SEQ_COL} = s.{SEQ_COL} GROUP BY c.__anc"
        )
        rootkey = " AND ".join(f"t.{q(k)} = {cast(oldkey(k, 'rs.'), k)}" for k in keys)
        joins = (
            f" JOIN __wallaby_c AS c ON c.{SEQ_COL} = f.{SEQ_COL}"
            f" JOIN __wallaby_r AS r ON r.__anc = c.__anc"
            f" JOIN __wallaby_src AS rs ON rs.{SEQ_COL} = c.__anc"
            f" LEFT JOIN {qt} AS t ON {rootkey}"
        )
    else:
        newkeys = ", ".join(f"{cast(newkey(k, 's.'), k)} AS {q(k)}" for k in keys)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE __wallaby_r AS SELECT {newkeys}, {', '.join(aggs)}"
            f" FROM __wallaby_src AS s WHERE s.{OP_COL} <> 'delete' GROUP BY ALL"
        )
        match_r = " AND ".join(f"r.{q(k)} = f.{q(k)}" for k in keys)
        joins = f" JOIN __wallaby_r AS r ON {match_r} LEFT JOIN {qt} AS t ON {match_f}"
    sel = []
    for c in names:
        if c in keys:
            sel.append(f"{cast(newkey(c, 's.'), c)} AS {q(c)}")
        elif c in toast:
            rc = f"r.{q('__r.' + c)}"
            sel.append(
                f"CASE WHEN {rc} IS NOT NULL THEN {cast(rc + '.v', c)} WHEN NOT r.__ins THEN t.{q(c)} END AS {q(c)}"
            )
        else:
            sel.append(f"{cast('s.' + q(c), c)} AS {q(c)}")
    # (the target row only counts when the identity did not start with an insert in this epoch; a
    # condition on r.__ins inside the LEFT JOIN would turn DuckDB's hash join into a nested loop)
    sel += [f"CASE WHEN NOT r.__ins THEN t.{q(c)} END AS {q(c)}" for c in extra]
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE __wallaby_fin AS SELECT {', '.join(sel)} FROM __wallaby_f AS f"
        f" JOIN __wallaby_src AS s ON s.{SEQ_COL} = f.{SEQ_COL}{joins} WHERE f.__set"
    )
    con.execute(f"DELETE FROM {qt} AS t USING __wallaby_f AS f WHERE {match_f}")
    all_cols = ", ".join(q(c) for c in [*names, *extra])
    con.execute(f"INSERT INTO {qt} ({all_cols}) SELECT {all_cols} FROM __wallaby_fin")
    for tmp in ("__wallaby_f", "__wallaby_r", "__wallaby_fin", "__wallaby_c"):
        con.execute(f"DROP TABLE IF EXISTS {tmp}")


def unchanged_names(src: pa.Table) -> set[str]:
    col = src.column(UNCHANGED_COL)
    if col.null_count == len(col):
        return set()
    flat = pc.list_flatten(col)
    return {v for v in pc.unique(flat).to_pylist() if v is not None}


# --------------------------------------------------------------------------- target mode, no key


def apply_keyless(
    con: duckdb.DuckDBPyConnection, qt: str, src: pa.Table, columns: dict[str, Column], dest: DestTable
) -> None:
    T = dest.columns
    names = list(columns)
    has_before = src.schema.get_field_index(BEFORE_PREFIX + names[0]) >= 0
    unchanged = unchanged_names(src) & set(names)
    cols = ", ".join(q(c) for c in names)

    def cast(expr: str, c: str) -> str:
        return f"CAST({expr} AS {T[c]})"

    ops = set(pc.unique(src.column(OP_COL)).to_pylist())
    if ops <= {"insert", "read"}:
        sel = ", ".join(cast(q(c), c) for c in names)
        con.execute(f"INSERT INTO {qt} ({cols}) SELECT {sel} FROM __wallaby_src")
        return
    if not has_before:
        raise ApplyError(
            "updates or deletes without a before image on a table without a replica-identity key; set "
            "REPLICA IDENTITY FULL (or add a primary key) on the source table"
        )

    def after(c: str) -> str:
        if c in unchanged:
            return (
                f"CASE WHEN coalesce(list_contains({UNCHANGED_COL}, {lit(c)}), false)"
                f" THEN {q(BEFORE_PREFIX + c)} ELSE {q(c)} END"
            )
        return q(c)

    adds = ", ".join(f"{cast(after(c), c)} AS {q(c)}" for c in names)
    dels = ", ".join(f"{cast(q(BEFORE_PREFIX + c), c)} AS {q(c)}" for c in names)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE __wallaby_d AS
        SELECT {cols}, sum(__w)::BIGINT AS __n FROM (
            SELECT {adds}, 1 AS __w FROM __wallaby_src WHERE {OP_COL} <> 'delete'
            UNION ALL
            SELECT {dels}, -1 AS __w FROM __wallaby_src WHERE {OP_COL} IN ('update', 'delete')
        ) GROUP BY {cols} HAVING sum(__w) <> 0"""
    )
    match = " AND ".join(f"t.{q(c)} IS NOT DISTINCT FROM d.{q(c)}" for c in names)
    con.execute(
        f"""DELETE FROM {qt} WHERE rowid IN (
            SELECT __rid FROM (
                SELECT t.rowid AS __rid, d.__n, row_number() OVER (PARTITION BY d.__g ORDER BY t.rowid) AS __rn
                FROM {qt} AS t JOIN (SELECT *, row_number() OVER () AS __g FROM __wallaby_d WHERE __n < 0) AS d
                ON {match}
            ) WHERE __rn <= -__n)"""
    )
    con.execute(
        f"INSERT INTO {qt} ({cols}) SELECT {cols} FROM"
        f" (SELECT {cols}, unnest(range(__n)) FROM __wallaby_d WHERE __n > 0)"
    )
    con.execute("DROP TABLE __wallaby_d")


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
