"""The tables of whole schemas, for ``wallaby-worker -mode backfill -schemas a,b`` (the Go worker's ``-schemas``).

The Go worker backfills every base table of the schemas. Here a backfill reads the tables of the flow's publication
(what the stream then carries on), so a schema stands for its tables in the publication; when the publication does
not exist yet (the worker creates it, ``ensure_publication``), for its tables in the source. A schema the source does
not have, or one with no table to backfill, is an error naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg

from sources.postgres.connection import connect
from sources.postgres.snapshot import publication_tables
from wallaby.core.errors import ConfigError, FieldProblem
from wallaby.core.options import did_you_mean

log = logging.getLogger("wallaby.backfill")

_SCHEMAS = ("SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'"
            " ORDER BY 1")
_TABLES = ("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
           " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1")


def missing_schemas(conn: psycopg.Connection, schemas: Sequence[str], field: str) -> list[FieldProblem]:
    """A problem for each of ``schemas`` the database does not have (with the schemas it has)."""
    have = [r[0] for r in conn.execute(_SCHEMAS).fetchall()]
    return [FieldProblem(field, f"schema {s!r} does not exist in the flow's source database"
                                f"{did_you_mean(s, have) or ' (its schemas: ' + (', '.join(have) or 'none') + ')'}")
            for s in schemas if s not in have and not conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (s,)).fetchone()]


def schema_tables(dsn: str, publication: str, schemas: Sequence[str], *, field: str = "-schemas",
                  flow_id: str = "") -> list[str]:
    """Every table of ``schemas`` to backfill (module docstring), ``schema.table``, sorted."""
    wanted = list(dict.fromkeys(s.strip() for s in schemas if s.strip()))
    with connect(dsn, application_name=f"wallaby-backfill:{flow_id}") as conn:
        problems = missing_schemas(conn, wanted, field)
        if problems:
            raise ConfigError("wallaby-worker", problems)
        in_source = [r[0] for r in conn.execute(_TABLES, (wanted,)).fetchall()]
        published = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
        if published:
            tables = [t for t in publication_tables(conn, publication) if t.split(".", 1)[0] in wanted]
            where = f"in the flow's publication {publication!r}"
        else:
            tables, where = in_source, "in the source (the publication is not made yet)"
    empty = [s for s in wanted if not any(t.split(".", 1)[0] == s for t in tables)]
    if empty:
        fix = f"; add them (wallaby-admin publication sync -flow-id {flow_id} -schemas {','.join(empty)})" \
            if published else ""
        raise ConfigError("wallaby-worker", [FieldProblem(field, f"schema {s!r} has no table {where}{fix} or leave"
                                                                 " it out") for s in empty])
    left_out = sorted(set(in_source) - set(tables))
    if left_out:
        log.info("flow %s: -schemas %s: not in publication %s, so not backfilled: %s", flow_id, ",".join(wanted),
                 publication, ", ".join(left_out), extra={"flow": flow_id})
    return sorted(tables)


__all__ = ["missing_schemas", "schema_tables"]
