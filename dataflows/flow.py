"""Builds a flow's bytewax dataflow from its spec.

``python -m bytewax.run dataflows.flow:flow`` builds the flow named by
``WALLABY_FLOW_FILE`` (a flow JSON file) or ``WALLABY_FLOW_ID`` (a flow in the
flow store), and works with bytewax's own ``-w/-i/-a/-r/-s/-b`` flags.
``WALLABY_START_LSN`` and ``WALLABY_MAX_EMPTY_READS`` do what the worker's
``-start-lsn`` and ``-max-empty-reads`` do.

Shape: one input step (the Postgres source, one partition per slot) whose
items are ``(flow_id, ChangeBatch)``, the TOAST step when ``toast_fetch`` is on
(:mod:`operators.toast`), then one output step holding every
destination (:mod:`sinks.fanout`: ``parallelism``, ``ack_policy``). bytewax waits
for that output's epoch before the source may confirm it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from bytewax import operators as op
from bytewax.dataflow import Dataflow

from dataflows.positions import Start, prepare_start, sink_module
from operators.metadata import with_metadata
from operators.toast import toast_step
from sinks.base import WriterSink
from sinks.fanout import fanout_sink
from sources.postgres.source import PostgresSource
from wallaby.core.destination_options import DESTINATION_OPTIONS
from wallaby.core.errors import ConfigError, FieldProblem, NotFoundError
from wallaby.core.options import did_you_mean
from wallaby.core.spec import FlowSpec, load_flow, parse_flow
from wallaby.state.checkpoints import Checkpoints, CheckpointStore, open_store

# A destination type's sink lives in module sinks.<type> (bufstream: sinks.kafka.writer) as
# make_sink(name, flow_id, validated options, source=...) -> bytewax sink.


def sink_factory(dest_type: str) -> Callable[[str, str, Any], WriterSink] | None:
    """The sink factory of a destination type, or None when this build has no such destination."""
    return getattr(sink_module(dest_type), "make_sink", None)


def available_destinations() -> list[str]:
    return sorted(t for t in DESTINATION_OPTIONS if sink_factory(t) is not None)


# Options the spec validates (USAGE.md names them) that this build does not implement yet, per endpoint type:
# refused by name when set to anything but their default, never accepted and ignored. option -> why.
_BACKFILL = "backfill (snapshot) mode comes in a later version; this version streams from the slot"
_STAGING = "staging loads come with backfill in a later version; changes are applied to the target tables"
UNBUILT_SOURCE_OPTIONS: dict[str, dict[str, str]] = {
    "postgres": dict.fromkeys(("snapshot_workers", "parallel_tables", "partition_column", "partition_count",
                               "snapshot_consistent", "snapshot_state_backend", "snapshot_state_schema",
                               "snapshot_state_table", "snapshot_state_path"), _BACKFILL),
}
UNBUILT_DESTINATION_OPTIONS: dict[str, dict[str, str]] = {
    "duckdb": dict.fromkeys(("batch_mode", "batch_resolution", "staging_schema", "staging_table",
                             "staging_suffix"), _STAGING),
}


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
    for i, d in enumerate(spec.destinations):
        if i not in missing and d.type in UNBUILT_DESTINATION_OPTIONS:
            problems += _unbuilt_options(spec.destination_options(i), UNBUILT_DESTINATION_OPTIONS[d.type],
                                         f"destinations[{i}].options")
    if problems:
        raise ConfigError(f"flow {spec.name or spec.id!r}", problems)


def build_flow(spec: FlowSpec, *, start_lsn: int | None = None, max_empty_reads: int | None = None,
               checkpoints: CheckpointStore | None = None, prepared: bool = False,
               generation: int | None = None, start: Start | None = None) -> Dataflow:
    """The dataflow of ``spec``. With ``generation`` (a worker of a stored flow) the source is fenced: it stops
    before advancing the slot once a newer generation of the flow exists. With ``start``
    (:func:`dataflows.positions.prepare_start`: the source prepared, stored positions judged) the source resumes
    from the vetted checkpoint and every stored position is judged against, and written with, the source's
    identity."""
    source_check = start.check if start is not None else None
    extra = {"source_check": source_check, "resume": start.checkpoint, "prepared": True} if start is not None else {
        "prepared": prepared}
    check_buildable(spec)
    source_opts = spec.source_options()
    flow = Dataflow(f"wallaby-{spec.id}")
    source = PostgresSource(spec.id, source_opts, start_lsn=start_lsn, max_empty_reads=max_empty_reads,
                            checkpoints=checkpoints, generation=generation, **extra,
                            ddl_policy=spec.ddl_policy(),
                            keep_wal=any(getattr(spec.destination_options(i), "payload_mode", None) == "wal"
                                         for i in range(len(spec.destinations))))
    changes = op.input("source", flow, source)
    if source_opts.toast_fetch != "off":
        changes = toast_step(changes, spec)
    makers = {}
    for i, dest in enumerate(spec.destinations):
        opts = spec.destination_options(i)
        sink = sink_factory(dest.type)(dest.name, spec.id, opts, source=source_check)
        makers[dest.name] = with_metadata(dest.name, opts, sink.new_writer)
    primary = spec.config.primary_destination if spec.config.ack_policy == "primary" else None
    op.output("destinations", changes, fanout_sink(spec.id, makers, parallelism=spec.parallelism, primary=primary,
                                                   source=source_check))
    return flow


def stored_flow(checkpoints: Checkpoints, flow_id: str, generation: int | None = None,
                field: str = "-flow-id") -> tuple[FlowSpec, int]:
    """A flow of the flow store and the generation its worker runs at: ``generation`` if given (it must still be
    the flow's), else a newly claimed one (fencing every older worker)."""
    flows = checkpoints.flows()
    try:
        stored = flows.get(flow_id)
    except NotFoundError:
        known = [f.id for f in flows.list()]
        hint = did_you_mean(flow_id, known) or (f" (flows: {', '.join(known)})" if known else " (the store has none)")
        raise ConfigError("flow store", [FieldProblem(
            field, f"no flow {flow_id!r} in {checkpoints.db.describe()}{hint}")]) from None
    spec = parse_flow(stored.spec, origin=f"flow store, flow {flow_id!r}")
    if generation is None:
        generation = flows.claim(flow_id)
    else:
        flows.check_generation(flow_id, generation)
    return spec, generation


def flow_from_env() -> Dataflow:
    """The dataflow for ``WALLABY_FLOW_FILE`` or ``WALLABY_FLOW_ID`` (+ ``WALLABY_FLOW_GENERATION``), after the
    same preflight as ``wallaby-worker`` (:func:`dataflows.preflight.preflight`): nothing is created for a flow
    that fails it."""
    from dataflows.preflight import preflight
    from wallaby.core.changes import parse_lsn
    from wallaby.core.settings import count, env_value

    path = os.environ.get("WALLABY_FLOW_FILE")
    flow_id = os.environ.get("WALLABY_FLOW_ID")
    given = env_value("WALLABY_FLOW_GENERATION", count(1))
    start = env_value("WALLABY_START_LSN", parse_lsn)
    empty = env_value("WALLABY_MAX_EMPTY_READS", count(1))
    checkpoints = open_store()
    generation = None
    if path:
        spec = load_flow(path)
    elif flow_id:
        spec, generation = stored_flow(checkpoints, flow_id, given, "WALLABY_FLOW_ID")
    else:
        raise ConfigError("dataflows.flow", [FieldProblem(
            "WALLABY_FLOW_FILE", "set WALLABY_FLOW_FILE to a flow JSON file (or WALLABY_FLOW_ID to a stored flow)")])
    preflight(spec)
    # bytewax.run's own -r/--recovery-directory is the recovery store here (this process cannot know it), so
    # its positions are judged when the source resumes from them
    prepared = prepare_start(spec, checkpoints, start_lsn=start)
    return build_flow(spec, start_lsn=start, checkpoints=checkpoints, max_empty_reads=empty, generation=generation,
                      start=prepared)


def __getattr__(name: str) -> Dataflow:
    # Built on first access, so importing this module (tests, the worker) needs no environment.
    if name == "flow":
        from wallaby.core.errors import WallabyError, exit_status

        try:
            value = flow_from_env()
        except WallabyError as exc:  # `python -m bytewax.run dataflows.flow:flow`: one clear error, no traceback
            print(f"dataflows.flow: {exc}", file=sys.stderr)
            raise SystemExit(exit_status(exc)) from None
        globals()["flow"] = value
        return value
    raise AttributeError(name)
