"""The flow store on both backends: lifecycle transitions, generations, the fence on checkpoints, DDL events,
migrations."""

from __future__ import annotations

import pytest

from wallaby.core.changes import Position
from wallaby.core.errors import AlreadyExistsError, FencedError, IllegalStateError, NotFoundError
from wallaby.state.checkpoints import Checkpoint, Checkpoints
from wallaby.state.flowstore import FlowStore
from wallaby.state.sqldb import PostgresDatabase, SQLiteDatabase


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path, pgdb):
    d = SQLiteDatabase(tmp_path / "s.db") if request.param == "sqlite" else PostgresDatabase(pgdb)
    yield d
    d.close()


def test_lifecycle_and_generations(db):
    store = FlowStore(db, own_db=False)
    store.create("f", "F", {"id": "f"})
    with pytest.raises(AlreadyExistsError):
        store.create("f", "F", {})
    with pytest.raises(NotFoundError):
        store.get("g")
    assert store.get("f").state == "created"
    with pytest.raises(IllegalStateError, match="never started"):
        store.transition("f", "stop")
    with pytest.raises(IllegalStateError, match="use StartFlow"):
        store.transition("f", "resume")
    assert store.transition("f", "start").state == "running"
    with pytest.raises(IllegalStateError, match="already running"):
        store.transition("f", "start")
    assert store.transition("f", "pause").state == "paused"
    with pytest.raises(IllegalStateError, match="use ResumeFlow"):
        store.transition("f", "start")
    assert store.transition("f", "resume").state == "running"
    assert store.transition("f", "stop").state == "stopped"
    assert store.transition("f", "start").state == "running"  # a stopped flow starts again

    assert store.claim("f") == 1 and store.claim("f") == 2
    store.check_generation("f", 2)
    with pytest.raises(FencedError, match="generation 1.*at generation 2"):
        store.check_generation("f", 1)
    # A report from an older worker does not change the flow.
    with pytest.raises(FencedError):
        store.transition("f", "fail", "old worker died", generation=1)
    assert store.transition("f", "fail", "boom", generation=2).state_reason == "boom"

    store.update_spec("f", "F2", {"id": "f", "x": 1})
    again = store.get("f")
    assert (again.name, again.spec["x"], again.state, again.generation) == ("F2", 1, "failed", 2)
    store.delete("f")
    with pytest.raises(FencedError, match="deleted"):
        store.check_generation("f", 2)


def test_fenced_checkpoint_is_not_written(db):
    cps = Checkpoints(db, own_db=False)
    flows = cps.flow_store
    flows.create("f", "f", {})
    gen = flows.claim("f")
    cps.put(Checkpoint("f", "s", 100, Position(90, 1), 1.0), generation=gen)
    flows.claim("f")
    with pytest.raises(FencedError):
        cps.put(Checkpoint("f", "s", 200, Position(190, 1), 2.0), generation=gen)
    assert cps.get("f", "s").confirmed_lsn == 100
    assert cps.delete("f") == 1 and cps.get("f", "s") is None


def test_ddl_events(db):
    store = FlowStore(db, own_db=False)
    a = store.add_ddl("f", "public.t", "ALTER TABLE t ADD c int", "0/10")
    b = store.add_ddl("f", "public.t", "ALTER TABLE t DROP c", "0/20")
    store.add_ddl("g", "public.u", "CREATE TABLE u ()", "0/30", status="applied")
    assert [e.id for e in store.list_ddl("pending")] == [a.id, b.id]
    assert [e.flow_id for e in store.list_ddl(flow_id="g")] == ["g"]
    assert store.set_ddl_status(a.id, "approved").status == "approved"
    assert store.set_ddl_status(a.id, "applied").status == "applied"
    assert store.set_ddl_status(b.id, "rejected").status == "rejected"
    with pytest.raises(IllegalStateError, match="rejected; it cannot become approved"):
        store.set_ddl_status(b.id, "approved")
    with pytest.raises(NotFoundError):
        store.set_ddl_status(999, "approved")


def test_migrations_run_once(db):
    FlowStore(db, own_db=False)
    FlowStore(db, own_db=False)  # a second open (a restart) finds the schema in place
    rows = db.run("SELECT component, version FROM wallaby_schema_migrations ORDER BY 1, 2")
    assert [tuple(r) for r in rows] == [("flows", 1), ("flows", 2), ("flows", 3), ("flows", 4)]
