"""``wallaby-worker``: run one flow in its own process.

    wallaby-worker -flow-file examples/flows/quickstart.json | -flow-id ID [-generation N]
                   [-max-empty-reads N] [-start-lsn X/Y] [-recovery-dir DIR] [-epoch-interval 2s]
                   [-reset-position] [-config GO_RUNTIME_CONFIG.yaml]
    wallaby-worker -flow-id ID -mode backfill [-tables s.t1,s.t2 | -schemas s1,s2] ...

The Go worker's spellings are taken too: ``-mode cdc`` is ``-mode stream``; ``-schemas`` backfills every table
of the schemas (in the flow's publication); ``-config FILE`` reads the Go build's runtime config file into the
settings it stands for (:mod:`wallaby.control.goconfig`). With ``WALLABY_DDL_CATALOG_ENABLED=true`` a streaming
worker also scans its source's catalog for schema changes (:mod:`sources.postgres.ddl_catalog`).

``-flow-id`` reads the flow from the flow store (the database the
``WALLABY_CHECKPOINT_*`` / ``WALLABY_POSTGRES_DSN`` variables name, shared with the
API server) and runs it at a new worker generation, which fences off any older
worker of the flow. SIGTERM stops gracefully: the epoch in flight is finished
and checkpointed.

Flags take one dash or two (``-flow-id X``, ``--flow-id=X``).

Exit status (``wallaby.core.errors.exit_status``; the API server acts on it):

====  ==========================================================================
0     clean stop (SIGTERM, ``-max-empty-reads``)
1     permanent failure: retrying cannot help (credentials, permissions, a
      missing database, bucket or topic, a 4xx answer, an incompatible schema,
      an error of unknown kind: a bug repeats). Not restarted: the flow FAILS.
2     bad flow spec or flag (``ConfigError``, every problem listed)
3     fenced off by a newer worker of the flow
75    transient failure (EX_TEMPFAIL): the source or a destination is away or
      busy (connection refused or lost, broker unavailable, 5xx, throttled,
      timeouts; a network error nobody mapped). Restarted with back-off.
130   interrupted (SIGINT)
====  ==========================================================================

A failure is reported as one line on stderr, ``wallaby-worker: <cause>``: the
root cause (the error a sink, the source or a step raised, found on the
exception chain under bytewax's ``BytewaxRuntimeError`` wrappers), naming the
destination and what it tried (brokers, bucket and endpoint, URL, path, DSN)
or the field, never a password. ``ConfigError`` keeps one line per problem. The
Rust panic report bytewax writes to stderr on the way is filtered out
(``wallaby.control.panicfilter``); ``WALLABY_DEBUG=1`` shows it and the Python traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main

from dataflows.backfill import prepare_backfill
from dataflows.flow import build_flow, check_buildable, stored_flow
from dataflows.positions import RECOVERY_MIN_FREE, lock_recovery, open_recovery, prepare_starts, recovery_store_error
from dataflows.preflight import preflight
from dataflows.staging import resolve_flow_staging
from sources.postgres.ddl_catalog import CatalogScan
from sources.postgres.ddl_gate import hold_schema_change
from sources.postgres.schema_tables import schema_tables
from sources.postgres.snapshot_state import open_snapshot_state
from sources.postgres.source import confirms_after_run
from wallaby.control import goconfig
from wallaby.control.panicfilter import filtered_stderr
from wallaby.control.progress import TerminalProgress
from wallaby.core import logs, metrics, settings, telemetry
from wallaby.core.changes import parse_lsn
from wallaby.core.errors import (
    ConfigError,
    FieldProblem,
    SchemaChangeError,
    SchemaChangeHeld,
    WallabyError,
    exit_status,
    redact_dsn,
)
from wallaby.core.options import parse_duration, slot_of
from wallaby.core.runtime import STOP, install_stop_handler
from wallaby.core.spec import load_flow
from wallaby.state.checkpoints import open_store

log = logging.getLogger("wallaby.worker")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wallaby-worker", description="Run one wallaby flow in this process.")
    p.add_argument("-flow-file", "--flow-file", dest="flow_file", help="flow JSON file")
    p.add_argument("-flow-id", "--flow-id", dest="flow_id", help="id of a flow in the flow store")
    p.add_argument("-max-empty-reads", "--max-empty-reads", dest="max_empty_reads", type=int, default=None,
                   help="stop cleanly after N empty polls (one poll = batch_timeout with no WAL data, everything the"
                        " server reported read)")
    p.add_argument("-workers", "--workers", dest="workers", type=int, default=1,
                   help="bytewax workers (threads) in this process: a flow of several slots (source option slots)"
                        " reads one slot per worker at a time, and its destinations' parts are spread alike")
    p.add_argument("-start-lsn", "--start-lsn", dest="start_lsn", default=None,
                   help="start from this LSN (X/Y); the slot must still retain it")
    p.add_argument("-recovery-dir", "--recovery-dir", dest="recovery_dir", default=None,
                   help="the flow's bytewax recovery store for this run (created if missing); default: one store per"
                        " flow under $WALLABY_RECOVERY_DIR, else recovery/ beside the checkpoint store")
    p.add_argument("-reset-position", "--reset-position", dest="reset_position", action="store_true",
                   help="discard every stored position of the flow (checkpoint, recovery store, each destination's"
                        " high-water) and start at the slot's position; for a flow moved to another source on purpose")
    p.add_argument("-epoch-interval", "--epoch-interval", dest="epoch_interval",
                   default=settings.on_import().epoch_interval,  # WALLABY_EPOCH_INTERVAL, checked by the preflight
                   help="how often destinations commit and the slot advances (default 2s)")
    p.add_argument("-generation", "--generation", dest="generation", type=int, default=None,
                   help="with -flow-id: run at this generation of the flow (set by the API server; default: claim a"
                        " new one, which fences off any older worker of the flow)")
    p.add_argument("-mode", "--mode", dest="mode", default="stream", choices=["stream", "cdc", "backfill"],
                   help="stream (default; cdc, the Go worker's name for it): the changes of the slot; backfill: what"
                        " the tables hold now, through the same destinations, then exit")
    p.add_argument("-tables", "--tables", dest="tables", default=None,
                   help="backfill: the tables (schema.table,...); default: every table of the flow's publication")
    p.add_argument("-schemas", "--schemas", dest="schemas", default=None,
                   help="backfill (or -resolve-staging): every table of these schemas (a,b) in the flow's"
                        " publication (in the source when the publication is not made yet); not with -tables")
    p.add_argument("-config", "--config", dest="config", default=None,
                   help="the Go WALlaby's runtime config file (YAML or JSON: postgres.dsn, ddl.*, kubernetes.*,"
                        " ...): its keys set the WALLABY_* settings they stand for, over the environment"
                        " (wallaby/control/goconfig.py). Not a flow: that is -flow-file")
    p.add_argument("-snapshot-workers", "--snapshot-workers", dest="snapshot_workers", type=int, default=None,
                   help="backfill: parts read at once (default: the source option snapshot_workers, 1)")
    p.add_argument("-partition-count", "--partition-count", dest="partition_count", type=int, default=None,
                   help="backfill: parts per table, ranges of its heap blocks or of -partition-column's values"
                        " (default: the source option partition_count, 1)")
    p.add_argument("-partition-column", "--partition-column", dest="partition_column", default=None,
                   help="backfill: split each table in ranges of this column's values (bigint, uuid, text,"
                        " timestamptz, any type with a btree ordering; best with an index on it) instead of ranges"
                        " of heap blocks; a table without the column keeps block ranges, rows where it is NULL get"
                        " a part of their own (default: the source option partition_column)")
    p.add_argument("-resolve-staging", "--resolve-staging", dest="resolve_staging", action="store_true",
                   help="resolve staged tables (batch_mode=staging) into their targets by batch_resolution: after"
                        " the backfill with -mode backfill, else now (the -tables given, default all) and exit")
    return p


def run(args: argparse.Namespace) -> int:
    if bool(args.flow_file) == bool(args.flow_id):
        raise ConfigError("wallaby-worker", [_problem("-flow-file", "give one of -flow-file FILE or -flow-id ID")])
    if args.mode == "cdc":  # the Go worker's name for the stream
        args.mode = "stream"
    overrides = goconfig.load(args.config) if args.config else {}
    os.environ.update(overrides)  # the file wins over the environment, as in the Go build
    if args.schemas is not None and args.tables is not None:
        raise ConfigError("wallaby-worker", [_problem("-schemas", "give -tables or -schemas, not both (the Go worker"
                                                                  " ignores -schemas when -tables is given)")])
    observed = telemetry.start("wallaby-worker")  # WALLABY_METRICS_LISTEN, OTEL_*: before anything is claimed
    checkpoints = open_store()
    generation = None
    if args.flow_id:
        spec, generation = stored_flow(checkpoints, args.flow_id, args.generation)
    else:
        spec = load_flow(args.flow_file)
    logs.setup(spec.id)
    if args.config:
        log.info("flow %s: -config %s sets %s", spec.id, args.config, ", ".join(sorted(overrides)) or "nothing",
                 extra={"flow": spec.id})
    metrics.worker_started(spec.id, args.mode)
    if observed.metrics_url:
        log.info("flow %s: metrics on %s", spec.id, observed.metrics_url, extra={"flow": spec.id})
    install_stop_handler()
    check_buildable(spec)
    if args.workers < 1:
        raise ConfigError("wallaby-worker", [_problem("-workers", f"must be at least 1, got {args.workers}")])
    if args.mode == "backfill" and spec.source_options().slots > 1:
        raise ConfigError("wallaby-worker", [_problem(
            "-mode", f"backfill of a flow of several slots (source option slots={spec.source_options().slots}) is"
                     " not available in this version of wallaby: backfill through a flow of the same tables with"
                     " slots=1 into the same destinations, then stream with this one")])
    if args.mode == "backfill":
        return run_backfill(args, spec, checkpoints)
    if args.resolve_staging:
        checkpoints.close()
        _resolve_staging(spec, _tables(args, spec))
        return 0
    backfill_only = [f for f, v in (("-snapshot-workers", args.snapshot_workers),
                                    ("-partition-count", args.partition_count),
                                    ("-partition-column", args.partition_column)) if v is not None]
    for flag, value in (("-schemas", args.schemas), ("-tables", args.tables)):
        if value is not None:
            backfill_only.insert(0, flag)
    if backfill_only:
        raise ConfigError("wallaby-worker", [_problem(f, "applies to -mode backfill (-tables: or -resolve-staging)")
                                             for f in backfill_only])
    start_lsn = None
    if args.start_lsn:
        try:
            start_lsn = parse_lsn(args.start_lsn)
        except ValueError as exc:
            raise ConfigError("wallaby-worker", [_problem("-start-lsn", str(exc))]) from None
    epoch = parse_duration(args.epoch_interval)
    preflight(spec)  # every check that needs nothing created, before prepare_start creates anything
    scan = _catalog_scan(spec)  # WALLABY_DDL_CATALOG_*: checked now, started with the stream
    rdir = recovery_dir(spec.id, args.recovery_dir, checkpoints)
    held = lock_recovery(rdir, spec.id)  # noqa: F841 - one worker of a flow at a time on its recovery store
    starts = prepare_starts(spec, checkpoints, reset_all=args.reset_position, start_lsn=start_lsn, recovery_dir=rdir)
    plan = starts[0].plan
    if generation is not None:
        log.info("flow %s: worker generation %d", spec.id, generation)
    log.info("flow %s: source ready (server %d, pgoutput protocol %d)", spec.id, plan.server_version,
             plan.proto_version)
    flow = build_flow(spec, start_lsn=start_lsn, max_empty_reads=args.max_empty_reads, checkpoints=checkpoints,
                      generation=generation, start=starts)
    open_recovery(rdir, starts[0].check, all(st.keep_recovery for st in starts))
    log.info("flow %s: recovery store %s", spec.id, rdir)
    if scan is not None:
        scan.run_once()  # the baseline, before the stream starts
        scan.start(settings.current().ddl_catalog_interval)
    try:
        with confirms_after_run():  # a stream that is done ends at once; its last epoch confirmed after the run
            _run_dataflow(flow, rdir, epoch, args.workers)
    except Exception as exc:
        _hold_schema_change(exc, spec, checkpoints)
        raise
    finally:
        if scan is not None:
            scan.stop()
        checkpoints.close()
    log.info("flow %s: stopped", spec.id)
    return 0


def _hold_schema_change(exc: BaseException, spec, checkpoints) -> None:
    """A destination could not apply a schema change: leave its DDL event pending (the gate holds the next worker
    before it) and raise :class:`SchemaChangeHeld` saying what to do, instead of failing the same way on every
    restart. Returns when ``exc`` is no such error, or holding cannot help (no store, no event after the flow's
    checkpoint, or this event was held before and the worker still met the change): then ``exc`` stands."""
    err = next((e for e in _causes(exc) if isinstance(e, SchemaChangeError)), None)
    flows = getattr(checkpoints, "flow_store", None)
    if err is None or flows is None:
        return
    opts = spec.source_options()
    slot = opts.slot_views()[slot_of(opts, err.table)].slot if opts.slots > 1 else opts.slot  # the table's slot
    cp = checkpoints.get(spec.id, slot)
    before = {e.id: e.status for e in flows.list_ddl(flow_id=spec.id)}
    event = hold_schema_change(flows, spec.id, err, cp.position if cp is not None else None)
    if event is None or before.get(event.id) == "pending":
        return
    raise SchemaChangeHeld(
        f"{err}. The flow holds at this change: DDL event {event.id} ({event.table}) is pending again, and a worker"
        f" started now waits before it. Map the new type to one the values fit (destination option type_mappings),"
        f" or drop the destination table (the stream reads a rewritten table again), then approve it:"
        f" wallaby-admin ddl approve -id {event.id}. Rejecting it does not help: the changes after it have the"
        f" new type") from exc


def _causes(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and its chain of causes and contexts, outermost first."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _run_dataflow(flow, rdir: Path, epoch: float, workers: int = 1) -> None:
    """Run ``flow`` in this process (``workers`` threads) with ``rdir`` as its bytewax recovery store."""
    try:
        cli_main(flow, workers_per_process=workers, epoch_interval=timedelta(seconds=epoch),
                 recovery_config=RecoveryConfig(str(rdir)))
    except Exception as exc:
        if shutil.disk_usage(rdir).free < RECOVERY_MIN_FREE:  # bytewax's SQLite writes failed for want of space
            raise recovery_store_error(rdir) from exc
        raise


def run_backfill(args: argparse.Namespace, spec, checkpoints) -> int:
    """``-mode backfill``: read the tables' parts into the flow's destinations, then exit 0. Killed, it resumes
    from its own recovery store (``<flow>.backfill`` beside the stream's) with the same parts; finished, the
    store is removed, so the next backfill reads everything again."""
    problems = []
    if args.partition_column is not None and not args.partition_column.strip():
        problems.append(_problem("-partition-column", "names a column of the tables to backfill; leave it out to"
                                 " split them by ranges of heap blocks"))
    if args.start_lsn:
        problems.append(_problem("-start-lsn", "applies to -mode stream"))
    for flag, value in (("-snapshot-workers", args.snapshot_workers), ("-partition-count", args.partition_count)):
        if value is not None and value < 1:
            problems.append(_problem(flag, f"must be at least 1, got {value}"))
    if problems:
        raise ConfigError("wallaby-worker", problems)
    opts = spec.source_options()
    readers = args.snapshot_workers or opts.snapshot_workers
    epoch = parse_duration(args.epoch_interval)
    rdir = Path(args.recovery_dir).expanduser() if args.recovery_dir else \
        recovery_dir(f"{spec.id}.backfill", None, checkpoints)
    held = lock_recovery(rdir, spec.id)  # noqa: F841 - one backfill of a flow at a time
    tables = _tables(args, spec)
    progress = TerminalProgress(spec.id) if sys.stderr.isatty() else None
    flow, snapshot, parts = prepare_backfill(spec, checkpoints, tables, args.partition_count,
                                             reset_all=args.reset_position, recovery_dir=rdir, progress=progress,
                                             readers=readers, column=args.partition_column)
    log.info("flow %s: backfill recovery store %s", spec.id, rdir)
    try:
        _run_dataflow(flow, rdir, epoch)  # one bytewax worker: the parts' readers are threads of their own
    finally:
        if progress is not None:
            progress.close()
        snapshot.close()
        checkpoints.close()
    if STOP.is_set():
        log.info("flow %s: backfill stopped; run it again to resume", spec.id)
        return 0
    open_snapshot_state(opts).finish(spec.id)  # done: the next backfill starts over
    shutil.rmtree(rdir, ignore_errors=True)
    log.info("flow %s: backfill done (%d parts of %d tables)", spec.id, len(parts), len({p.table for p in parts}))
    if args.resolve_staging:
        _resolve_staging(spec, sorted({p.table for p in parts}))
    return 0


def _tables(args: argparse.Namespace, spec) -> list[str] | None:
    """``-tables``, or the tables of ``-schemas``, or None (every table)."""
    if args.schemas is not None:
        schemas = [x.strip() for x in args.schemas.split(",") if x.strip()]
        if not schemas:
            raise ConfigError("wallaby-worker", [_problem("-schemas", "names no schema (use a comma list like"
                                                                      " public,sales)")])
        opts = spec.source_options()
        return schema_tables(opts.dsn, opts.publication, schemas, flow_id=spec.id)
    return [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None


def _catalog_scan(spec) -> CatalogScan | None:
    """The DDL catalog scan of the flow's source while it streams (``WALLABY_DDL_CATALOG_ENABLED``;
    sources/postgres/ddl_catalog.py), not started; None when off. Its schemas are checked (an error naming
    ``WALLABY_DDL_CATALOG_SCHEMAS``)."""
    tuned = settings.current()
    if not tuned.ddl_catalog_enabled:
        return None
    opts = spec.source_options()
    scan = CatalogScan(spec.id, opts.dsn, tuned.ddl_catalog_schemas, open_store,
                       auto_approve=bool(spec.ddl_policy().auto_approve))
    scan.check()
    log.info("flow %s: DDL catalog scan of %s every %gs", spec.id, ", ".join(scan.schemas),
             tuned.ddl_catalog_interval, extra={"flow": spec.id})
    return scan


def _resolve_staging(spec, tables: list[str] | None) -> None:
    for r in resolve_flow_staging(spec, tables=tables):
        if r.staged:
            log.info("flow %s: destination %s: %s resolved into %s (%s, %d rows)", spec.id, r.destination,
                     r.staging_table, r.table, r.resolution, r.rows, extra={"flow": spec.id})
        else:
            log.info("flow %s: destination %s: nothing staged for %s", spec.id, r.destination, r.table,
                     extra={"flow": spec.id})


def recovery_dir(flow_id: str, given: str | None, checkpoints) -> Path:
    """The flow's bytewax recovery store: ``given`` (``-recovery-dir``, this run), else
    ``$WALLABY_RECOVERY_DIR/<flow>``, else ``recovery/<flow>`` beside a SQLite checkpoint store (``~/.wallaby``
    for a Postgres one). One store per flow: a store holds one flow's positions."""
    if given:
        return Path(given).expanduser()
    parent = os.environ.get("WALLABY_RECOVERY_DIR")
    if parent:
        base = Path(parent).expanduser()
    else:
        store = getattr(checkpoints.db, "path", None)
        base = (Path(store).expanduser().parent if store and store != ":memory:" else Path("~/.wallaby").expanduser())
        base = base / "recovery"
    return base / quote(flow_id, safe="")


