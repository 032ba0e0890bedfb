"""USAGE.md "Snowpipe Destination": validated (a flow file can be checked) though this version has no sink for
it."""

from __future__ import annotations

from pydantic import Field, model_validator

from sinks.sql.options import MaterializingOptions
from wallaby.core.options import Bool, OptionProblems, RequiredText, Text, choice


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
    write_mode: choice("append") = "append"  # Snowpipe only appends

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
