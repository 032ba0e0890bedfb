"""Postgres array text (``array_out``) -> nested Arrow lists.

Array values arrive as text: ``{1,2,NULL}``, ``{{1,2},{3,4}}``,
``{"a,b","NULL",NULL,"x\\"y"}``, ``{}``, or ``[0:1]={1,2}`` when a lower bound
is not 1. :func:`decode_array` turns a column of such texts into one
``list<...>`` array nested ``ndims`` deep, whose leaves are decoded by the
element type's own decoder (passed in by :mod:`sources.postgres.pgtypes`).

What ``array_out`` guarantees, and this module relies on (the tests check it
against the server): elements are separated by the type's delimiter (``,``;
``;`` for ``box``); an element is double-quoted when it is empty, equals
``NULL`` in any case, or holds a quote, backslash, brace, the delimiter or
white space, and inside quotes ``"`` and ``\\`` are backslash-escaped; an
unquoted ``NULL`` is an SQL NULL element; ``{}`` is the empty array (zero
dimensions, accepted whatever the column's dimensions); arrays are
rectangular. The bounds decoration ``[lo:hi]=`` is dropped: values are kept,
lower bounds are not.

Two paths. Vectorised (Arrow ``split_pattern``, no Python per value) for a
batch of 1-D values without escapes, and either without quotes at all or of
an element type whose text never holds a delimiter, brace, quote or
backslash (numbers, dates, timestamps, intervals, bool, uuid: there quotes
only wrap a whole element with a space in it). Per value in Python for the
rest (multi-dimensional, bounds, quoted text).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Decodes a flat pa.string() array of element texts (nulls allowed) into the element Arrow array.
ElementDecoder = Callable[[pa.Array], pa.Array]

_UNESCAPE = re.compile(r"\\(.)", re.S)


_WS = " \t\n\r\v\f"  # what array_in skips and array_out quotes (ASCII only: U+0085 and U+00A0 are data)


def _is_null(word: str) -> bool:
    """An unquoted NULL (case-insensitive, ASCII only, as pg_strcasecmp)."""
    return word == "NULL" or (len(word) == 4 and word.isascii() and word.upper() == "NULL")


class ArrayParseError(ValueError):
    """Malformed array text (the message shows the first 80 characters)."""


@functools.cache
def _tokens(delim: str) -> re.Pattern[str]:
    d = re.escape(delim)
    # a quoted element | a brace or the delimiter | an unquoted element
    return re.compile(rf'"((?:[^"\\]|\\.)*)"|([{{}}]|{d})|((?:[^{{}}"\\{d}]|\\.)+)', re.S)


@functools.cache
def _elements(delim: str) -> re.Pattern[str]:
    """Elements of a 1-D array's inner text: a quoted element | an unquoted one."""
    d = re.escape(delim)
    return re.compile(rf'"((?:[^"\\]|\\.)*)"|([^"{d}]+)', re.S)


