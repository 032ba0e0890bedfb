"""Staging tables (``batch_mode=staging``) and their resolution, what is not a destination's SQL: which target
tables a flow staged rows for, which of them a ``tables`` / ``schemas`` selection names, what resolving one did.
The DuckDB destination (and DuckLake through it) and Snowflake resolve with their own SQL
(:mod:`sinks.duckdb.staging`, :mod:`sinks.snowflake.staging`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sinks.sql.engine import staging_dest, target_dest
from sinks.sql.options import TableWriterOptions
from wallaby.core.errors import ConfigError, FieldProblem
from wallaby.core.options import did_you_mean


@dataclass(frozen=True)
class ResolvedTable:
    """What resolving one target table did."""

    destination: str
    table: str  # the target, schema.table
    staging_table: str  # schema.table
    rows: int  # rows moved from the staging table
    resolution: str  # append | replace
    staged: bool = True  # False: nothing was staged for this table (rows 0, nothing changed)


@dataclass
class Candidate:
    target: tuple[str, str]
    staging: tuple[str, str]
    sources: set[str] = field(default_factory=set)  # source tables (schema.table) that land in the target

    @property
    def names(self) -> set[str]:
        return {*self.sources, qualified(self.target)}

    @property
    def schemas(self) -> set[str]:
        return {s.split(".", 1)[0] for s in self.sources} | {self.target[0]}


def qualified(t: tuple[str, str]) -> str:
    return f"{t[0]}.{t[1]}"


def candidates_of(options: TableWriterOptions, sources: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Candidate]:
    """Target table -> its candidate, from the source tables (schema, name) a flow's meta rows name; targets that
    are their own staging table left out."""
    out: dict[tuple[str, str], Candidate] = {}
    for schema, name in sources:
        target = target_dest(options, schema, name)
        c = out.setdefault(target, Candidate(target, staging_dest(options, target)))
        c.sources.add(f"{schema}.{name}")
    return {t: c for t, c in out.items() if c.staging != t}


def candidates_by_name(options: TableWriterOptions, existing: set[tuple[str, str]],
                       internal: str = "__wallaby_") -> dict[tuple[str, str], Candidate]:
    """Target table -> its candidate without a meta table: an existing target whose staging table exists, or a
    ``<name><staging_suffix>`` table in the same schema when ``staging_schema`` and ``staging_table`` are unset."""
    out: dict[tuple[str, str], Candidate] = {}
    suffix = options.staging_suffix
    for schema, name in sorted(existing):
        if name.lower().startswith(internal):
            continue
        staging = staging_dest(options, (schema, name))
        if staging in existing and staging != (schema, name):
            out.setdefault((schema, name), Candidate((schema, name), staging))
        if (options.staging_schema is None and options.staging_table is None and name.endswith(suffix)
                and len(name) > len(suffix)):
            target = (schema, options.table or name[: -len(suffix)])
            if staging_dest(options, target) == (schema, name) and target != (schema, name):
                out.setdefault(target, Candidate(target, (schema, name)))
    return out


def select(cands: dict[tuple[str, str], Candidate], existing: set[tuple[str, str]], tables: list[str] | None,
            schemas: list[str] | None, what: str) -> list[tuple[Candidate, bool]]:
    """(candidate, staged) of the selected target tables; ConfigError for names matching none."""
    if not tables and not schemas:
        return [(c, True) for _, c in sorted(cands.items()) if c.staging in existing]
    chosen: dict[tuple[str, str], Candidate] = {}
    problems = []
    known = sorted({n for c in cands.values() for n in c.names})
    for t in tables or []:
        if "." not in t.strip(".") or not t.strip():
            problems.append(FieldProblem("tables", f"{t!r}: expected schema.table"))
            continue
        hits = [c for c in cands.values() if t in c.names]
        if not hits:
            problems.append(FieldProblem("tables", f"{t!r} is not a table of this flow in this destination"
                                                   f"{did_you_mean(t, known)} (known: {', '.join(known) or 'none'})"))
        chosen.update((c.target, c) for c in hits)
    known_schemas = sorted({s for c in cands.values() for s in c.schemas})
    for s in schemas or []:
        hits = [c for c in cands.values() if s in c.schemas]
        if not hits:
            problems.append(FieldProblem("schemas", f"{s!r} holds no table of this flow in this destination"
                                                    f"{did_you_mean(s, known_schemas)}"
                                                    f" (known: {', '.join(known_schemas) or 'none'})"))
        chosen.update((c.target, c) for c in hits)
    if problems:
        raise ConfigError(what, problems)
    return [(c, c.staging in existing) for _, c in sorted(chosen.items())]


def check_resolvable(name: str, options: TableWriterOptions) -> None:
    """ConfigError unless ``options`` stage loads and say how to resolve them."""
    what = f"destination {name!r}"
    if options.batch_mode != "staging":
        raise ConfigError(what, [FieldProblem("batch_mode", f"batch_mode={options.batch_mode!r}: this destination"
                                                            " stages nothing (batch_mode='staging' stages loads)")])
    if options.batch_resolution == "none":
        raise ConfigError(what, [FieldProblem("batch_resolution", "batch_resolution='none': staged rows are kept in"
                                                                  " their staging tables and never resolved; set"
                                                                  " batch_resolution to 'append' or 'replace' to"
                                                                  " resolve them")])




__all__ = ["Candidate", "ResolvedTable", "candidates_by_name", "candidates_of", "check_resolvable", "qualified",
           "select"]
