"""The DuckLake destination's free preflight checks (:mod:`dataflows.preflight`): nothing is created.

The ``dsn`` file is checked as the DuckDB destination checks it; a catalog that is a local file (a DuckDB file or
``sqlite:<path>``) must be in a directory that exists and that this process may write (neither DuckDB nor SQLite
creates directories), and a new ``sqlite:`` catalog needs ``data_path`` (DuckLake records it at creation); a local
``data_path`` must be a directory or creatable (DuckLake creates it when it first writes). A ``postgres:`` catalog
and an ``s3://`` data path are not asked here: the writer names them when it cannot attach. The extensions are
checked by the plugin (``check_extensions``: it loads duckdb).
"""

from __future__ import annotations

import os
from pathlib import Path

from sinks.duckdb.checks import _shown_path, check_duckdb_path
from sinks.ducklake.options import DuckLakeDestinationOptions, catalog_kind, is_remote
from wallaby.core.errors import FieldProblem
from wallaby.core.options import join_path
from wallaby.core.spec import Endpoint


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _catalog_problem(location: str, kind: str) -> str | None:
    path = Path(location).expanduser()
    shown = f"{kind} catalog {_shown_path(location)}"
    try:
        if path.is_dir():
            return f"{shown} is a directory; name a file in it"
        if path.exists():
            if not os.access(path, os.R_OK | os.W_OK):
                return f"{shown} is not readable and writable by this process"
            return None
        parent = path.parent
        if not parent.is_dir():
            return (f"{shown}: its directory {str(parent)!r} does not exist ({kind} does not create directories;"
                    " create it first)")
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"{shown}: its directory {str(parent)!r} is not writable by this process"
    except OSError as exc:
        return f"{shown} cannot be checked: {exc.strerror or exc}"
    return None


def _data_path_problem(location: str) -> str | None:
    path = Path(location).expanduser()
    shown = f"data path {_shown_path(location)}"
    try:
        if path.exists():
            if not path.is_dir():
                return f"{shown} is a file, not a directory"
            if not os.access(path, os.W_OK | os.X_OK):
                return f"{shown} is not writable by this process"
            return None
        existing = _existing_ancestor(path)
    except OSError as exc:
        return f"{shown} cannot be checked: {exc.strerror or exc}"
    if not existing.is_dir():
        return f"{shown} cannot be created: {str(existing)!r} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{shown} cannot be created: {str(existing)!r} is not writable by this process"
    return None


def check_ducklake_paths(i: int, dest: Endpoint | None, opts: DuckLakeDestinationOptions) -> list[FieldProblem]:
    """The local paths of a DuckLake destination: ``dsn`` (as DuckDB's), ``catalog`` when it is a local file,
    ``data_path`` when it is a local directory. Nothing is created."""
    problems = check_duckdb_path(i, dest, opts)
    kind, location = catalog_kind(opts.catalog)
    if kind in ("duckdb", "sqlite"):
        why = _catalog_problem(location, "SQLite" if kind == "sqlite" else "DuckDB")
        if why:
            problems.append(FieldProblem(join_path("destinations", i, "options", "catalog"), why))
        elif kind == "sqlite" and not opts.data_path and not Path(location).expanduser().exists():
            problems.append(FieldProblem(join_path("destinations", i, "options", "data_path"),
                                         "required to create the sqlite: catalog (the root of the lake's Parquet"
                                         " files: a directory or s3://bucket/prefix)"))
    if opts.data_path and not is_remote(opts.data_path):
        why = _data_path_problem(opts.data_path)
        if why:
            problems.append(FieldProblem(join_path("destinations", i, "options", "data_path"), why))
    return problems


__all__ = ["check_ducklake_paths"]
