"""Canonical values <-> JSON-friendly values, by Arrow type (used by the json format and record_json payloads).

| Arrow (source) | JSON |
|---|---|
| bool, ints, string | as is |
| float32/64 | number; ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` |
| decimal128 | string (exact) |
| binary (bytea) | base64 string |
| timestamp[us, tz=UTC] | ``"2024-03-10T07:30:00.123456Z"``, ``"infinity"``, ``"-infinity"`` (1) |
| timestamp[us] | the same without ``Z`` |
| date32 | ``"2024-03-10"``, expanded years, ``"infinity"`` / ``"-infinity"`` |
| time64[us] | ``"24:00:00.000000"`` |
| month_day_nano_interval | ``{"months": m, "days": d, "nanoseconds": ns}`` |
| list | array, recursively |

(1) Years outside 0000-9999 carry a sign (ISO 8601 expanded: ``"-0043-03-15T..."``;
    year 0 is 1 BC, as Postgres counts).
"""

from __future__ import annotations

import base64
import math
import re
from decimal import Decimal
from typing import Any

import pyarrow as pa

from wallaby.core.civil import civil_from_days, days_from_civil

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
US_PER_DAY = 86_400_000_000


def _year(y: int) -> str:
    return f"{y:04d}" if 0 <= y <= 9999 else f"{y:+05d}"


def _date_text(days: int) -> str:
    y, m, d = civil_from_days(days)
    return f"{_year(y)}-{m:02d}-{d:02d}"


def _time_text(us: int) -> str:
    s, frac = divmod(us, 1_000_000)
    h, rest = divmod(s, 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}.{frac:06d}"


_DATE_RE = re.compile(r"^([+-]?\d{4,})-(\d{2})-(\d{2})")
_TIME_RE = re.compile(r"(\d{2}):(\d{2}):(\d{2})\.(\d{6})")


def _parse_date(text: str) -> int:
    m = _DATE_RE.match(text)
    if not m:
        raise ValueError(f"not a date: {text!r}")
    return days_from_civil(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _parse_time(text: str) -> int:
    m = _TIME_RE.search(text)
    if not m:
        raise ValueError(f"not a time: {text!r}")
    h, mi, s, f = (int(g) for g in m.groups())
    return ((h * 60 + mi) * 60 + s) * 1_000_000 + f


def to_json(v: Any, t: pa.DataType) -> Any:
    """A canonical value of Arrow type ``t`` as a JSON value."""
    if v is None:
        return None
    if pa.types.is_floating(t):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if pa.types.is_decimal(t):
        return str(v)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return base64.b64encode(v).decode()
    if pa.types.is_timestamp(t):
        if v == INT64_MAX:
            return "infinity"
        if v == INT64_MIN:
            return "-infinity"
        days, us = divmod(v, US_PER_DAY)
        return f"{_date_text(days)}T{_time_text(us)}{'Z' if t.tz else ''}"
    if pa.types.is_date32(t):
        if v == INT32_MAX:
            return "infinity"
        if v == INT32_MIN:
            return "-infinity"
        return _date_text(v)
    if pa.types.is_time64(t):
        return _time_text(v)
    if pa.types.is_interval(t):
        return {"months": v[0], "days": v[1], "nanoseconds": v[2]}
    if pa.types.is_list(t):
        return [to_json(x, t.value_type) for x in v]
    return v


def from_json(v: Any, t: pa.DataType) -> Any:
    """The inverse of :func:`to_json`."""
    if v is None:
        return None
    if pa.types.is_floating(t):
        return float(v) if isinstance(v, str) else v
    if pa.types.is_decimal(t):
        return Decimal(v)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return base64.b64decode(v)
    if pa.types.is_timestamp(t):
        if v == "infinity":
            return INT64_MAX
        if v == "-infinity":
            return INT64_MIN
        date, _, time = v.partition("T")
        return _parse_date(date) * US_PER_DAY + _parse_time(time)
    if pa.types.is_date32(t):
        if v == "infinity":
            return INT32_MAX
        if v == "-infinity":
            return INT32_MIN
        return _parse_date(v)
    if pa.types.is_time64(t):
        return _parse_time(v)
    if pa.types.is_interval(t):
        return (v["months"], v["days"], v["nanoseconds"])
    if pa.types.is_list(t):
        return [from_json(x, t.value_type) for x in v]
    return v


def timestamp_text(us: int) -> str:
    return to_json(us, pa.timestamp("us", tz="UTC"))


def timestamp_value(text: str) -> int:
    return from_json(text, pa.timestamp("us", tz="UTC"))
