"""The DuckDB destination's free preflight check (:mod:`dataflows.preflight`): nothing is created."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sinks.duckdb.options import DuckDBDestinationOptions
from wallaby.core.errors import FieldProblem
from wallaby.core.options import join_path
from wallaby.core.spec import Endpoint


def _shown_path(text: str) -> str:
    return repr(text) if re.fullmatch(r"[\w./\\ ~+-]+", text) else "the path"


def check_duckdb_path(i: int, dest: Endpoint | None, opts: DuckDBDestinationOptions) -> list[FieldProblem]:
    """A DuckDB file (not ``:memory:`` / MotherDuck) must be a file this process can write, in a directory it can
    write (DuckDB keeps ``<file>.wal`` beside it), or a file a missing directory of which can be created. Nothing
    is created here."""
    dsn = opts.dsn.strip()
    if dsn.startswith((":memory:", "md:", "motherduck:")):
        return []
    shown = _shown_path(dsn)
    path = Path(dsn).expanduser()

    def problem(message: str) -> list[FieldProblem]:
        return [FieldProblem(join_path("destinations", i, "options", "dsn"), f"DuckDB file {shown}: {message}")]

    try:
        if path.is_dir():
            return problem("is a directory; name a file in it")
        if path.exists():
            if not os.access(path, os.R_OK | os.W_OK):
                return problem("is not readable and writable by this process")
            if not os.access(path.parent, os.W_OK | os.X_OK):
                return problem(f"its directory {str(path.parent)!r} is not writable (DuckDB writes its .wal file"
                               " there)")
            return []
        existing = path.parent
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
    except OSError as exc:  # e.g. a directory on the way that this process may not search
        return problem(f"cannot be checked: {exc.strerror or exc}")
    if not existing.is_dir():
        return problem(f"cannot create its directory: {str(existing)!r} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "directory" if existing == path.parent else "directory (to create the ones below it)"
        return problem(f"cannot create it: {what} {str(existing)!r} is not writable by this process")
    return []


__all__ = ["check_duckdb_path"]
