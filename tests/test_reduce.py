"""The shared epoch reduction (sinks/sql/reduce.py) against a row-by-row model, in a private in-memory DuckDB as the
warehouse destinations run it: the state before an epoch plus the reduction (delete every touched key, insert the
final rows, values marked ``__keep`` taken from the state before under ``__from``) equals the state after applying
the epoch's changes one by one; for keyless tables, the multiset plus the net copies equals the multiset after."""

from __future__ import annotations

from collections import Counter

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinks.sql.merge import merge_pending
from sinks.sql.reduce import FROM, KEEP, VALUE, reduce_keyed, reduce_keyless
from tests.builders import Stream, col, dele, ins, table, upd

KV = table("kv", [col("id", "int4", key=True), col("v", "text"), col("big", "text")])
BAG = table("bag", [col("a", "int4", key=True), col("b", "text", key=True)], replica_identity="f")


@st.composite
def keyed_epochs(draw):
    """A state before, the changes of one epoch (inserts, updates with unchanged TOAST values, key changes that
    keep them, deletes, on 6 keys) and the state after, applied one by one."""
    before = {k: (draw(st.sampled_from(["a", None])), draw(st.sampled_from(["X", "Y"])))
              for k in draw(st.sets(st.integers(0, 5), max_size=4))}
    model = dict(before)
    ops = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["ins", "upd", "upd", "del", "rekey"]))
        free = [k for k in range(6) if k not in model]
        used = sorted(model)
        v, big = draw(st.sampled_from(["a", "b", None])), draw(st.sampled_from(["X", "Y", "Z"]))
        if kind == "ins" and free:
            k = draw(st.sampled_from(free))
            ops.append(ins(id=k, v=v, big=big))
            model[k] = (v, big)
        elif kind == "upd" and used:
            k = draw(st.sampled_from(used))
            if draw(st.booleans()):
                ops.append(upd({"id": k, "v": v}, unchanged=["big"]))
                model[k] = (v, model[k][1])
            else:
                ops.append(upd({"id": k, "v": v, "big": big}))
                model[k] = (v, big)
        elif kind == "rekey" and used and free:
            k, k2 = draw(st.sampled_from(used)), draw(st.sampled_from(free))
            keep = draw(st.booleans())
            ops.append(upd({"id": k2, "v": v, **({} if keep else {"big": big})}, before={"id": k},
                           unchanged=["big"] if keep else None))
            old = model.pop(k)
            model[k2] = (v, old[1] if keep else big)
        elif kind == "del" and used:
            k = draw(st.sampled_from(used))
            ops.append(dele(id=k))
            del model[k]
    return before, ops, model


def _register(t, ops) -> tuple[duckdb.DuckDBPyConnection, object, dict]:
    s = Stream("f")
    seg = s.rows(t, *ops)
    columns = {c.name: c for c in t.columns}
    src = merge_pending(t, [seg], columns, append=False, duckdb_infinity=False)
    con = duckdb.connect()
    con.register("__wallaby_src", src)
    return con, src, columns


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keyed_epochs())
def test_keyed_reduction_applied_to_the_state_before_is_the_state_after(case):
    before, ops, after = case
    if not ops:
        return
    con, src, columns = _register(KV, ops)
    red = reduce_keyed(con, src, columns, ("id",), ["id", "v", "big"])
    state = dict(before)
    touched = [r[0] for r in con.execute("SELECT id FROM __wallaby_f").fetchall()]
    if red.resolve:
        rows = con.execute(f'SELECT id, v, "{VALUE}big", "{KEEP}big", "{FROM}id" FROM __wallaby_red').fetchall()
        final = {k: (v, before[frm][1] if keep else big) for k, v, big, keep, frm in rows}
    else:
        final = {k: (v, big) for k, v, big in con.execute(
            "SELECT s.id, s.v, s.big FROM __wallaby_src AS s JOIN __wallaby_f AS f USING (__seq) WHERE f.__set"
        ).fetchall()}
    for k in touched:
        state.pop(k, None)
    state.update(final)
    assert state == after
    red.drop(con)
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone() == (0,)


@st.composite
def keyless_epochs(draw):
    values = st.tuples(st.integers(0, 2), st.sampled_from(["x", "y", None]))
    bag = list(draw(st.lists(values, max_size=5)))
    before = list(bag)
    ops = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["ins", "upd", "del"]))
        if kind == "ins" or not bag:
            a, b = draw(values)
            ops.append(ins(a=a, b=b))
            bag.append((a, b))
        elif kind == "upd":
            old = bag.pop(draw(st.integers(0, len(bag) - 1)))
            a, b = draw(values)
            if draw(st.booleans()):
                ops.append(upd({"a": a}, before={"a": old[0], "b": old[1]}, unchanged=["b"]))
                b = old[1]
            else:
                ops.append(upd({"a": a, "b": b}, before={"a": old[0], "b": old[1]}))
            bag.append((a, b))
        else:
            old = bag.pop(draw(st.integers(0, len(bag) - 1)))
            ops.append(dele(a=old[0], b=old[1]))
    return before, ops, bag


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keyless_epochs())
def test_keyless_reduction_is_the_net_multiset_change(case):
    before, ops, after = case
    if not any(op.op != "insert" for op in ops):
        ops = [*ops, dele(a=ops[0].after["a"], b=ops[0].after["b"])]
        after = list(after)
        after.remove((ops[0].after["a"], ops[0].after["b"]))
    con, src, columns = _register(BAG, ops)
    reduce_keyless(con, src, columns)
    bag = Counter(before)
    for a, b, n in con.execute("SELECT a, b, __n FROM __wallaby_net").fetchall():
        bag[(a, b)] += n
        assert bag[(a, b)] >= 0
    assert +bag == Counter(after)