def _problem(field: str, message: str):
    return FieldProblem(field, message)


def _root_cause(exc: BaseException) -> tuple[BaseException, str]:
    """The error that ended the worker, and its one-line report (``ConfigError``: one line per problem).

    bytewax 0.21.1 re-raises a Python exception of a step (a sink's ``build_part``/``snapshot``, a source's
    ``next_batch``, a map) as ``BytewaxRuntimeError("(src/outputs.rs:323:54): error init StatefulSink")`` with
    the original as its ``__cause__``, two wrappers deep for a step inside a batch; one of ``write_batch`` comes
    back as itself. So the cause is the first of our errors (``WallabyError``) on the chain of causes and contexts;
    without one, the first exception that is not such a wrapper (a bug, a driver error nobody mapped), reported
    with its type; with nothing but wrappers, the outermost, without its Rust source location."""
    import re

    wrapper = getattr(sys.modules.get("bytewax.errors"), "BytewaxRuntimeError", ())
    chain = _causes(exc)
    cause = next((e for e in chain if isinstance(e, WallabyError)), None) or \
        next((e for e in chain if not isinstance(e, wrapper)), chain[0])
    if isinstance(cause, WallabyError):
        text = str(cause)
    elif isinstance(cause, wrapper):
        # its text may carry the Rust backtrace of the panic it came from: the frames are noise, the message stays
        kept = [ln for ln in str(cause).splitlines()
                if not re.match(r"^\s*(?:\d+: |at |stack backtrace:|note: )", ln) and "panick" not in ln]
        text = "the dataflow failed: " + re.sub(r"^\(src/[^)]*\.rs:\d+:\d+\):\s*", "", "\n".join(kept))
    else:
        text = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    if not isinstance(cause, ConfigError):
        text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return cause, redact_dsn(text)


def main(argv: list[str] | None = None) -> int:
    """Run the flow; on failure print one line (the root cause) and exit with its status (module docstring)."""

    args = _parser().parse_args(argv)
    debug = bool(os.environ.get("WALLABY_DEBUG"))
    failure: BaseException | None = None
    with filtered_stderr(enabled=not debug):
        try:
            return run(args)
        except KeyboardInterrupt:
            return 130
        except Exception as exc:
            failure = exc
    if debug:
        import traceback

        traceback.print_exception(failure)
    cause, line = _root_cause(failure)
    print(f"wallaby-worker: {line}", file=sys.stderr, flush=True)
    return exit_status(cause)


if __name__ == "__main__":
    sys.exit(main())
