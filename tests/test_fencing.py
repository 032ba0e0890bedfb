"""Generation fencing: a second worker of the same flow takes over; the older one stops before it advances the
slot or writes a checkpoint; nothing is lost or duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import duckdb
import psycopg
import pytest

from tests import WORKER
from tests.apiserver import ROOT, current_lsn, duck_rows, flow_file, pg_rows, wait_streaming
from wallaby.core.errors import FencedError
from wallaby.core.spec import load_flow
from wallaby.state.checkpoints import open_store


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update({"WALLABY_CHECKPOINT_PATH": str(tmp_path / "store.db"), "WALLABY_EPOCH_INTERVAL": "300ms",
                "PYTHONPATH": str(ROOT), "WALLABY_DUCKDB_LOCK_WAIT": "120"})
    return env


def _worker(env, flow_id: str, log) -> subprocess.Popen:
    return subprocess.Popen([*WORKER, "-flow-id", flow_id], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT)


def test_second_worker_fences_the_first(tmp_path, pgdb):
    with psycopg.connect(pgdb, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    path = flow_file(tmp_path, pgdb, "fence", duck=tmp_path / "t.duckdb")
    spec = json.loads(path.read_text())
    spec["destinations"].append({"name": "log", "type": "duckdb",
                                 "options": {"dsn": str(tmp_path / "log.duckdb"), "write_mode": "append"}})
    path.write_text(json.dumps(spec))
    env = _env(tmp_path)
    store = open_store(env)
    flow = load_flow(path)
    store.flow_store.create(flow.id, flow.name, flow.model_dump(mode="json"))

    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with psycopg.connect(pgdb, autocommit=True) as c:
            while not stop.is_set():
                written[0] += 1
                c.execute("INSERT INTO orders VALUES (%s, 'w')", (written[0],))
                time.sleep(0.005)

    log_a, log_b = open(tmp_path / "a.log", "wb"), open(tmp_path / "b.log", "wb")  # noqa: SIM115
    a = _worker(env, "fence", log_a)
    b = None
    t = threading.Thread(target=writer)
    try:
        wait_streaming(pgdb, "fence_slot")
        assert store.flow_store.get("fence").generation == 1
        t.start()
        deadline = time.monotonic() + 30
        while not store.list("fence") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.list("fence"), "worker A never checkpointed"

        b = _worker(env, "fence", log_b)  # claims generation 2
        assert a.wait(60) == 3, (tmp_path / "a.log").read_text()[-3000:]
        assert "fenced off" in (tmp_path / "a.log").read_text()
        assert store.flow_store.get("fence").generation == 2
        # A fenced worker cannot write a checkpoint, even if it tried.
        cp = store.get("fence", "fence_slot")
        with pytest.raises(FencedError):
            store.put(cp, generation=1)

        time.sleep(2)  # B streams while the writer keeps going
        stop.set()
        t.join()
        target = current_lsn(pgdb)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            cp = store.get("fence", "fence_slot")
            if cp is not None and cp.confirmed_lsn >= target:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("worker B did not catch up:\n" + (tmp_path / "b.log").read_text()[-3000:])
        b.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        stop.set()
        if t.is_alive():
            t.join()
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        log_a.close()
        log_b.close()
        store.close()

    assert duck_rows(tmp_path / "t.duckdb") == pg_rows(pgdb)
    assert len(pg_rows(pgdb)) == written[0]
    with duckdb.connect(str(tmp_path / "log.duckdb"), read_only=True) as d:
        total, distinct = d.execute("SELECT count(*), count(DISTINCT (__lsn, __ord)) FROM public.orders").fetchone()
    assert total == distinct == written[0]  # every insert exactly once, across both workers
