"""Parsing Postgres array text output: ``{1,2,NULL}``, ``{{"a b","c\\"d"},{e,NULL}}``, ``[0:1]={1,2}``.

Elements come back as ``str`` (``None`` for an unquoted NULL; a quoted
``"NULL"`` is the string NULL), nested as deep as the value's dimensions.
"""

from __future__ import annotations


class ArrayParseError(ValueError):
    pass


def parse_array(text: str, delim: str = ",") -> list:
    """Nested lists of element strings. Raises ArrayParseError on malformed input."""
    s = text
    i = 0
    n = len(s)
    if s.startswith("["):  # dimension decoration: [lo:hi][lo:hi]={...}
        eq = s.find("=")
        if eq < 0:
            raise ArrayParseError(f"malformed array bounds in {text[:80]!r}")
        i = eq + 1
    if i >= n or s[i] != "{":
        raise ArrayParseError(f"array text must start with '{{': {text[:80]!r}")

    def parse_level(i: int) -> tuple[list, int]:
        # s[i] == '{'
        out: list = []
        i += 1
        if i < n and s[i] == "}":
            return out, i + 1
        while i < n:
            c = s[i]
            if c == "{":
                sub, i = parse_level(i)
                out.append(sub)
            elif c == '"':
                i += 1
                buf = []
                while i < n and s[i] != '"':
                    if s[i] == "\\":
                        i += 1
                    buf.append(s[i])
                    i += 1
                if i >= n:
                    raise ArrayParseError(f"unterminated quoted element in {text[:80]!r}")
                i += 1
                out.append("".join(buf))
            else:
                j = i
                buf = []
                while j < n and s[j] != delim and s[j] != "}":
                    if s[j] == "\\":
                        j += 1
                    buf.append(s[j])
                    j += 1
                raw = "".join(buf).strip()
                out.append(None if raw.upper() == "NULL" and "\\" not in s[i:j] else raw)
                i = j
            if i >= n:
                break
            c = s[i]
            if c == delim:
                i += 1
                while i < n and s[i] == " ":
                    i += 1
                continue
            if c == "}":
                return out, i + 1
            raise ArrayParseError(f"unexpected {c!r} at offset {i} in {text[:80]!r}")
        raise ArrayParseError(f"unterminated array in {text[:80]!r}")

    value, end = parse_level(i)
    if s[end:].strip():
        raise ArrayParseError(f"trailing text after array in {text[:80]!r}")
    return value


def depth(value: list) -> int:
    """Dimensions of a parsed array: 1 for {1,2}, 2 for {{1},{2}}; an empty array has 1."""
    d = 1
    while value and isinstance(value[0], list):
        d += 1
        value = value[0]
    return d