def parse_array(text: str, delim: str = ",") -> list[Any]:
    """One array text -> nested lists of element strings (``None`` for an unquoted NULL).

    ``'{}'`` gives ``[]``; a quoted ``"NULL"`` is the string ``'NULL'``.
    Raises :class:`ArrayParseError` on malformed text.
    """
    s = text
    if s[:1] == "[":  # bounds decoration: [lo:hi][lo:hi]={...}
        eq = s.find("=")
        if eq < 0:
            raise ArrayParseError(f"malformed array bounds in {text[:80]!r}")
        s = s[eq + 1 :]
    s = s.strip(_WS)
    if s[:1] != "{" or s[-1:] != "}":
        raise ArrayParseError(f"array text must be enclosed in braces: {text[:80]!r}")
    if s[1:2] != "{":  # one dimension
        inner = s[1:-1]
        if '"' not in inner and "\\" not in inner and "{" not in inner and "}" not in inner:  # unquoted: common
            if not inner.strip(_WS):
                return []
            return [None if _is_null(e) else e for e in (x.strip(_WS) for x in inner.split(delim))]
        if '"' in inner:  # quoted elements (array_out escapes only inside quotes)
            return [
                (None if _is_null(bare) else bare) if bare else (_UNESCAPE.sub(r"\1", q) if "\\" in q else q)
                for q, bare in _elements(delim).findall(inner)
            ]
    root: list[Any] | None = None
    stack: list[list[Any]] = []
    cur: list[Any] | None = None
    expect_elem = True  # just after '{' or a delimiter
    pos = 0
    for m in _tokens(delim).finditer(s):
        if m.start() != pos and s[pos : m.start()].strip(_WS):
            raise ArrayParseError(f"unexpected {s[pos]!r} at offset {pos} in {text[:80]!r}")
        pos = m.end()
        quoted, punct, bare = m.groups()
        if punct == "{":
            if not expect_elem:
                raise ArrayParseError(f"missing delimiter before '{{' in {text[:80]!r}")
            new: list[Any] = []
            if cur is None:
                if root is not None:
                    raise ArrayParseError(f"trailing text after array in {text[:80]!r}")
                root = new
            else:
                cur.append(new)
            stack.append(new)
            cur = new
            expect_elem = True
        elif punct == "}":
            if not stack:
                raise ArrayParseError(f"unbalanced '}}' in {text[:80]!r}")
            stack.pop()
            cur = stack[-1] if stack else None
            expect_elem = False
        elif punct:  # the delimiter
            if cur is None or expect_elem:
                raise ArrayParseError(f"unexpected delimiter in {text[:80]!r}")
            expect_elem = True
        else:
            if cur is None or not expect_elem:
                raise ArrayParseError(f"unexpected element in {text[:80]!r}")
            if quoted is not None:
                cur.append(_UNESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted)
            else:
                word = bare.strip(_WS)
                if not word:
                    continue  # white space between tokens
                if _is_null(word):
                    cur.append(None)
                else:
                    cur.append(_UNESCAPE.sub(r"\1", word) if "\\" in word else word)
            expect_elem = False
    if pos != len(s) or root is None or stack:
        raise ArrayParseError(f"unterminated array in {text[:80]!r}")
    return root


def depth(value: list[Any]) -> int:
    """Dimensions of a parsed array: 1 for ``{1,2}``, 2 for ``{{1},{2}}``; 1 for the empty array."""
    d = 1
    while value and isinstance(value[0], list):
        d += 1
        value = value[0]
    return d


def decode_array(
    strings: pa.Array,
    ndims: int,
    decode_elems: ElementDecoder,
    *,
    delim: str = ",",
    quote_safe: bool = False,
    type_name: str = "array",
) -> pa.Array:
    """A pa.string() array of array texts -> ``list<...>`` nested ``ndims`` (min 1) deep.

    ``quote_safe``: the element type's text never holds the delimiter, braces,
    quotes or backslashes, so quotes can only wrap whole elements and quoted
    batches may take the vectorised path too. A value whose dimensions differ
    from ``ndims`` raises ValueError naming ``type_name`` and showing the first
    80 characters of the value.
    """
    ndims = max(ndims, 1)
    if delim == "," and len(strings) > strings.null_count:
        fast = _decode_vector(strings, ndims, decode_elems, quote_safe)
        if fast is not None:
            return fast
    return _decode_nested(strings.to_pylist(), ndims, delim, decode_elems, type_name)


def _value_bytes(strings: pa.Array) -> bytes:
    """The bytes of all values of a string array, concatenated (nulls contribute nothing)."""
    offs_buf, data = strings.buffers()[1], strings.buffers()[2]
    if data is None or len(strings) == 0:
        return b""
    offsets = np.frombuffer(offs_buf, dtype=np.int32, count=strings.offset + len(strings) + 1)
    start, end = int(offsets[strings.offset]), int(offsets[-1])
    return data.slice(start, end - start).to_pybytes()


def _offsets(lengths: pa.Array) -> pa.Array:
    out = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths.fill_null(0).to_numpy(zero_copy_only=False), out=out[1:])
    return pa.array(out)


