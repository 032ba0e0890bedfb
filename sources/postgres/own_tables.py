"""wallaby's own tables in a source database, left out of what a flow carries.

wallaby keeps bookkeeping in the databases it reads: the source-state table (``state_schema``, default
``wallaby``), the backfill state (``snapshot_state_schema``), the pgstream destination's tables and a Postgres flow
store's tables (schema ``wallaby``). A publication of all tables (what the source creates when neither
``publication_tables`` nor ``publication_schemas`` is set) publishes them too, so without this their changes would
reach the destinations as if they were the user's data, and a pgstream destination writing into the database it
reads would feed its own messages back to itself, one epoch after another.

:func:`own_table` tells them: a table in one of those schemas is left out of the stream and of a backfill's default
tables, unless the flow names it (``publication_tables``) or its schema (``publication_schemas``). The heartbeat
table (``heartbeat_table``) is not left out: its rows reaching the destinations when it is published is the
documented way to see the heartbeat there (sources/postgres/heartbeat.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sources.postgres.setup import split_table

# The schema wallaby's fixed-name tables live in (pgstream's, the flow store's), besides the configured ones.
OWN_SCHEMA = "wallaby"


def own_table(opts: Any) -> Callable[[str, str], bool]:
    """A predicate over (schema, table): True for a table of wallaby's own the flow ``opts`` (its source options)
    leaves out (module docstring)."""
    schemas = {OWN_SCHEMA, opts.state_schema, opts.snapshot_state_schema} - set(opts.publication_schemas or ())
    named = {split_table(t) for t in opts.publication_tables or ()}
    heartbeat = split_table(opts.heartbeat_table) if opts.heartbeat_table else None

    def left_out(schema: str, table: str) -> bool:
        return schema in schemas and (schema, table) not in named and (schema, table) != heartbeat

    return left_out


__all__ = ["OWN_SCHEMA", "own_table"]
