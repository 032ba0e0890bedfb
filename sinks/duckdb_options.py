"""Options of a DuckDB destination (spec/USAGE.md, "DuckDB Destination") and its type-map text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def parse_mapping_text(text: str) -> dict[str, str]:
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        value = json.loads(text)
    else:
        try:
            import yaml  # type: ignore[import-untyped]

            value = yaml.safe_load(text)
        except ImportError:  # flat "key: value" lines, the only YAML shape a type map needs
            value = {}
            for raw in text.splitlines():
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                key, sep, val = line.rpartition(":")
                if not sep or not key.strip() or not val.strip():
                    raise ValueError(f"cannot read line {raw!r}; expected 'postgres_type: DUCKDB_TYPE'") from None
                value[key.strip().strip("'\"")] = val.strip().strip("'\"")
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("expected a map of postgres type -> DuckDB type (strings)")
    return value


class DuckDBOptions(BaseModel):
    """Options of a DuckDB destination (spec/USAGE.md, "DuckDB Destination")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dsn: str = Field(min_length=1, description="DuckDB file path (parent directories are created) or ':memory:'")
    schema_name: str | None = Field(
        default=None, alias="schema", min_length=1, description="DuckDB schema; default: the source table's schema"
    )
    table: str | None = Field(
        default=None,
        min_length=1,
        description="DuckDB table; default: the source table's name. When set, every source table of the flow "
        "lands in this one table: only sensible with a single source table.",
    )
    write_mode: Literal["target", "append"] = "target"
    batch_mode: Literal["target", "staging"] = "target"
    batch_resolution: Literal["none", "append", "replace"] = "none"
    staging_schema: str | None = None
    staging_table: str | None = None
    staging_suffix: str = "_staging"
    meta_table_enabled: bool = True
    drop_columns: bool = Field(
        default=False,
        description="drop a DuckDB column when its source column is dropped (after the changes that still carried"
        " it); default: keep it, later rows get NULL",
    )
    type_mappings: dict[str, str] | None = Field(
        default=None, description="postgres type -> DuckDB type overrides (a map, or JSON / YAML text)"
    )
    type_mappings_file: str | None = Field(default=None, description="path of a JSON or YAML type map")

    @field_validator("schema_name", "table", "staging_schema", "staging_table", "type_mappings_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # options arrive as a map<string,string>; an empty value means "not set"
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("type_mappings", mode="before")
    @classmethod
    def _mappings_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_mapping_text(value)
        return value

    @field_validator("type_mappings_file")
    @classmethod
    def _mappings_file_readable(cls, value: str | None) -> str | None:
        if value is not None:
            path = Path(value)
            if not path.is_file():
                raise ValueError(f"type_mappings_file {value!r} is not a readable file")
            parse_mapping_text(path.read_text())
        return value

    @model_validator(mode="after")
    def _no_staging_yet(self) -> DuckDBOptions:
        if self.batch_mode == "staging":
            raise ValueError(
                "batch_mode='staging' is not supported by the DuckDB destination yet: staging loads land with the "
                "backfill feature; use batch_mode='target' (the default)"
            )
        return self

    def mappings(self) -> dict[str, str]:
        """The type overrides: the file's map, then ``type_mappings`` on top."""
        out: dict[str, str] = {}
        if self.type_mappings_file:
            out.update(parse_mapping_text(Path(self.type_mappings_file).read_text()))
        out.update(self.type_mappings or {})
        return out
