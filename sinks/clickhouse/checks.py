"""The ClickHouse destination's free preflight check (:mod:`dataflows.preflight`): the DSN parses; nothing
connects."""

from __future__ import annotations

from sinks.clickhouse.dsn import DsnError, parse_dsn
from sinks.clickhouse.options import ClickHouseDestinationOptions
from wallaby.core.errors import FieldProblem
from wallaby.core.options import join_path
from wallaby.core.spec import Endpoint


def check_clickhouse_dsn(i: int, dest: Endpoint | None, opts: ClickHouseDestinationOptions) -> list[FieldProblem]:
    """The ``dsn`` is ``http[s]://user[:password]@host[:port][/database][?setting=value&...]`` (the message never
    holds the password)."""
    try:
        parse_dsn(opts.dsn)
    except DsnError as exc:
        return [FieldProblem(join_path("destinations", i, "options", "dsn"), f"ClickHouse dsn: {exc}")]
    return []


__all__ = ["check_clickhouse_dsn"]
