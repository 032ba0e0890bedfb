"""The Kafka destination's partition hash, computed column-wise for integer keys, against the row-by-row reading
it replaces (``key_hash`` of each of ``row_keys``): a key's partition must never move between versions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.kafka.writer import _int_key_json, key_hash, key_hashes
from tests.builders import Stream, col, dele, ins, table, upd
from wallaby.wire.model import row_keys

INT_TYPES = {"int2": (-(2**15), 2**15 - 1), "int4": (-(2**31), 2**31 - 1), "int8": (-(2**63), 2**63 - 1),
             "oid": (0, 2**32 - 1)}


def oracle(seg) -> list[int]:
    return [key_hash(seg.table.qualified, k) for k in row_keys(seg)]


@st.composite
def segments(draw):
    types = draw(st.lists(st.sampled_from(sorted(INT_TYPES)), min_size=1, max_size=3))
    keys = [f"k{i}" for i in range(len(types))]
    t = table("things", [*(col(k, ty, key=True) for k, ty in zip(keys, types, strict=True)), col("v", "text")])

    def key_values(nulls: bool) -> dict:
        return {k: draw(st.none() if nulls and draw(st.booleans()) else st.integers(*INT_TYPES[ty]))
                for k, ty in zip(keys, types, strict=True)}

    changes = []
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["insert", "update", "update_old_key", "delete", "delete_no_key"]))
        if op == "insert":
            changes.append(ins(**key_values(False), v="x"))
        elif op == "update":
            changes.append(upd({**key_values(False), "v": "y"}))
        elif op == "update_old_key":  # the key changed: the old one comes as the before image
            changes.append(upd({**key_values(False), "v": "y"}, before=key_values(True)))
        elif op == "delete":
            changes.append(dele(**key_values(True)))
        else:
            changes.append(dele())
    s = Stream()
    return s.rows(t, *changes)


@settings(max_examples=300, deadline=None)
@given(segments())
def test_integer_keys_hash_column_wise_as_row_by_row(seg):
    assert _int_key_json(seg) is not None  # the column-wise path was taken
    assert key_hashes(seg) == oracle(seg)


def test_other_keys_and_keyless_tables_take_the_row_by_row_path():
    s = Stream()
    text_key = table("named", [col("name", "text", key=True), col("n", "int4")])
    seg = s.rows(text_key, ins(name='a "quoted" key', n=1), upd({"name": "b", "n": 2}, before={"name": "a"}),
                 dele(name="b"))
    assert _int_key_json(seg) is None and key_hashes(seg) == oracle(seg)
    keyless = table("log", [col("n", "int4"), col("v", "text")])
    seg = s.rows(keyless, ins(n=1, v="a"), ins(n=2, v="b"))
    assert _int_key_json(seg) is None and key_hashes(seg) == oracle(seg)


def test_a_mixed_key_of_integer_and_text_takes_the_row_by_row_path():
    s = Stream()
    t = table("mixed", [col("id", "int8", key=True), col("name", "text", key=True)])
    seg = s.rows(t, ins(id=1, name="a"), dele(id=1, name="a"))
    assert _int_key_json(seg) is None and key_hashes(seg) == oracle(seg)
