"""``wallaby-worker``: run one flow in its own process.

    wallaby-worker -flow-file examples/flows/quickstart.json | -flow-id ID [-generation N]
                   [-max-empty-reads N] [-start-lsn X/Y] [-recovery-dir DIR] [-epoch-interval 2s]

``-flow-id`` reads the flow from the flow store (the database the
``WALLABY_CHECKPOINT_*`` / ``WALLABY_POSTGRES_DSN`` variables name, shared with the
API server) and runs it at a new worker generation, which fences off any older
worker of the flow. SIGTERM stops gracefully: the epoch in flight is finished
and checkpointed.

Flags take one dash or two (``-flow-id X``, ``--flow-id=X``). Exit status: 0 on a
clean stop, 2 for a bad flow spec or flag, 3 when fenced off by a newer worker of
the flow, 1 for a source or destination error; every error is one line naming
the field or server, without passwords.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

from wallaby import logs
from wallaby.changes import parse_lsn
from wallaby.errors import ConfigError, FencedError, WallabyError, redact_dsn
from wallaby.options import parse_duration

log = logging.getLogger("wallaby.worker")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wallaby-worker", description="Run one wallaby flow in this process.")
    p.add_argument("-flow-file", "--flow-file", dest="flow_file", help="flow JSON file")
    p.add_argument("-flow-id", "--flow-id", dest="flow_id", help="id of a flow in the flow store")
    p.add_argument("-max-empty-reads", "--max-empty-reads", dest="max_empty_reads", type=int, default=None,
                   help="stop cleanly after N empty polls (one poll = batch_timeout with no change)")
    p.add_argument("-start-lsn", "--start-lsn", dest="start_lsn", default=None,
                   help="start from this LSN (X/Y); the slot must still retain it")
    p.add_argument("-recovery-dir", "--recovery-dir", dest="recovery_dir",
                   default=os.environ.get("WALLABY_RECOVERY_DIR"),
                   help="bytewax recovery directory (created if missing); default: none, resume from the"
                        " checkpoint store")
    p.add_argument("-epoch-interval", "--epoch-interval", dest="epoch_interval",
                   default=os.environ.get("WALLABY_EPOCH_INTERVAL", "2s"),
                   help="how often destinations commit and the slot advances (default 2s)")
    p.add_argument("-generation", "--generation", dest="generation", type=int, default=None,
                   help="with -flow-id: run at this generation of the flow (set by the API server; default: claim a"
                        " new one, which fences off any older worker of the flow)")
    p.add_argument("-mode", "--mode", dest="mode", default="stream", choices=["stream"],
                   help="stream (backfill comes in a later version)")
    return p


def run(args: argparse.Namespace) -> int:
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.run import cli_main

    from dataflows.flow import build_flow, check_buildable, stored_flow
    from sources.setup import prepare_source
    from wallaby.checkpoints import open_store
    from wallaby.runtime import install_stop_handler
    from wallaby.spec import load_flow

    if bool(args.flow_file) == bool(args.flow_id):
        raise ConfigError("wallaby-worker", [_problem("-flow-file", "give one of -flow-file FILE or -flow-id ID")])
    checkpoints = open_store()
    generation = None
    if args.flow_id:
        spec, generation = stored_flow(checkpoints, args.flow_id, args.generation)
    else:
        spec = load_flow(args.flow_file)
    logs.setup(spec.id)
    install_stop_handler()
    check_buildable(spec)
    start_lsn = None
    if args.start_lsn:
        try:
            start_lsn = parse_lsn(args.start_lsn)
        except ValueError as exc:
            raise ConfigError("wallaby-worker", [_problem("-start-lsn", str(exc))]) from None
    epoch = parse_duration(args.epoch_interval)
    check_type_mappings(spec)  # before prepare_source creates anything
    check_metadata_names(spec)
    plan = prepare_source(spec.source_options(), spec.id)
    if generation is not None:
        log.info("flow %s: worker generation %d", spec.id, generation)
    log.info("flow %s: source ready (server %d, pgoutput protocol %d)", spec.id, plan.server_version,
             plan.proto_version)
    flow = build_flow(spec, start_lsn=start_lsn, max_empty_reads=args.max_empty_reads, checkpoints=checkpoints,
                      prepared=True, generation=generation)
    recovery = None
    if args.recovery_dir:
        rdir = Path(args.recovery_dir).expanduser()
        if not rdir.exists() or not any(rdir.iterdir()):
            rdir.mkdir(parents=True, exist_ok=True)
            init_db_dir(rdir, 1)
        recovery = RecoveryConfig(str(rdir))
    try:
        cli_main(flow, epoch_interval=timedelta(seconds=epoch), recovery_config=recovery)
    finally:
        checkpoints.close()
    log.info("flow %s: stopped", spec.id)
    return 0


def check_type_mappings(spec) -> None:
    """Every type_mappings key names a type (or extension) the source has: else one error listing them."""
    from sources.connection import connect, server_name
    from sources.setup import unknown_type_keys

    wanted = []
    for i in range(len(spec.destinations)):
        opts = spec.destination_options(i)
        if hasattr(opts, "mapping_keys"):
            wanted += [(i, option, key) for option, key in opts.mapping_keys()]
    if not wanted:
        return
    dsn = spec.source_options().dsn
    with connect(dsn, application_name=f"wallaby-setup:{spec.id}") as conn:
        unknown = set(unknown_type_keys(conn, sorted({k for _, _, k in wanted})))
    problems = [_problem(f"destinations[{i}].options.{option}",
                         f"{key!r} is not a type (or extension) of the source {server_name(dsn)}; keys are Postgres"
                         " type names, schema.type, ext:<extension>.<type> or ext:<extension>")
                for i, option, key in wanted if key in unknown]
    if problems:
        raise ConfigError(f"flow {spec.name!r}", problems)


def check_metadata_names(spec) -> None:
    """No metadata column (meta_enabled, soft_delete, append_mode) may be named like a column of a table the flow
    publishes: else one error naming both."""
    from operators.metadata import MetadataRewriter
    from sources.connection import connect
    from sources.setup import publication_columns

    wanted = []
    for i in range(len(spec.destinations)):
        r = MetadataRewriter(spec.destination_options(i))
        if r.enabled:
            wanted.append((i, r.names))
    if not wanted:
        return
    opts = spec.source_options()
    with connect(opts.dsn, application_name=f"wallaby-setup:{spec.id}") as conn:
        columns = publication_columns(conn, opts)
    problems = [_problem(f"destinations[{i}].options", f"metadata column {name!r} is also a column of {table};"
                                                        " choose another name (meta_synced_at, meta_deleted,"
                                                        " meta_watermark, meta_op)")
                for i, names in wanted for table, cols in sorted(columns.items()) for name in names if name in cols]
    if problems:
        raise ConfigError(f"flow {spec.name!r}", problems)


def _problem(field: str, message: str):
    from wallaby.errors import FieldProblem

    return FieldProblem(field, message)


def _root_cause(exc: BaseException) -> BaseException:
    """bytewax wraps Python errors raised inside steps; find ours."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, WallabyError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return exc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"wallaby-worker: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except FencedError as exc:
        print(f"wallaby-worker: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:
        cause = _root_cause(exc)
        if isinstance(cause, FencedError):
            print(f"wallaby-worker: {cause}", file=sys.stderr)
            return 3
        if isinstance(cause, WallabyError):
            print(f"wallaby-worker: {cause}", file=sys.stderr)
            return 1
        print(f"wallaby-worker: {redact_dsn(str(exc))}", file=sys.stderr)
        if os.environ.get("WALLABY_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
