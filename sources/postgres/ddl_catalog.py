"""The DDL catalog scan (``WALLABY_DDL_CATALOG_ENABLED``): schema changes found by reading the source's catalog
every ``WALLABY_DDL_CATALOG_INTERVAL`` (30s), for sources without wallaby's DDL event trigger.

What the Go WALlaby's ``WALLABY_DDL_CATALOG_*`` do, for a flow: a streaming worker (``wallaby-worker``, local or a
Kubernetes Job) reads the columns of every table of ``WALLABY_DDL_CATALOG_SCHEMAS`` (default ``public``) in its
flow's source database (``pg_class`` / ``pg_attribute``: name, ``format_type``, NOT NULL) once at start, as the
baseline, then again each interval, and records each difference as a DDL event of the flow in the flow store, as
the DDL gate records the changes it meets (``wallaby-admin ddl list -flow-id F``). The statements are what the
change amounts to, not the text that made it (the catalog does not keep that)::

    CREATE TABLE public.t (id integer NOT NULL, note text)   -- a table that appeared
    DROP TABLE public.t
    ALTER TABLE public.t ADD COLUMN c text                   -- also DROP COLUMN, ALTER COLUMN c TYPE bigint,
                                                             -- ALTER COLUMN c SET NOT NULL / DROP NOT NULL

An event is stored ``approved`` when the flow's DDL policy auto-approves (``auto_approve``, else
``WALLABY_DDL_AUTO_APPROVE``, default true), else ``pending``, at the source's WAL position when it was seen
(``lsn``; ``position`` ``catalog:<lsn>``), with ``plan_json`` ``{"source": "catalog", ...}`` saying what changed.
These events are records: what the flow does with the change is still decided by its DDL gate when the change
reaches the stream (which records its own event at the change's position), so approving a catalog event does not
release a held flow. The baseline lives in the worker: changes made while no worker of the flow runs are not seen
by the scan (the stream still meets them). A failed scan is logged (naming the flow) and tried again next interval;
it never stops the flow.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from sources.postgres.connection import connect, quote_ident
from sources.postgres.schema_tables import missing_schemas
from wallaby.core.errors import ConfigError, redact_dsn
from wallaby.state.flowstore import DDLEvent, FlowStore

log = logging.getLogger("wallaby.ddl")

POSITION_PREFIX = "catalog:"
_COLUMNS_SQL = (
    "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
    " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') ORDER BY 1, 2, a.attnum")


_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")
# reserved words a column or table may still be named (quoted); the statements are for people to read
_RESERVED_WORDS = ("all analyse analyze and any array as asc asymmetric both case cast check collate column"
                   " constraint create current_catalog current_date current_role current_time current_timestamp"
                   " current_user default deferrable desc distinct do else end except false fetch for foreign"
                   " from grant group having in initially intersect into lateral leading limit localtime"
                   " localtimestamp not null offset on only or order placing primary references returning select"
                   " session_user some symmetric table then to trailing true union unique user using variadic"
                   " when where window with")
_RESERVED = frozenset(_RESERVED_WORDS.split())


def ident(name: str) -> str:
    """``name`` as SQL writes it: bare when it can be, else double-quoted (as Postgres's ``quote_ident``)."""
    return name if _PLAIN.fullmatch(name) and name not in _RESERVED else quote_ident(name)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool

    def sql(self) -> str:
        return f"{ident(self.name)} {self.type}{' NOT NULL' if self.not_null else ''}"


Catalog = dict[str, tuple[Column, ...]]  # "schema.table" -> its columns in attribute order


@dataclass(frozen=True)
class Change:
    table: str
    statement: str
    kind: str  # create_table, drop_table, add_column, drop_column, alter_type, set_not_null, drop_not_null
    column: str = ""


def read_catalog(conn: psycopg.Connection, schemas: Sequence[str]) -> Catalog:
    """The columns of every table (plain or partitioned) of ``schemas`` now."""
    tables: dict[str, list[Column]] = {}
    for schema, table, column, type_, not_null in conn.execute(_COLUMNS_SQL, (list(schemas),)).fetchall():
        tables.setdefault(f"{schema}.{table}", []).append(Column(column, type_, bool(not_null)))
    return {t: tuple(cols) for t, cols in tables.items()}


def _qualified(table: str) -> str:
    schema, _, name = table.partition(".")
    return f"{ident(schema)}.{ident(name)}"


def changes(old: Catalog, new: Catalog) -> list[Change]:
    """What changed from ``old`` to ``new``, as statements (module docstring), tables in name order."""
    out: list[Change] = []
    for table in sorted(old.keys() | new.keys()):
        q = _qualified(table)
        if table not in old:
            out.append(Change(table, f"CREATE TABLE {q} ({', '.join(c.sql() for c in new[table])})", "create_table"))
            continue
        if table not in new:
            out.append(Change(table, f"DROP TABLE {q}", "drop_table"))
            continue
        before, after = {c.name: c for c in old[table]}, {c.name: c for c in new[table]}
        for c in old[table]:
            if c.name not in after:
                out.append(Change(table, f"ALTER TABLE {q} DROP COLUMN {ident(c.name)}", "drop_column",
                                  c.name))
        for c in new[table]:
            was = before.get(c.name)
            col = ident(c.name)
            if was is None:
                out.append(Change(table, f"ALTER TABLE {q} ADD COLUMN {c.sql()}", "add_column", c.name))
                continue
            if was.type != c.type:
                out.append(Change(table, f"ALTER TABLE {q} ALTER COLUMN {col} TYPE {c.type}", "alter_type", c.name))
            if was.not_null != c.not_null:
                verb = "SET" if c.not_null else "DROP"
                out.append(Change(table, f"ALTER TABLE {q} ALTER COLUMN {col} {verb} NOT NULL",
                                  f"{verb.lower()}_not_null", c.name))
    return out


class CatalogScan:
    """The scan of one flow's source (module docstring). ``store``: opens the checkpoint store whose ``flow_store``
    gets the events (called in the scan's own thread, at the first change: a store connection is not shared with the
    dataflow's)."""

    def __init__(self, flow_id: str, dsn: str, schemas: Sequence[str], store: Callable[[], Any], *,
                 auto_approve: bool = True, field: str = "WALLABY_DDL_CATALOG_SCHEMAS"):
        self.flow_id = flow_id
        self.dsn = dsn
        self.schemas = list(dict.fromkeys(schemas))
        self._open_store = store
        self._store: Any = None
        self.status = "approved" if auto_approve else "pending"
        self.field = field
        self.last: Catalog | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """A :class:`ConfigError` naming the schemas the source does not have (before the flow runs)."""
        with connect(self.dsn, application_name=f"wallaby-ddl-catalog:{self.flow_id}") as conn:
            problems = missing_schemas(conn, self.schemas, self.field)
        if problems:
            raise ConfigError("wallaby-worker", problems)

    def run_once(self) -> list[DDLEvent]:
        """Read the catalog; the first time it is the baseline (no event), then each change is one event."""
        with connect(self.dsn, application_name=f"wallaby-ddl-catalog:{self.flow_id}") as conn:
            now = read_catalog(conn, self.schemas)
            lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        if self.last is None:
            self.last = now
            log.info("flow %s: DDL catalog scan of %s: baseline of %d tables", self.flow_id,
                     ", ".join(self.schemas), len(now), extra={"flow": self.flow_id})
            return []
        found = changes(self.last, now)
        events = []
        if found:
            if self._store is None:
                self._store = self._open_store()
            flows: FlowStore = self._store.flow_store
            for ch in found:
                plan = {"source": "catalog", "change": ch.kind, "table": ch.table}
                if ch.column:
                    plan["column"] = ch.column
                events.append(flows.add_ddl(self.flow_id, ch.table, ch.statement, lsn, self.status,
                                                  json.dumps(plan), f"{POSITION_PREFIX}{lsn}"))
                log.info("flow %s: DDL catalog scan: %s (DDL event %d, %s)", self.flow_id, ch.statement,
                         events[-1].id, self.status, extra={"flow": self.flow_id})
        self.last = now
        return events

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a scan that fails is tried again; it never stops the flow
                log.warning("flow %s: DDL catalog scan failed (tried again in %gs): %s", self.flow_id, interval,
                            redact_dsn(str(exc) or type(exc).__name__), extra={"flow": self.flow_id})
            self._stop.wait(interval)

    def start(self, interval: float) -> CatalogScan:
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="wallaby-ddl-catalog",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._store is not None and (self._thread is None or not self._thread.is_alive()):
            self._store.close()


__all__ = ["Catalog", "CatalogScan", "Change", "Column", "changes", "read_catalog"]
