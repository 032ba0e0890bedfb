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

import importlib
import os
from collections.abc import Callable
from typing import Any

from bytewax import operators as op
from bytewax.dataflow import Dataflow

from operators.metadata import with_metadata
from operators.toast import toast_step
from sinks.base import WriterSink
from sinks.fanout import fanout_sink
from sources.postgres import PostgresSource
from wallaby.checkpoints import Checkpoints, CheckpointStore, open_store
from wallaby.destination_options import DESTINATION_OPTIONS
from wallaby.errors import ConfigError, FieldProblem, NotFoundError
from wallaby.options import did_you_mean
from wallaby.spec import FlowSpec, load_flow, parse_flow

# A destination type's sink lives in module sinks.<type> (bufstream: sinks.kafka) as
# make_sink(name, flow_id, validated options) -> bytewax sink.
_SINK_MODULES = {"bufstream": "kafka"}


def sink_factory(dest_type: str) -> Callable[[str, str, Any], WriterSink] | None:
    """The sink factory of a destination type, or None when this build has no such destination."""
    module_name = f"sinks.{_SINK_MODULES.get(dest_type, dest_type)}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    return getattr(module, "make_sink", None)


def available_destinations() -> list[str]:
    return sorted(t for t in DESTINATION_OPTIONS if sink_factory(t) is not None)


def check_buildable(spec: FlowSpec) -> None:
    """Refuse, before anything is connected to, what this build cannot do yet."""
    missing = [i for i, d in enumerate(spec.destinations) if sink_factory(d.type) is None]
    problems = [
        FieldProblem(f"destinations[{i}].type",
                     f"destination type {spec.destinations[i].type!r} is not available in this version of wallaby"
                     f" (available: {', '.join(available_destinations())})")
        for i in missing
    ]
    if spec.source.type != "postgres":
        problems.append(FieldProblem("source.type", "only 'postgres' sources are supported"))
    if problems:
        raise ConfigError(f"flow {spec.name or spec.id!r}", problems)


def build_flow(spec: FlowSpec, *, start_lsn: int | None = None, max_empty_reads: int | None = None,
               checkpoints: CheckpointStore | None = None, prepared: bool = False,
               generation: int | None = None) -> Dataflow:
    """The dataflow of ``spec``. With ``generation`` (a worker of a stored flow) the source is fenced: it stops
    before advancing the slot once a newer generation of the flow exists."""
    check_buildable(spec)
    source_opts = spec.source_options()
    flow = Dataflow(f"wallaby-{spec.id}")
    source = PostgresSource(spec.id, source_opts, start_lsn=start_lsn, max_empty_reads=max_empty_reads,
                            checkpoints=checkpoints, prepared=prepared, generation=generation,
                            ddl_policy=spec.ddl_policy(),
                            keep_wal=any(getattr(spec.destination_options(i), "payload_mode", None) == "wal"
                                         for i in range(len(spec.destinations))))
    changes = op.input("source", flow, source)
    if source_opts.toast_fetch != "off":
        changes = toast_step(changes, spec)
    makers = {}
    for i, dest in enumerate(spec.destinations):
        opts = spec.destination_options(i)
        makers[dest.name] = with_metadata(dest.name, opts, sink_factory(dest.type)(dest.name, spec.id, opts).new_writer)
    primary = spec.config.primary_destination if spec.config.ack_policy == "primary" else None
    op.output("destinations", changes, fanout_sink(spec.id, makers, parallelism=spec.parallelism, primary=primary))
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
    """The dataflow for ``WALLABY_FLOW_FILE`` or ``WALLABY_FLOW_ID`` (+ ``WALLABY_FLOW_GENERATION``)."""
    path = os.environ.get("WALLABY_FLOW_FILE")
    flow_id = os.environ.get("WALLABY_FLOW_ID")
    checkpoints = open_store()
    generation = None
    if path:
        spec = load_flow(path)
    elif flow_id:
        given = os.environ.get("WALLABY_FLOW_GENERATION")
        spec, generation = stored_flow(checkpoints, flow_id, int(given) if given else None, "WALLABY_FLOW_ID")
    else:
        raise ConfigError("dataflows.flow", [FieldProblem(
            "WALLABY_FLOW_FILE", "set WALLABY_FLOW_FILE to a flow JSON file (or WALLABY_FLOW_ID to a stored flow)")])
    start = os.environ.get("WALLABY_START_LSN")
    from wallaby.changes import parse_lsn

    empty = os.environ.get("WALLABY_MAX_EMPTY_READS")
    return build_flow(spec, start_lsn=parse_lsn(start) if start else None, checkpoints=checkpoints,
                      max_empty_reads=int(empty) if empty else None, generation=generation)


def __getattr__(name: str) -> Dataflow:
    # Built on first access, so importing this module (tests, the worker) needs no environment.
    if name == "flow":
        value = flow_from_env()
        globals()["flow"] = value
        return value
    raise AttributeError(name)
