"""The options of the destinations that materialize tables, and the one type-mapping parser.

``type_mappings`` (inline) and ``type_mappings_file`` (a JSON or flat YAML file)
map a source type to a destination type (USAGE.md "Destination Type Mappings");
both are parsed by :func:`parse_type_mappings`, the file when the flow spec is
validated (so a missing or malformed file is refused before anything connects).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from wallaby.core.destination_options import DestinationOptions
from wallaby.core.options import Bool, RequiredText, Text, _kind, _shown, choice, parse_text


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return s


def parse_type_mappings(v: Any) -> dict[str, str]:
    """A map ``source type -> destination type``: a JSON object, JSON text, or a flat YAML map.

    YAML keys may hold ``:`` (``ext:postgis.geometry: GEOGRAPHY``): a key ends at the last ``": "``.
    """
    if isinstance(v, str):
        text = v.strip()
        if text.startswith(("{", "[")):
            try:
                v = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        else:
            parsed: dict[str, str] = {}
            for n, line in enumerate(text.splitlines(), 1):
                line = line.split(" #", 1)[0].rstrip()
                if not line.strip() or line.lstrip().startswith(("#", "---")):
                    continue
                key, sep, value = line.rpartition(": ")
                if not sep and line.endswith(":"):
                    key, sep, value = line[:-1], ":", ""
                if not sep or not _unquote(key) or not _unquote(value):
                    raise ValueError(f"line {n}: expected 'source_type: destination_type'")
                parsed[_unquote(key)] = _unquote(value)
            v = parsed
    if not isinstance(v, Mapping):
        raise ValueError(f"expected a map of source type to destination type, got {_kind(v)}")
    out = {}
    for key, value in v.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"type {str(key)!r}: expected a destination type name, got {_shown(value)}")
        out[str(key).strip()] = value.strip()
    return out


def read_type_mappings_file(path: str) -> dict[str, str]:
    """The type map in the file at ``path`` (``~`` expanded; JSON, or a flat YAML map), or ValueError saying why
    it cannot be used."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, FileNotFoundError):
            reason = "no such file"
        elif isinstance(exc, IsADirectoryError):
            reason = "it is a directory"
        else:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ValueError(f"cannot read {str(p)!r}: {reason} (expected a JSON or YAML file of source type ->"
                         " destination type)") from None
    try:
        return parse_type_mappings(text)
    except ValueError as exc:
        raise ValueError(f"{str(p)!r}: {exc}") from None


def _type_mappings_file(v: Any) -> str:
    path = parse_text(v)
    read_type_mappings_file(path)  # refused now, not when the sink first opens it
    return path


TypeMappings = Annotated[dict[str, str], BeforeValidator(parse_type_mappings)]
TypeMappingsFile = Annotated[str, BeforeValidator(_type_mappings_file)]


class MaterializingOptions(DestinationOptions):
    """"Destination Type Mappings": destinations that materialize tables."""

    type_mappings: TypeMappings | None = None
    type_mappings_file: TypeMappingsFile | None = None

    def mappings(self) -> dict[str, str]:
        """The type overrides: the file's map, then ``type_mappings`` on top."""
        out: dict[str, str] = {}
        if self.type_mappings_file:
            out.update(read_type_mappings_file(self.type_mappings_file))
        out.update(self.type_mappings or {})
        return out

    def mapping_keys(self) -> list[tuple[str, str]]:
        """(option, source type key) of every type mapping: the file's, then the inline ones."""
        out: list[tuple[str, str]] = []
        if self.type_mappings_file:
            try:
                out += [("type_mappings_file", k) for k in read_type_mappings_file(self.type_mappings_file)]
            except ValueError:
                pass  # the file was read when the options were validated; the sink reports it if it went since
        out += [("type_mappings", k) for k in (self.type_mappings or {})]
        return out


class TableWriterOptions(MaterializingOptions):
    """Row-level change application into tables (DuckDB, Snowflake, ClickHouse)."""

    schema_: Text | None = Field(default=None, alias="schema")
    table: Text | None = None
    write_mode: choice("target", "append") = "target"
    batch_mode: choice("target", "staging") = "target"
    batch_resolution: choice("none", "append", "replace") = "none"
    staging_schema: Text | None = None
    staging_table: Text | None = None
    staging_suffix: RequiredText = "_staging"
    meta_table_enabled: Bool = True

    @property
    def schema_name(self) -> str | None:
        """The ``schema`` option (``schema_`` in Python)."""
        return self.schema_


__all__ = ["MaterializingOptions", "TableWriterOptions", "TypeMappings", "TypeMappingsFile", "parse_type_mappings",
           "read_type_mappings_file"]
