"""DuckDB extensions shipped as wheels (``duckdb-extension-<name>==<duckdb's version>``): where a wheel keeps its
extension file, and loading that file (nothing is ever downloaded). Used by the DuckLake destination (ducklake,
sqlite, postgres, httpfs) and by the backfill's reader (postgres: :mod:`sources.postgres.pgscan`)."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wallaby.core.sqltext import sql_string


@dataclass(frozen=True)
class Extension:
    """A DuckDB extension, and the wheel that ships it."""

    name: str  # DuckDB's name (LOAD <name>; the entry point is <name>_duckdb_cpp_init)
    wheel: str  # its PyPI distribution
    module: str  # the wheel's import name
    stem: str  # the file's name in the wheel, without .duckdb_extension
    needed_for: str

    def wheel_file(self) -> Path | None:
        """The extension file inside the installed wheel for this duckdb, or None."""
        import duckdb

        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            path = Path(root) / "extensions" / f"v{duckdb.__version__}" / f"{self.stem}.duckdb_extension"
            if path.is_file():
                return path
        return None


DUCKLAKE = Extension("ducklake", "duckdb-extension-ducklake", "duckdb_extension_ducklake", "ducklake", "DuckLake")
SQLITE = Extension("sqlite_scanner", "duckdb-extension-sqlite", "duckdb_extension_sqlite", "sqlite",
                   "a sqlite: catalog")
POSTGRES = Extension("postgres_scanner", "duckdb-extension-postgres-scanner", "duckdb_extension_postgres_scanner",
                     "postgres_scanner", "a postgres: catalog")
HTTPFS = Extension("httpfs", "duckdb-extension-httpfs", "duckdb_extension_httpfs", "httpfs",
                   "a data path in object storage")


def load_file(con: Any, ext: Extension, path: Path) -> None:
    """LOAD the file at ``path`` into ``con``'s database; DuckDB derives the entry point from the file's name, so a
    file named otherwise (the sqlite wheel's) is loaded through a link of the right name in a private temporary
    directory."""
    if path.name == f"{ext.name}.duckdb_extension":
        con.execute(f"LOAD {sql_string(str(path))}")
        return
    tmp = tempfile.mkdtemp(prefix="wallaby-duckdb-ext-")
    try:
        link = Path(tmp) / f"{ext.name}.duckdb_extension"
        try:
            link.symlink_to(path)
        except OSError:
            shutil.copyfile(path, link)
        con.execute(f"LOAD {sql_string(str(link))}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
