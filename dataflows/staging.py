"""Resolve a flow's staging tables: the rows a backfill staged (``batch_mode=staging``) moved into the targets.

:func:`resolve_flow_staging` runs each destination plugin's ``resolve_staging`` hook
(:class:`wallaby.core.registry.Plugin`; DuckDB's is :func:`sinks.duckdb.staging.resolve_staging`) over the flow's
destinations that stage loads. ``wallaby-worker -resolve-staging``, the API's ``FlowService.ResolveStaging`` and
``wallaby-admin flow resolve-staging`` call it, never while the flow's worker holds its destinations.
"""

from __future__ import annotations

from typing import Any

from wallaby.core import registry
from wallaby.core.errors import ConfigError, FieldProblem
from wallaby.core.options import did_you_mean
from wallaby.core.spec import FlowSpec


def resolve_flow_staging(spec: FlowSpec, tables: list[str] | None = None, schemas: list[str] | None = None,
                         dest: str | None = None) -> list[Any]:
    """Resolve the staging tables of ``spec``'s destinations that have a ``resolve_staging`` hook and
    ``batch_mode=staging`` (only destination ``dest`` when given), filtered by ``tables`` (``schema.table``) and
    ``schemas``; every resolved (or selected but unstaged) table's record, destination by destination.

    ConfigError, before anything is resolved: ``dest`` unknown (with a did-you-mean) or not staging, no destination
    of the flow staging, a staging destination with ``batch_resolution=none``. Each destination then refuses names
    it does not know (a ConfigError; tables resolved before by an earlier destination stay resolved)."""
    what = f"flow {spec.name or spec.id!r}"
    names = [d.name for d in spec.destinations]
    if dest is not None and dest not in names:
        raise ConfigError(what, [FieldProblem("destination", f"no destination {dest!r}{did_you_mean(dest, names)}"
                                                             f" (its destinations: {', '.join(names) or 'none'})")])
    chosen = []
    for i, d in enumerate(spec.destinations):
        if dest is not None and d.name != dest:
            continue
        plugin = registry.plugin(d.type)
        hook = plugin.resolve_staging if plugin is not None else None
        opts = spec.destination_options(i) if hook is not None else None
        if hook is None or getattr(opts, "batch_mode", "target") != "staging":
            if dest is not None:
                why = (f"a {d.type} destination has no staging tables" if hook is None
                       else "its batch_mode is not 'staging': it stages nothing")
                raise ConfigError(what, [FieldProblem("destination", f"destination {dest!r}: {why}")])
            continue
        chosen.append((i, d, opts, hook))
    if not chosen:
        raise ConfigError(what, [FieldProblem("destinations", "no destination stages loads (batch_mode='staging' on"
                                                              " a destination with staging tables, e.g. duckdb):"
                                                              " nothing to resolve")])
    problems = [FieldProblem(f"destinations[{i}].options.batch_resolution",
                             f"destination {d.name!r}: batch_resolution='none': staged rows are kept in their staging"
                             " tables and never resolved; set batch_resolution to 'append' or 'replace'")
                for i, d, opts, _ in chosen if getattr(opts, "batch_resolution", None) == "none"]
    if problems:
        raise ConfigError(what, problems)
    out: list[Any] = []
    for _, d, opts, hook in chosen:
        out += hook(d.name, spec.id, opts, tables=tables or None, schemas=schemas or None)
    return out


__all__ = ["resolve_flow_staging"]
