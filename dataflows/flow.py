"""Builds a flow's bytewax dataflow from its spec.

``python -m bytewax.run dataflows.flow:flow`` builds the flow named by
``WALLABY_FLOW_FILE`` (a flow JSON file) or ``WALLABY_FLOW_ID`` (a flow in the
flow store), and works with bytewax's own ``-w/-i/-a/-r/-s/-b`` flags.
``WALLABY_START_LSN`` and ``WALLABY_MAX_EMPTY_READS`` do what the worker's
``-start-lsn`` and ``-max-empty-reads`` do.

Shape: one input step (the Postgres source, one partition per slot) whose
items are ``(flow_id, ChangeBatch)``, the TOAST step when ``toast_fetch`` is on
(:mod:`operators.toast`), then one output step per destination
(:mod:`sinks.fanout`: ``parallelism``, ``ack_policy``). bytewax waits
for every output's epoch before the source may confirm it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream

from dataflows.buildable import check_buildable, sink_factory, takes_reads
from dataflows.positions import Start, prepare_starts
from dataflows.preflight import preflight
from operators.metadata import with_metadata
from operators.toast import toast_step
from sinks.fanout import FanoutPart, destination_sinks
from sources.postgres.source import READ_CHECKPOINT, PostgresSource, SlotPart
from wallaby.core import logs, telemetry
from wallaby.core.changes import parse_lsn
from wallaby.core.errors import ConfigError, FieldProblem, NotFoundError, WallabyError, exit_status
from wallaby.core.identity import SourceCheck, part_name
from wallaby.core.options import did_you_mean
from wallaby.core.settings import count, env_value
from wallaby.core.spec import FlowSpec, load_flow, parse_flow
from wallaby.state.checkpoints import Checkpoints, CheckpointStore, open_store


def build_flow(spec: FlowSpec, *, start_lsn: int | None = None, max_empty_reads: int | None = None,
               checkpoints: CheckpointStore | None = None, prepared: bool = False,
               generation: int | None = None, start: Start | list[Start] | None = None) -> Dataflow:
    """The dataflow of ``spec``. With ``generation`` (a worker of a stored flow) the source is fenced: it stops
    before advancing the slot once a newer generation of the flow exists. With ``start``
    (:func:`dataflows.positions.prepare_start`: the source prepared, stored positions judged) the source resumes
    from the vetted checkpoint and every stored position is judged against, and written with, the source's
    identity."""
    starts = start if isinstance(start, list) else [start] if start is not None else []
    source_check = starts[0].check if starts else None
    extra = {"source_check": source_check, "resume": starts[0].checkpoint, "prepared": True} if starts else {
        "prepared": prepared}
    check_buildable(spec)
    source_opts = spec.source_options()
    parts = None
    if len(starts) > 1:
        parts = [SlotPart(st.opts, st.check, st.checkpoint, st.index) for st in starts]
    elif source_opts.slots > 1:
        parts = [SlotPart(v, None, READ_CHECKPOINT, i) for i, v in enumerate(source_opts.slot_views())]
    flow = Dataflow(f"wallaby-{spec.id}")
    source = PostgresSource(spec.id, source_opts, start_lsn=start_lsn, max_empty_reads=max_empty_reads,
                            checkpoints=checkpoints, generation=generation, **extra, parts=parts,
                            flows=checkpoints.flow_store if isinstance(checkpoints, Checkpoints) else None,
                            ddl_policy=spec.ddl_policy(), resync=takes_reads(spec),
                            keep_wal=any(getattr(spec.destination_options(i), "payload_mode", None) == "wal"
                                         for i in range(len(spec.destinations))))
    changes = op.input("source", flow, source)
    if source_opts.toast_fetch != "off":
        changes = toast_step(changes, spec)
    if parts is not None:
        output_destinations(spec, changes, None, slots=[(p.opts.slot, p.index, p.source_check) for p in parts])
    else:
        output_destinations(spec, changes, source_check)
    return flow


def output_destinations(spec: FlowSpec, changes: Stream, source_check: SourceCheck | None,
                        wrap: Callable[[str, Callable], Callable] | None = None,
                        slots: list[tuple[str, int, SourceCheck | None]] | None = None) -> None:
    """Every destination of ``spec`` as a bytewax output step of its own (``dest_<name>``: metadata rewrite, the
    flow's ``parallelism`` and ``ack_policy``, :mod:`sinks.fanout`): the streaming and the backfill dataflows end
    alike. ``wrap(name, make_writer)``: a writer factory around each destination's (the backfill records
    progress). ``slots`` (a flow of several: each slot's key, index and source check): one part of each output
    per slot, each with writers of its own."""
    primary = spec.config.primary_destination if spec.config.ack_policy == "primary" else None
    parts = [FanoutPart("", None, _makers(spec, source_check, None, wrap), source_check)] if slots is None else \
        [FanoutPart(key, index, _makers(spec, check, index, wrap), check) for key, index, check in slots]
    for step, sink in destination_sinks(spec.id, [d.name for d in spec.destinations], parts,
                                        parallelism=spec.parallelism, primary=primary,
                                        batch_size=spec.source_options().batch_size):
        op.output(step, changes, sink)


def _makers(spec: FlowSpec, source_check: SourceCheck | None, index: int | None,
            wrap: Callable[[str, Callable], Callable] | None) -> dict[str, Callable]:
    """Destination name -> writer factory (keeping its state under its part name for slot ``index``)."""
    makers = {}
    for i, dest in enumerate(spec.destinations):
        opts = spec.destination_options(i)
        name = part_name(dest.name, index)
        sink = sink_factory(dest.type)(name, spec.id, opts, source=source_check)
        makers[dest.name] = with_metadata(name, opts, sink.new_writer)
        if wrap is not None:
            makers[dest.name] = wrap(dest.name, makers[dest.name])
    return makers


def stored_flow(checkpoints: Checkpoints, flow_id: str, generation: int | None = None,
                field: str = "-flow-id") -> tuple[FlowSpec, int]:
    """A flow of the flow store and the generation its worker runs at: ``generation`` if given (it must still be
    the flow's), else a newly claimed one (fencing every older worker)."""
    flows = checkpoints.flow_store
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


def spec_from_env(checkpoints: Checkpoints, what: str, generation: int | None = None) -> tuple[FlowSpec, int | None]:
    """The flow of ``WALLABY_FLOW_FILE`` (generation None), else of ``WALLABY_FLOW_ID`` in the flow store (at
    ``generation``, else a newly claimed one): the input of a ``bytewax.run`` entry point named ``what``."""
    path = os.environ.get("WALLABY_FLOW_FILE")
    flow_id = os.environ.get("WALLABY_FLOW_ID")
    if path:
        return load_flow(path), None
    if flow_id:
        return stored_flow(checkpoints, flow_id, generation, "WALLABY_FLOW_ID")
    raise ConfigError(what, [FieldProblem(
        "WALLABY_FLOW_FILE", "set WALLABY_FLOW_FILE to a flow JSON file (or WALLABY_FLOW_ID to a stored flow)")])


def entry_flow(build: Callable[[], Dataflow], what: str) -> Dataflow:
    """``build()`` for ``python -m bytewax.run <what>:flow``: a WallabyError becomes one clear line on stderr and
    the worker's exit status, no traceback."""
    try:
        return build()
    except WallabyError as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        raise SystemExit(exit_status(exc)) from None


def flow_from_env() -> Dataflow:
    """The dataflow for ``WALLABY_FLOW_FILE`` or ``WALLABY_FLOW_ID`` (+ ``WALLABY_FLOW_GENERATION``), after the
    same preflight as ``wallaby-worker`` (:func:`dataflows.preflight.preflight`): nothing is created for a flow
    that fails it."""

    telemetry.start("wallaby-worker")  # WALLABY_METRICS_LISTEN, OTEL_*, as wallaby-worker
    given = env_value("WALLABY_FLOW_GENERATION", count(1))
    start = env_value("WALLABY_START_LSN", parse_lsn)
    empty = env_value("WALLABY_MAX_EMPTY_READS", count(1))
    checkpoints = open_store()
    spec, generation = spec_from_env(checkpoints, "dataflows.flow", given)
    logs.setup(spec.id)  # JSON lines on stderr naming the flow, as wallaby-worker's
    preflight(spec)
    # bytewax.run's own -r/--recovery-directory is the recovery store here (this process cannot know it), so
    # its positions are judged when the source resumes from them
    prepared = prepare_starts(spec, checkpoints, start_lsn=start)
    return build_flow(spec, start_lsn=start, checkpoints=checkpoints, max_empty_reads=empty, generation=generation,
                      start=prepared)


def __getattr__(name: str) -> Dataflow:
    # Built on first access, so importing this module (tests, the worker) needs no environment.
    if name == "flow":
        globals()["flow"] = value = entry_flow(flow_from_env, "dataflows.flow")
        return value
    raise AttributeError(name)
