"""sources.postgres.tuples.parse_messages (column-at-a-time TupleData parsing) against a plain row-by-row reading.

The server's own bytes are covered end to end (test_pgoutput.py, test_tricky_table.py); this pins the
vectorised parser on every mix the protocol allows: NULL ('n'), unchanged TOAST ('u'), text ('t') and
binary ('b') values of every length around the 12-byte inline limit of Arrow's binary_view, rows with no
image at all, and images that start at different offsets of their messages.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sources.postgres.tuples import KIND_BINARY, KIND_NULL, KIND_TEXT, KIND_UNCHANGED
from tests.builders import parse_tuples

# one column of one row: (kind, value)
_value = st.one_of(
    st.tuples(st.just(KIND_NULL), st.none()),
    st.tuples(st.just(KIND_UNCHANGED), st.none()),
    st.tuples(st.sampled_from([KIND_TEXT, KIND_BINARY]), st.binary(max_size=40)),
    st.tuples(st.just(KIND_TEXT), st.sampled_from([b"", b"x" * 12, b"y" * 13, b"\x00" * 4, "é🦘".encode()])),
)


def _encode(cols: list[tuple[int, bytes | None]], prefix: bytes) -> tuple[bytes, int]:
    out = [prefix, struct.pack(">h", len(cols))]
    for kind, v in cols:
        out.append(bytes([kind]))
        if v is not None:
            out.append(struct.pack(">i", len(v)) + v)
    return b"".join(out), len(prefix)


def _read(image: tuple[bytes, int] | None, ncols: int) -> list[tuple[bytes | None, bool]]:
    """Row by row: each column's value (None unless 't'/'b') and whether it was 'unchanged'."""
    if image is None:
        return [(None, False)] * ncols
    buf, pos = image
    (n,) = struct.unpack_from(">h", buf, pos)
    pos += 2
    out = []
    for _ in range(n):
        kind = buf[pos]
        if kind in (KIND_TEXT, KIND_BINARY):
            (ln,) = struct.unpack_from(">i", buf, pos + 1)
            out.append((buf[pos + 5 : pos + 5 + ln], False))
            pos += 5 + ln
        else:
            out.append((None, kind == KIND_UNCHANGED))
            pos += 1
    return out


@given(
    st.integers(1, 6).flatmap(
        lambda ncols: st.tuples(
            st.just(ncols),
            st.lists(
                st.one_of(
                    st.none(),
                    st.tuples(st.lists(_value, min_size=ncols, max_size=ncols), st.binary(min_size=1, max_size=9)),
                ),
                min_size=1,
                max_size=30,
            ),
        )
    )
)
def test_parse_tuples_matches_a_row_by_row_reading(case):
    ncols, rows = case
    images = [None if r is None else _encode(r[0], r[1]) for r in rows]
    got = parse_tuples(images, ncols)
    want = [_read(img, ncols) for img in images]
    for c in range(ncols):
        got.values[c].validate(full=True)  # Arrow's own checks of the views (inline up to 12 bytes, offsets)
        assert got.values[c].to_pylist() == [w[c][0] for w in want]
        flags = [w[c][1] for w in want]
        if any(flags):
            assert got.unchanged[c] is not None and got.unchanged[c].tolist() == flags
        else:
            assert got.unchanged[c] is None


def test_parse_tuples_refuses_a_row_of_another_width():
    img = _encode([(KIND_TEXT, b"a"), (KIND_NULL, None)], b"I")
    with pytest.raises(ValueError, match="a row has 2 columns, its Relation message 3"):
        parse_tuples([img], 3)
