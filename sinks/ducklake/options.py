"""USAGE.md "DuckLake Destination": validated (a flow file can be checked) though this version has no sink for it."""

from __future__ import annotations

from sinks.sql.options import MaterializingOptions
from wallaby.core.options import Bool, RequiredText, Text


class DuckLakeDestinationOptions(MaterializingOptions):
    dsn: RequiredText
    catalog: RequiredText
    catalog_name: RequiredText = "ducklake"
    data_path: Text | None = None
    override_data_path: Bool = False
    install_extensions: Bool = True


__all__ = ["DuckLakeDestinationOptions"]
