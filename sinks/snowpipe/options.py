"""USAGE.md "Snowpipe Destination": the options of a Snowpipe destination (docs/destinations.md "Snowpipe").
``write_mode`` is ``append`` only: anything else is refused naming the option."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from sinks.sql.options import MaterializingOptions
from wallaby.core.options import Bool, OptionProblems, RequiredText, Text, choice, parse_text


def _append_only(v: Any) -> str:
    text = parse_text(v)
    if text.strip().lower() != "append":
        raise ValueError(f"{text!r}: Snowpipe only appends (each change is a row of a staged file, its operation in"
                         " the __op column); use write_mode=append, or the snowflake destination to apply changes to"
                         " a table (write_mode=target)")
    return "append"


class SnowpipeDestinationOptions(MaterializingOptions):
    dsn: RequiredText
    stage: Text | None = None
    stage_path: Text | None = None
    schema_: Text | None = Field(default=None, alias="schema")
    table: Text | None = None
    format: choice("parquet", "avro", "json") = "parquet"
    file_format: Text | None = None
    copy_on_write: Bool = True
    auto_ingest: Bool = False
    meta_table_enabled: Bool = True
    write_mode: Annotated[str, BeforeValidator(_append_only)] = "append"  # Snowpipe only appends

    @model_validator(mode="after")
    def _check(self) -> SnowpipeDestinationOptions:
        problems = []
        has_table = bool(self.schema_ and self.table)
        if not self.stage and not has_table:
            problems.append(("stage", "required option missing (or set schema and table to use the table stage"
                                      " @%schema.table)"))
        if self.copy_on_write and not self.auto_ingest and not has_table:
            missing = " and ".join(n for n, v in (("schema", self.schema_), ("table", self.table)) if not v)
            problems.append(("table" if self.schema_ else "schema", f"{missing} required when copy_on_write=true"))
        if problems:
            raise OptionProblems(problems)
        return self

    @property
    def table_stage(self) -> str | None:
        return f"@%{self.schema_}.{self.table}" if self.schema_ and self.table else None


__all__ = ["SnowpipeDestinationOptions"]
