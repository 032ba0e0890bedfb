"""What every table destination's type map shares (sinks/<destination>/types.py holds its default map): reading a
``numeric`` typmod, recognising arrays, and the order a source type is looked up in: the user's ``type_mappings``
by ``ext:<extension>.<type_name>``, ``ext:<extension>``, the type's name; then ``numeric`` to the destination's
decimal when it fits 38 digits; then the default map."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from wallaby.core.changes import Column

NUMERIC_NAMES = ("numeric", "decimal")
_VARHDRSZ = 4


def numeric_precision_scale(typmod: int) -> tuple[int, int] | None:
    """``(precision, scale)`` of a ``numeric`` typmod, None when unconstrained.

    Scale is signed since Postgres 15 (an 11-bit field), so ``numeric(3,-2)`` decodes as ``(3, -2)``.
    """
    if typmod < _VARHDRSZ:
        return None
    value = typmod - _VARHDRSZ
    precision = (value >> 16) & 0xFFFF
    scale = ((value & 0x7FF) ^ 1024) - 1024
    return precision, scale


def list_depth(arrow_type: pa.DataType) -> int:
    depth = 0
    while pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        depth += 1
        arrow_type = arrow_type.value_type
    return depth


def is_array(column: Column) -> bool:
    return column.type_name.startswith("_") or list_depth(column.arrow_type) > 0


def scalar_type(name: str, typmod: int, overrides: Mapping[str, str], extension: str | None, *,
                default_map: Mapping[str, str], decimal: str, fallback: str) -> str | None:
    """The destination type of a scalar source type (the module docstring's order); ``decimal`` formats a
    ``numeric(p,s)`` of at most 38 digits (``{p}``, ``{s}``), ``fallback`` (text) takes the others; None: not in
    the map."""
    if extension:
        for key in (f"ext:{extension}.{name}", f"ext:{extension}"):
            if key in overrides:
                return overrides[key]
    if name in overrides:
        return overrides[name]
    if name in NUMERIC_NAMES:
        ps = numeric_precision_scale(typmod)
        if ps is None:
            return fallback  # unconstrained numeric: any number of digits, NaN, +-Infinity
        precision, scale = ps
        return decimal.format(p=precision, s=scale) if 1 <= precision <= 38 and 0 <= scale <= precision else fallback
    return default_map.get(name)


@dataclass(frozen=True)
class TypeMap:
    """A destination's default type map, its decimal (``{p}``, ``{s}``) and its text fallback, applied to columns."""

    default_map: Mapping[str, str]
    decimal: str
    fallback: str

    def scalar(self, name: str, typmod: int, overrides: Mapping[str, str], extension: str | None) -> str | None:
        return scalar_type(name, typmod, overrides, extension, default_map=self.default_map, decimal=self.decimal,
                           fallback=self.fallback)

    def of(self, column: Column, overrides: Mapping[str, str]) -> str:
        """A scalar column's type: its own, else its domain's base type's, else the fallback."""
        found = self.scalar(column.type_name, column.typmod, overrides, column.extension)
        if found is None and column.base_type and column.base_type != column.type_name:
            found = self.scalar(column.base_type, column.typmod, overrides, None)
        return found or self.fallback

    def element(self, column: Column, overrides: Mapping[str, str]) -> str:
        """An array column's element type (``_int4`` -> ``int4``), else the fallback."""
        name = column.type_name
        element = column.base_type or (name[1:] if name.startswith("_") else name)
        return self.scalar(element, column.typmod, overrides, column.extension) or self.fallback


__all__ = ["NUMERIC_NAMES", "TypeMap", "is_array", "list_depth", "numeric_precision_scale", "scalar_type"]