def _decode_vector(strings: pa.Array, ndims: int, decode_elems: ElementDecoder, quote_safe: bool) -> pa.Array | None:
    """The vectorised path (Arrow string kernels); None when some value of the batch needs the parser.

    Taken when no value has escapes or bounds, and either no value has quotes
    or the element type is quote-safe: then ',' and the braces only ever
    delimit, and a d-dimensional value's sub-arrays are separated by
    '}'*(d-1) + ',' + '{'*(d-1).
    """
    raw = _value_bytes(strings)
    if b"\\" in raw or raw[:1] == b"[" or b"]={" in raw:
        return None  # escaped, or with bounds
    if b'"' in raw and not quote_safe:
        return None
    if ndims == 1:
        if raw.count(b"{") != len(strings) - strings.null_count:
            return None  # a value of more dimensions: the parser raises the error
    else:
        opening = "{" * ndims
        shape_ok = pc.or_(pc.equal(strings, "{}"),
                          pc.and_(pc.starts_with(strings, opening), pc.invert(pc.starts_with(strings, opening + "{"))))
        if not pc.all(shape_ok).as_py():
            return None
    cur = pc.utf8_slice_codeunits(strings, 1, -1)
    empty = pc.equal(cur, "")
    has_empty = pc.any(empty).as_py()
    level_lengths = []
    for d in range(ndims, 0, -1):
        sep = "}" * (d - 1) + "," + "{" * (d - 1)
        lengths = pc.add(pc.count_substring(cur, sep), 1)
        parts = pc.list_flatten(pc.split_pattern(cur, sep))
        if d == ndims and has_empty:  # each '{}' left one '' part; a real one would have been quoted
            lengths = pc.if_else(empty, 0, lengths)
            parts = parts.filter(pc.not_equal(parts, ""))
        level_lengths.append(lengths)
        if d > 1:
            cur = pc.utf8_trim(parts, "{}")
            if d > 2:
                cur = pc.binary_join_element_wise("{" * (d - 2), cur, "}" * (d - 2), "")
        else:
            cur = parts
    if b'"' in raw:
        cur = pc.replace_substring(cur, '"', "")
    is_null = pc.equal(cur, "NULL")
    if pc.any(is_null).as_py():
        cur = pc.if_else(is_null, pa.scalar(None, pa.string()), cur)
    arr = decode_elems(cur)
    for i, lengths in enumerate(reversed(level_lengths)):
        top = i == len(level_lengths) - 1
        mask = strings.is_null() if top and strings.null_count else None
        arr = pa.ListArray.from_arrays(_offsets(lengths), arr, mask=mask)
    return arr


def _decode_nested(
    texts: list[str | None], ndims: int, delim: str, decode_elems: ElementDecoder, type_name: str
) -> pa.Array:
    """Per value: parse, check dimensions, flatten; decode all elements in one call; rebuild with offsets."""
    levels: list[list[int]] = [[0] for _ in range(ndims)]  # offsets per nesting level
    flat: list[str | None] = []
    mask: list[bool] = []

    def walk(node: list[Any], level: int, text: str) -> None:
        if level == ndims - 1:
            if any(isinstance(x, list) for x in node):
                raise ValueError(f"{type_name}: array is not rectangular: {text[:80]!r}")
            flat.extend(node)
        else:
            for sub in node:
                if not isinstance(sub, list):
                    raise ValueError(f"{type_name}: array is not rectangular: {text[:80]!r}")
                walk(sub, level + 1, text)
        levels[level].append(levels[level][-1] + len(node))

    top = levels[0]
    for text in texts:
        if text is None:
            mask.append(True)
            top.append(top[-1])
            continue
        mask.append(False)
        try:
            value = parse_array(text, delim)
        except ArrayParseError as exc:
            raise ValueError(f"{type_name}: {exc}") from None
        if value and depth(value) != ndims:
            raise ValueError(
                f"{type_name}: value has {depth(value)} dimension(s), the column declares {ndims}: {text[:80]!r}"
            )
        if ndims == 1:
            flat.extend(value)
            top.append(top[-1] + len(value))
        elif value:
            walk(value, 0, text)
        else:
            top.append(top[-1])
    if ndims == 1 and any(isinstance(x, list) for x in flat):
        raise ValueError(f"{type_name}: array is not rectangular")
    arr = decode_elems(pa.array(flat, pa.string()))
    for level in range(ndims - 1, -1, -1):
        offsets = pa.array(levels[level], pa.int32())
        arr = pa.ListArray.from_arrays(offsets, arr, mask=pa.array(mask, pa.bool_()) if level == 0 else None)
    return arr
