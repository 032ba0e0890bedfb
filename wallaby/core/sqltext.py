"""SQL text the project writes itself: a string literal (Postgres, DuckDB and ClickHouse quote them alike)."""

from __future__ import annotations


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"
