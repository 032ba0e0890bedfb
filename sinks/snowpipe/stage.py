"""Where a Snowpipe destination's files go (no driver imported: the preflight check uses it)."""

from __future__ import annotations

from sinks.snowpipe.options import SnowpipeDestinationOptions


def q(ident: str) -> str:
    """A quoted Snowflake identifier."""
    return '"' + ident.replace('"', '""') + '"'


class StageError(ValueError):
    pass


def _qualified(name: str) -> bool:
    """Whether a stage name (without its ``@``) names its schema: a ``.`` outside double quotes."""
    quoted = False
    for ch in name:
        if ch == '"':
            quoted = not quoted
        elif ch == "." and not quoted:
            return True
    return False


def stage_location(options: SnowpipeDestinationOptions, login_schema: str | None = None) -> str:
    """Where the files go: ``@stage[/stage_path]/``, or the table stage ``@"schema".%"table"`` (the spec's
    ``@%schema.table``, written as Snowflake spells a table stage). A stage name without a schema is taken in the
    DSN's schema (``login_schema``) and written with it: the writer's ``CREATE SCHEMA`` statements move the session's
    current schema. Without one, :class:`StageError`."""
    stage = (options.stage or "").strip()
    if stage:
        name = stage[1:] if stage.startswith("@") else stage
        if name.startswith("%") and _qualified(name):  # @%schema.table -> @schema.%table
            schema, _, table = name[1:].rpartition(".")
            name = f"{schema}.%{table}"
        elif not name.startswith("~") and not _qualified(name):
            if not login_schema:
                raise StageError(f"stage {stage!r} names no schema and the dsn names none: write it as"
                                 " schema.stage (the writer creates schemas, which moves the session's current"
                                 " schema)")
            name = f"{login_schema}.{name}"
        base = "@" + name.rstrip("/")
    else:
        base = f"@{q(options.schema_)}.%{q(options.table)}"
    path = (options.stage_path or "").strip().strip("/")
    return f"{base}/{path}/" if path else base


__all__ = ["StageError", "stage_location"]
