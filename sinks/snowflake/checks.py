"""The Snowflake destination's free preflight check (:mod:`dataflows.preflight`): the DSN parses; nothing connects."""

from __future__ import annotations

from sinks.snowflake.dsn import DsnError, parse_dsn
from sinks.snowflake.options import SnowflakeDestinationOptions
from wallaby.core.errors import FieldProblem
from wallaby.core.options import join_path
from wallaby.core.spec import Endpoint


def check_snowflake_dsn(i: int, dest: Endpoint | None, opts: SnowflakeDestinationOptions) -> list[FieldProblem]:
    """The ``dsn`` is ``user[:password]@account/database[/schema][?param=value&...]`` (the message never holds the
    password)."""
    try:
        parse_dsn(opts.dsn)
    except DsnError as exc:
        return [FieldProblem(join_path("destinations", i, "options", "dsn"), f"Snowflake dsn: {exc}")]
    return []


__all__ = ["check_snowflake_dsn"]
