"""The preflight: everything a flow can be checked for before anything is created.

Every entry point runs :func:`preflight` before the replication slot, the
publication, the source-state table or any destination table or file exists:
``wallaby-worker`` (:mod:`wallaby.control.worker`), CreateFlow / UpdateFlow
(:mod:`wallaby.control.api.manager`) and ``python -m bytewax.run dataflows.flow:flow``
(:func:`dataflows.flow.flow_from_env`). The checks, in order:

1. process settings (:mod:`wallaby.core.settings`): every ``WALLABY_*`` tuning
   variable parses (``WALLABY_K8S_*`` too; ``WALLABY_DBOS_*`` is the API server's);
2. what this build can run (:func:`dataflows.buildable.check_buildable`): destination
   types, and options the spec validates but this version does not implement
   (backfill options, DuckDB staging), refused by name when set;
3. destinations, where a check is free (each plugin's ``checks``,
   :mod:`wallaby.core.registry`, beside its sink in ``sinks/<name>/checks.py``):
   a DuckDB file's directory exists or can be created and is writable (nothing
   is created); an S3 bucket exists and answers with the destination's
   credentials and endpoint (HeadBucket, short timeouts); Kafka brokers answer a
   metadata request (no topic is named, so none is auto-created); HTTP URLs and
   gRPC endpoints are checked for syntax only (never called);
4. against the source (``source=True``): ``type_mappings`` keys name types the
   source has, metadata column names do not clash with published columns.

Every definite problem of 2-4 is collected into one
:class:`~wallaby.core.errors.ConfigError` (exit status 2 of the worker) naming the
field (``destinations[0].options.bucket``) and the path, bucket or broker.
What may pass by itself is raised after that, as the error it is: a source that
does not answer (:class:`~wallaby.core.errors.SourceError`) or a destination that
does not (:class:`~wallaby.core.errors.TransientSinkError`). CreateFlow accepts a
flow in that case, and the worker checks again before it creates anything.

To add a check: a function ``(i, destination endpoint, typed options) ->
list[FieldProblem]`` in the ``checks`` of the destination's ``PLUGIN``
(``sinks/<name>/__init__.py``; raise ``TransientSinkError`` for "could not
ask"), or a function ``(spec) -> None`` raising ``ConfigError`` in
:data:`SOURCE_CHECKS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from dataflows.buildable import check_buildable
from operators.metadata import MetadataRewriter
from sources.postgres.connection import connect, server_name
from sources.postgres.setup import publication_columns, unknown_type_keys
from wallaby.core import registry, settings
from wallaby.core.errors import ConfigError, FieldProblem, SourceError, TransientSinkError

log = logging.getLogger("wallaby.preflight")


def preflight(spec, *, source: bool = True, environ: Mapping[str, str] | None = None) -> None:
    """Every check of this module (see its docstring) on ``spec``; returns when all pass. ``source=False`` skips
    the checks against the source database. Raises :class:`~wallaby.core.settings.SettingsError` (a bad process
    setting), :class:`ConfigError` (every problem of the flow), then :class:`SourceError` or
    :class:`TransientSinkError` (something that did not answer)."""

    settings.load(environ)
    problems: list[FieldProblem] = []
    unreachable: list[Exception] = []
    try:
        check_buildable(spec)
    except ConfigError as exc:
        problems += exc.problems
    for i, dest in enumerate(spec.destinations):
        opts = spec.destination_options(i)
        for check in destination_checks(dest.type):
            try:
                problems += check(i, dest, opts)
            except TransientSinkError as exc:
                unreachable.append(exc)
    if source:
        for source_check in SOURCE_CHECKS:
            try:
                source_check(spec)
            except ConfigError as exc:
                problems += exc.problems
            except SourceError as exc:
                unreachable.insert(0, exc)
                break  # the next check would knock on the same door
    if problems:
        raise ConfigError(f"flow {spec.name!r}", problems)
    if unreachable:
        raise unreachable[0]


# -- destinations ---------------------------------------------------------------------------------


def destination_checks(dest_type: str) -> tuple[registry.DestinationCheck, ...]:
    """The free checks of a destination type: its plugin's (none for an unknown type: the spec reports it)."""
    plugin = registry.plugin(dest_type)
    return plugin.checks if plugin is not None else ()


# -- against the source ---------------------------------------------------------------------------


def check_type_mappings(spec) -> None:
    """Every type_mappings key names a type (or extension) the source has: else one error listing them."""
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
    problems = [FieldProblem(f"destinations[{i}].options.{option}",
                             f"{key!r} is not a type (or extension) of the source {server_name(dsn)}; keys are"
                             " Postgres type names, schema.type, ext:<extension>.<type> or ext:<extension>")
                for i, option, key in wanted if key in unknown]
    if problems:
        raise ConfigError(f"flow {spec.name!r}", problems)


def check_metadata_names(spec) -> None:
    """No metadata column (meta_enabled, soft_delete, append_mode) may be named like a column of a table the flow
    publishes: else one error naming both."""
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
    problems = [FieldProblem(f"destinations[{i}].options", f"metadata column {name!r} is also a column of {table};"
                                                            " choose another name (meta_synced_at, meta_deleted,"
                                                            " meta_watermark, meta_op)")
                for i, names in wanted for table, cols in sorted(columns.items()) for name in names if name in cols]
    if problems:
        raise ConfigError(f"flow {spec.name!r}", problems)


SOURCE_CHECKS: list[Callable[[Any], None]] = [check_type_mappings, check_metadata_names]


__all__ = ["SOURCE_CHECKS", "check_metadata_names", "check_type_mappings", "destination_checks", "preflight"]
