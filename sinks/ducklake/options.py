"""USAGE.md "DuckLake Destination": the options of a DuckLake destination.

A DuckLake destination is the DuckDB destination writing into a DuckLake catalog attached to its DuckDB connection
(:mod:`sinks.ducklake.writer`), so its model is the DuckDB destination's (every table-writer option: ``schema``,
``table``, ``write_mode``, ``batch_mode``, ``staging_*``, ``meta_table_enabled``, ``type_mappings``,
``drop_columns``) plus the DuckLake options of USAGE.md. ``release_file`` does not apply: the lake is read through
its catalog by any number of readers while the flow writes, and the DuckDB database of ``dsn`` holds none of it.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import model_validator

from sinks.duckdb.options import DuckDBDestinationOptions
from wallaby.core.options import Bool, OptionProblems, RequiredText, Text

# Catalog kinds this build can attach (DuckDB extensions shipped as wheels): a DuckDB file (no prefix), SQLite and
# Postgres. DuckLake also knows mysql: (DuckDB's mysql extension, not shipped) and MotherDuck.
CATALOG_KINDS = ("postgres", "sqlite", "duckdb")
_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9_]+):(?!//)")  # "postgres:...", "sqlite:...", not "C:\" nor "s3://"

# Types DuckLake accepts but cannot keep exactly in its Parquet files, refused as type_mappings values: INTERVAL is
# written with millisecond precision and not at all when negative; HUGEINT / UHUGEINT are written as DOUBLE.
LOSSY_TYPES = re.compile(r"\b(INTERVAL|U?HUGEINT|U?INT128)\b", re.IGNORECASE)


def catalog_kind(catalog: str) -> tuple[str, str]:
    """``(kind, location)`` of a ``catalog`` option: ``("postgres", conninfo)``, ``("sqlite", path)`` or
    ``("duckdb", path)``; another ``prefix:`` gives ``(prefix, rest)`` (refused by the options model). A leading
    ``ducklake:`` (as in DuckDB's ``ATTACH 'ducklake:...'``) is accepted and dropped."""
    text = catalog.strip()
    if text.lower().startswith("ducklake:"):
        text = text[len("ducklake:"):]
    m = _PREFIX.match(text)
    if m is None:
        return "duckdb", text
    kind = m.group(1).lower()
    return ("duckdb" if kind == "duckdb" else kind), text[m.end():]


def is_remote(path: str | None) -> bool:
    """Whether a data path is object storage (``s3://bucket/prefix``, ...) rather than a local directory."""
    return bool(path) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path or "") is not None


class DuckLakeDestinationOptions(DuckDBDestinationOptions):
    """The DuckDB destination's options (``dsn``: the DuckDB database the lake is attached from, a file or
    ``:memory:``) and the DuckLake ones: ``catalog`` (a DuckDB file such as ``metadata.ducklake``,
    ``sqlite:<path>``, ``postgres:<libpq conninfo or URL>``), ``catalog_name`` (the name it is attached as),
    ``data_path`` (the Parquet files' root: a directory or ``s3://bucket/prefix``), ``override_data_path`` (use
    ``data_path`` although the catalog recorded another one), ``install_extensions`` (load the DuckDB extensions
    from their wheels; false: only what DuckDB's extension directory holds)."""

    catalog: RequiredText
    catalog_name: RequiredText = "ducklake"
    data_path: Text | None = None
    override_data_path: Bool = False
    install_extensions: Bool = True
    # not a DuckLake option: the lake has many readers by design (refused when given, see _check)
    release_file: Bool = False

    @model_validator(mode="after")
    def _check(self) -> DuckLakeDestinationOptions:
        problems = []
        if "release_file" in self.model_fields_set:
            problems.append(("release_file", "does not apply to DuckLake: readers attach the lake through its catalog"
                                             " while the flow writes (docs/destinations.md, DuckLake); remove it"))
        kind, location = catalog_kind(self.catalog)
        if kind not in CATALOG_KINDS:
            problems.append(("catalog", f"a {kind}: catalog is not supported by this build (a DuckDB file such as"
                                        " metadata.ducklake, sqlite:<path> or postgres:<conninfo>)"))
        elif not location.strip():
            problems.append(("catalog", f"{kind}: names no {'connection' if kind == 'postgres' else 'file'}"))
        name = self.catalog_name.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", name):
            problems.append(("catalog_name", "expected a plain name (letters, digits, _; not starting with a digit)"))
        else:
            taken = {"memory", "temp", "system", "main"}
            dsn = self.dsn.strip()
            if dsn != ":memory:" and not dsn.startswith(("md:", "motherduck:")):
                taken.add(Path(dsn).name.split(".")[0].lower())  # DuckDB names a file database so
            if name.lower() in taken:
                problems.append(("catalog_name", f"{name!r} is already the name of a database of the DuckDB"
                                                 " connection (the dsn file's own name, memory, temp, system or main);"
                                                 " choose another one"))
        for key, value in self.mappings().items():
            if LOSSY_TYPES.search(value):
                option = "type_mappings" if key in (self.type_mappings or {}) else "type_mappings_file"
                problems.append((option, f"{key}: {value} cannot be kept exactly in DuckLake's Parquet files"
                                         " (INTERVAL loses its microseconds and cannot be negative, HUGEINT is written"
                                         " as DOUBLE); map it to VARCHAR, DECIMAL(38,0) or BIGINT"))
        if problems:
            raise OptionProblems(problems)
        return self


__all__ = ["CATALOG_KINDS", "DuckLakeDestinationOptions", "catalog_kind", "is_remote"]
