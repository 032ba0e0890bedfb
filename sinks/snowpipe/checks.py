"""The Snowpipe destination's free preflight check (:mod:`dataflows.preflight`): the DSN parses and the stage can be
named in full; nothing connects."""

from __future__ import annotations

from sinks.snowflake.dsn import DsnError, parse_dsn
from sinks.snowpipe.options import SnowpipeDestinationOptions
from sinks.snowpipe.stage import StageError, stage_location
from wallaby.core.errors import FieldProblem
from wallaby.core.options import join_path
from wallaby.core.spec import Endpoint


def check_snowpipe(i: int, dest: Endpoint | None, opts: SnowpipeDestinationOptions) -> list[FieldProblem]:
    """The ``dsn`` is ``user[:password]@account/database[/schema][?...]`` (the message never holds the password),
    and a ``stage`` without a schema has the DSN's."""
    try:
        dsn = parse_dsn(opts.dsn)
    except DsnError as exc:
        return [FieldProblem(join_path("destinations", i, "options", "dsn"), f"Snowflake dsn: {exc}")]
    try:
        stage_location(opts, dsn.kwargs.get("schema"))
    except StageError as exc:
        return [FieldProblem(join_path("destinations", i, "options", "stage"), str(exc))]
    return []


__all__ = ["check_snowpipe"]
