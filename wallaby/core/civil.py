"""Proleptic Gregorian day numbers for any year (astronomical numbering: year 0 is 1 BC), as Postgres counts.

Python's datetime stops at years 1 and 9999; Postgres dates run from 4713 BC to 5874897 AD.
"""

from __future__ import annotations


def civil_from_days(z: int) -> tuple[int, int, int]:
    """(year, month, day), proleptic Gregorian, year 0 = 1 BC, for any day number since 1970-01-01."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
