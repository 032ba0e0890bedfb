"""What this build can run: a destination type's sink, and options validated but not implemented yet.

One module that both the dataflow (:mod:`dataflows.flow`) and the preflight (:mod:`dataflows.preflight`) import,
so neither imports the other: :func:`check_buildable` refuses, by name, what this version cannot do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sinks.base import WriterSink
from wallaby.core import registry
from wallaby.core.errors import ConfigError, FieldProblem
from wallaby.core.spec import FlowSpec

# A destination type's sink is its plugin's make_sink(name, flow_id, validated options, source=...) -> bytewax sink
# (wallaby.core.registry; bufstream is the kafka plugin).


def sink_factory(dest_type: str) -> Callable[..., WriterSink] | None:
    """The sink factory of a destination type, or None when this build has no sink for it (or no such type)."""
    plugin = registry.plugin(dest_type)
    return plugin.make_sink if plugin is not None else None


def available_destinations() -> list[str]:
    """The destination types this build has a sink for (aliases included)."""
    return sorted(t for t in registry.names() if sink_factory(t) is not None)


# Options the spec validates (USAGE.md names them) that this build does not implement yet, per endpoint type:
# refused by name when set to anything but their default, never accepted and ignored. option -> why. (Every
# postgres source option is built: partition_column, the last, splits a backfill's tables by key ranges.)
UNBUILT_SOURCE_OPTIONS: dict[str, dict[str, str]] = {}
UNBUILT_DESTINATION_OPTIONS: dict[str, dict[str, str]] = {}  # duckdb's staging options exist since backfill


def _unbuilt_options(opts: Any, unbuilt: dict[str, str], path: str) -> list[FieldProblem]:
    """The options of ``unbuilt`` that ``opts`` sets to something else than their default."""
    problems = []
    fields = type(opts).model_fields
    for name, why in unbuilt.items():
        if name not in opts.model_fields_set or name not in fields:
            continue
        value, default = getattr(opts, name), fields[name].get_default(call_default_factory=True)
        if value == default:
            continue
        fix = "remove it" if default is None else f"remove it or set it to {default!r} (the default)"
        problems.append(FieldProblem(f"{path}.{name}", f"{name}={value!r} is not available in this version of"
                                                       f" wallaby ({why}); {fix}"))
    return problems


# Destinations a backfill (and a stream's resync of a rewritten table) can write to now. S3 and pgstream keep
# exactly-once by stream position, and a receiving wallaby (grpc) applies by position: a snapshot's rows stand
# outside that order; they come in a later version.
BACKFILL_DESTINATIONS = ("duckdb", "ducklake", "snowflake", "clickhouse", "kafka", "bufstream", "http")


def takes_reads(spec: FlowSpec) -> bool:
    """Whether every destination of ``spec`` takes a snapshot's rows (op ``read``) into what the stream writes (not
    into staging tables, ``batch_mode=staging``, which wait for a resolution)."""
    return (all(d.type in BACKFILL_DESTINATIONS for d in spec.destinations) and spec.config.ack_policy != "primary"
            and not any(getattr(spec.destination_options(i), "batch_mode", None) == "staging"
                        for i in range(len(spec.destinations))))


# Destinations that take a flow's slots in parallel (source option slots > 1): each slot writes through writers of
# its own, keeping its own high-water (wallaby.core.identity.part_name). A DuckDB file has one writer; DuckLake and
# Snowpipe keep one.
PARTED_DESTINATIONS = ("kafka", "bufstream", "s3", "http", "grpc", "pgstream", "clickhouse", "snowflake")


def _slot_problems(spec: FlowSpec) -> list[FieldProblem]:
    opts = spec.source_options()
    if opts.slots == 1:
        return []
    problems = [FieldProblem(f"destinations[{i}].type",
                             f"a {d.type} destination has one writer, and source option slots={opts.slots} needs"
                             f" destinations that take each slot's changes in parallel"
                             f" ({', '.join(PARTED_DESTINATIONS)}): set slots to 1 (docs/scaling.md)")
                for i, d in enumerate(spec.destinations) if d.type not in PARTED_DESTINATIONS]
    if opts.capture_ddl:
        problems.append(FieldProblem("source.options.capture_ddl", f"captured DDL is one stream of logical messages"
                                     f" every slot decodes; with slots={opts.slots} set capture_ddl=false (schema"
                                     f" changes are still found per table, from the stream's relation messages)"))
    return problems


def check_buildable(spec: FlowSpec) -> None:
    """Refuse, before anything is connected to, what this build cannot do yet: destination types without a sink,
    and options that are validated but not implemented (:data:`UNBUILT_SOURCE_OPTIONS`,
    :data:`UNBUILT_DESTINATION_OPTIONS`), each by name."""
    missing = [i for i, d in enumerate(spec.destinations) if sink_factory(d.type) is None]
    problems = [
        FieldProblem(f"destinations[{i}].type",
                     f"destination type {spec.destinations[i].type!r} is not available in this version of wallaby"
                     f" (available: {', '.join(available_destinations())})")
        for i in missing
    ]
    if spec.source.type != "postgres":
        problems.append(FieldProblem("source.type", "only 'postgres' sources are supported"))
    else:
        problems += _unbuilt_options(spec.source_options(), UNBUILT_SOURCE_OPTIONS.get(spec.source.type, {}),
                                     "source.options")
        problems += _slot_problems(spec)
    for i, d in enumerate(spec.destinations):
        if i not in missing and d.type in UNBUILT_DESTINATION_OPTIONS:
            problems += _unbuilt_options(spec.destination_options(i), UNBUILT_DESTINATION_OPTIONS[d.type],
                                         f"destinations[{i}].options")
    if problems:
        raise ConfigError(f"flow {spec.name or spec.id!r}", problems)
