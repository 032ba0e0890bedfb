"""Reading a DuckDB file while a worker streams into it (the DuckDB destination's ``release_file``).

DuckDB lets one process at a time hold a file, even read only. With ``release_file=true`` (the default) the writer
closes the file once an epoch is committed and opens it again when it next needs it, so another process can open
it read only between epochs; with ``false`` it holds the file for the whole run (a reader gets DuckDB's lock error
until the worker stops).

The load is built so that a reader can tell a whole epoch from a part of one. Transaction ``b`` of the load writes

- ``marks``: one row ``(b, lo, k, changes)``, its first statement: ``lo`` is ``pg_current_wal_insert_lsn()`` there,
  so ``c(b-1) < lo(b) < c(b)`` for the commit LSNs ``c`` (one loader connection: ``b-1`` committed before ``b``
  began), ``k`` the rows it inserts, ``changes`` how many changes the transaction holds;
- ``items``: ``k`` new rows of batch ``b`` (``v = 0``), ``v = b`` on every row of batch ``b-3`` and the rows of
  batch ``b-20`` deleted;
- ``ledger``: its one row set to ``(last_batch = b, total = rows items holds)``.

A reader opens the file read only (the recipe of docs/destinations.md: retry on the lock error with a short
back-off, at most ``TRIES`` tries), reads the writer's high-water ``(lsn, ordinal)`` from ``__wallaby_state``
and the three tables, closes the file, and then checks against Postgres: the high-water is in transaction ``h``,
the last one whose ``lo`` is below its LSN (``lo(h) < c(h) = lsn < lo(h+1)``); its ordinal must be ``h``'s last
change (the high-water is at a transaction's end) and the tables must hold exactly what transactions ``1..h``
leave: every mark up to ``h`` and none after, the rows of batches ``h-19..h`` each whole, ``v`` set exactly on
those ``h`` updated, the ledger saying ``h``. What a writer committed past or short of its high-water, or a
transaction in part, is caught.

Limits the load stays within (what keeps every committed epoch at a transaction's end; docs/destinations.md):
the source cuts a batch at ``batch_size`` changes (default 100), at 3 MiB of messages, or after ``batch_timeout``
(default 1 s) even inside a transaction, and an epoch can end between any two batches; the writer also commits
early, mid-epoch, once a transaction holds ``WALLABY_DUCKDB_MAX_TX_BYTES`` (16 MiB) of changes. So the flow sets
``batch_size`` far above any transaction (a batch is then handed over at a transaction's end, when the stream has
nothing more for the moment) and ``batch_timeout`` well beyond the test, and the load (transactions of at most 122
changes, a few ms apart) writes a few hundred KB per epoch: no cut falls inside a transaction, and no epoch comes
near 3 MiB, let alone 16 MiB. With the source's default batching, reads of this test see parts of transactions
(measured: 15 of 36 reads); with ``release_file=false`` every read gives up (the first test fails either way).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import psycopg

from tests import WORKER
from tests.apiserver import ROOT, current_lsn, wait_streaming
from tests.flows import slot_confirmed

SLOT = "wallaby_readers"
TABLES = "public.items,public.marks,public.ledger"
LOAD_SECONDS = 8.0  # how long the load writes
TRIES = 40  # the reader's tries per read (back-off 10 ms doubling to 200 ms: ~7 s in all)

# The reader process: every EVERY seconds (until STOP exists) one read of the file, appended to OUT as a JSON line:
# how many tries the open took, whether it gave up (and on what), and what it saw. The checks are the test's.
READER = r'''
import json, sys, time
from pathlib import Path

import duckdb

path, out, stop, tries, every, reads = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), \
    float(sys.argv[5]), int(sys.argv[6])


def open_read_only(path, tries):
    """The recipe: read only, retry on DuckDB's lock error with a short back-off, at most `tries` tries."""
    delay = 0.01
    for attempt in range(1, tries + 1):
        try:
            return duckdb.connect(path, read_only=True), attempt
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or attempt == tries:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def read(con):
    """Everything the checks need, read at once (a short read: the writer waits while a reader holds the file)."""
    state = con.execute("SELECT lsn, ordinal FROM main.__wallaby_state WHERE flow_id = 'readers'"
                        " AND destination = 'duck'").fetchone()
    have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'public'").fetchall()}
    seen = {"hw": list(state) if state else None, "tables": sorted(have)}
    if "marks" in have:
        seen["marks"] = con.execute("SELECT batch, lo, k, changes FROM public.marks ORDER BY batch").fetchall()
    if "items" in have:
        seen["items"] = con.execute("SELECT batch, n, v FROM public.items ORDER BY batch, n").fetchall()
    if "ledger" in have:
        seen["ledger"] = con.execute("SELECT id, last_batch, total FROM public.ledger ORDER BY id").fetchall()
    return seen


n = 0
with open(out, "a") as f:
    while (reads and n < reads) or (not reads and not stop.exists()):
        n += 1
        entry = {"read": n}
        try:
            con, entry["tries"] = open_read_only(path, tries)
        except duckdb.Error as exc:
            entry.update(gave_up=f"{type(exc).__name__}: {exc}", tries=tries)
        else:
            try:
                entry["seen"] = read(con)
            except duckdb.Error as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                con.close()
        f.write(json.dumps(entry) + "\n")
        f.flush()
        time.sleep(every)
'''


# -- Postgres: the tables and the load ---------------------------------------------------------------------------------


def _create_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE items (batch int, n int, v int NOT NULL, pad text, PRIMARY KEY (batch, n))")
        c.execute("CREATE TABLE marks (batch int PRIMARY KEY, lo text NOT NULL, k int NOT NULL, changes int NOT NULL)")
        c.execute("CREATE TABLE ledger (id int PRIMARY KEY, last_batch int NOT NULL, total int NOT NULL)")


class Load(threading.Thread):
    """Transactions 1, 2, ... (the module docstring) on one connection, for ``seconds``, a few ms apart."""

    def __init__(self, dsn: str, seconds: float, first: int = 1, pause: float = 0.004):
        super().__init__(daemon=True)
        self.dsn, self.seconds, self.first, self.pause = dsn, seconds, first, pause
        self.done = 0  # transactions committed
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(7)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:  # each c.transaction() a transaction
                ks = dict(c.execute("SELECT batch, k FROM marks").fetchall())
                total = c.execute("SELECT count(*) FROM items").fetchone()[0]
                b = self.first
                end = time.monotonic() + self.seconds
                while time.monotonic() < end:
                    k = ks[b] = rnd.randint(5, 40)
                    updated, deleted = ks.get(b - 3, 0), ks.get(b - 20, 0)
                    total += k - deleted
                    with c.transaction():
                        c.execute("INSERT INTO marks VALUES (%s, pg_current_wal_insert_lsn()::text, %s, %s)",
                                  (b, k, 1 + k + updated + deleted + 1))
                        c.execute("INSERT INTO items SELECT %s, n, 0, repeat('x', 40 + n)"
                                  " FROM generate_series(1, %s) n", (b, k))
                        if updated:
                            c.execute("UPDATE items SET v = %s WHERE batch = %s", (b, b - 3))
                        if deleted:
                            c.execute("DELETE FROM items WHERE batch = %s", (b - 20,))
                        c.execute("INSERT INTO ledger VALUES (1, %s, %s) ON CONFLICT (id) DO UPDATE"
                                  " SET last_batch = excluded.last_batch, total = excluded.total", (b, total))
                    self.done += 1
                    b += 1
                    time.sleep(self.pause)
        except BaseException as exc:  # raised by the test
            self.error = exc


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def _pg_marks(dsn: str) -> list[tuple[int, str, int, int]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return [tuple(r) for r in c.execute("SELECT batch, lo, k, changes FROM marks ORDER BY batch").fetchall()]


def check(seen: dict, marks: list[tuple[int, str, int, int]]) -> list[str]:
    """What is wrong with one read ``seen`` (empty: it is the state after a whole transaction, the one of the
    high-water). ``marks``: Postgres's marks, read after the read."""
    hw = seen["hw"]
    if hw is None:  # nothing committed yet: nothing may be there
        held = [t for t in ("marks", "items", "ledger") if seen.get(t)]
        return [f"rows in {held} but no high-water"] if held else []
    lsn, ordinal = hw
    below = [m for m in marks if _lsn(m[1]) < lsn]
    if not below:
        return [f"high-water {hw} is before the load's first transaction"]
    h = below[-1][0]
    by_batch = {m[0]: m for m in marks}
    problems = []
    if ordinal != by_batch[h][3]:
        problems.append(f"high-water {hw} is inside transaction {h}: change {ordinal} of {by_batch[h][3]}")
    want_marks = [list(m) for m in marks if m[0] <= h]
    if [list(m) for m in seen.get("marks", [])] != want_marks:
        got = [m[0] for m in seen.get("marks", [])]
        problems.append(f"marks: {len(got)} rows (batches {got[:1]}..{got[-1:]}), want batches 1..{h}")
    want_items = [[b, n, b + 3 if b + 3 <= h else 0] for b in range(max(1, h - 19), h + 1)
                  for n in range(1, by_batch[b][2] + 1)]
    if [list(r) for r in seen.get("items", [])] != want_items:
        got: dict[int, list[int]] = {}
        for b, _, v in seen.get("items", []):
            got.setdefault(b, []).append(v)
        problems.append(f"items differ from the state after transaction {h}: batch -> values of v {got}")
    if [list(r) for r in seen.get("ledger", [])] != [[1, h, len(want_items)]]:
        problems.append(f"ledger {seen.get('ledger')}, want [[1, {h}, {len(want_items)}]]")
    return problems


# -- the worker and the reader -----------------------------------------------------------------------------------------


def _flow(tmp_path: Path, dsn: str, duck: Path, release_file: bool) -> Path:
    flow = {"id": "readers", "name": "readers",
            "source": {"name": "pg", "type": "postgres", "options": {
                "dsn": dsn, "slot": SLOT, "publication": "wallaby_readers", "publication_tables": TABLES,
                # batches cut only where a transaction ends (the module docstring)
                "batch_size": 100000, "batch_timeout": "120s", "status_interval": "1s"}},
            "destinations": [{"name": "duck", "type": "duckdb",
                              "options": {"dsn": str(duck), "release_file": release_file}}]}
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(flow))
    return path


def _start_worker(tmp_path: Path, flow: Path, **settings: str) -> tuple[subprocess.Popen, Path]:
    """``wallaby-worker -flow-file flow`` (epochs of 300 ms; ``settings``: more WALLABY_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLABY_")}
    env.update(WALLABY_CHECKPOINT_BACKEND="sqlite", WALLABY_CHECKPOINT_PATH=str(tmp_path / "c.db"),
               WALLABY_EPOCH_INTERVAL="300ms", PYTHONPATH=str(ROOT), **settings)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*WORKER, "-flow-file", str(flow)], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, log


def _stop_worker(proc: subprocess.Popen, log: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, log.read_text()[-3000:]


def _created(duck: Path, proc: subprocess.Popen, log: Path) -> None:
    """Until the worker's writer has created the file (bytewax builds it when the first batch comes)."""
    deadline = time.monotonic() + 60
    while not duck.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert duck.exists(), log.read_text()[-3000:]


def _caught_up(dsn: str, proc: subprocess.Popen, log: Path) -> None:
    """Until the slot is confirmed past everything written so far (every change is committed in DuckDB)."""
    target = current_lsn(dsn)
    deadline = time.monotonic() + 90
    while slot_confirmed(dsn, SLOT) < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert slot_confirmed(dsn, SLOT) >= target, log.read_text()[-3000:]


def _reader(tmp_path: Path, duck: Path, *, reads: int = 0, every: float = 0.1, tries: int = TRIES,
            name: str = "reads") -> tuple[subprocess.Popen, Path, Path]:
    """The reader process: ``reads`` reads (0: until its stop file exists), ``every`` seconds apart."""
    script = tmp_path / "reader.py"
    script.write_text(READER)
    out, stop = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.stop"
    proc = subprocess.Popen([sys.executable, str(script), str(duck), str(out), str(stop), str(tries), str(every),
                             str(reads)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, out, stop


def _reads(proc: subprocess.Popen, out: Path, stop: Path | None = None) -> list[dict]:
    if stop is not None:
        stop.touch()
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, output.decode()[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def _duck_tables(duck: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(duck), read_only=True) as d:
        return {"items": d.execute("SELECT batch, n, v, pad FROM public.items ORDER BY batch, n").fetchall(),
                "marks": d.execute("SELECT batch, lo, k, changes FROM public.marks ORDER BY batch").fetchall(),
                "ledger": d.execute("SELECT id, last_batch, total FROM public.ledger ORDER BY id").fetchall()}


def _pg_tables(dsn: str) -> dict[str, list[tuple]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return {"items": c.execute("SELECT batch, n, v, pad FROM items ORDER BY batch, n").fetchall(),
                "marks": c.execute("SELECT batch, lo, k, changes FROM marks ORDER BY batch").fetchall(),
                "ledger": c.execute("SELECT id, last_batch, total FROM ledger ORDER BY id").fetchall()}


# -- the tests ---------------------------------------------------------------------------------------------------------


def test_a_reader_gets_in_between_epochs_and_sees_only_whole_ones(pgdb, tmp_path):
    """release_file=true (the default): while the worker streams a steady load (epochs of 300 ms), a reader process
    opening the file read only every 100 ms gets in at every read with the retry recipe (none gives up) and every
    read is the state of a whole transaction, the one of the stored high-water (the module docstring). After the
    load, DuckDB equals Postgres."""
    duck = tmp_path / "d.duckdb"
    _create_tables(pgdb)
    worker, log = _start_worker(tmp_path, _flow(tmp_path, pgdb, duck, release_file=True))
    reader = None
    try:
        wait_streaming(pgdb, SLOT)
        load = Load(pgdb, LOAD_SECONDS)
        load.start()
        _created(duck, worker, log)
        reader, out, stop = _reader(tmp_path, duck)
        load.join(LOAD_SECONDS + 60)
        assert not load.is_alive() and load.error is None, load.error
        _caught_up(pgdb, worker, log)
        reads = _reads(reader, out, stop)
        reader = None
        _stop_worker(worker, log)
    finally:
        for proc in (reader, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()

    marks = _pg_marks(pgdb)
    gave_up = [r for r in reads if "gave_up" in r or "error" in r]
    assert not gave_up, f"{len(gave_up)} of {len(reads)} reads failed, first: {gave_up[0]}"
    wrong = {r["read"]: p for r in reads if (p := check(r["seen"], marks))}
    assert not wrong, f"{len(wrong)} of {len(reads)} reads saw a state no whole transaction leaves: {wrong}"
    # the reader saw the flow move on (the reads fell between epochs of the running worker, not only before or after)
    seen = {r["seen"]["hw"][0] for r in reads if r["seen"]["hw"]}
    assert load.done >= 20 and len(seen) >= 3, (load.done, len(seen), len(reads))
    assert _duck_tables(duck) == _pg_tables(pgdb)


def test_with_release_file_false_no_reader_gets_in_while_the_worker_runs(pgdb, tmp_path):
    """release_file=false: the writer holds the file from start to stop, so a reader with the same retry recipe
    gives up at every read with DuckDB's lock error ("Could not set lock on file ... Conflicting lock is held"):
    what users reported before release_file existed. Once the worker stops, the file opens and equals Postgres."""
    duck = tmp_path / "d.duckdb"
    _create_tables(pgdb)
    worker, log = _start_worker(tmp_path, _flow(tmp_path, pgdb, duck, release_file=False))
    reader = None
    try:
        wait_streaming(pgdb, SLOT)
        load = Load(pgdb, 1.0)
        load.run()
        assert load.error is None, load.error
        _caught_up(pgdb, worker, log)  # committed: the writer has the file open
        reader, out, _ = _reader(tmp_path, duck, reads=3, tries=10)
        reads = _reads(reader, out)
        reader = None
        assert worker.poll() is None, log.read_text()[-3000:]
        _stop_worker(worker, log)
    finally:
        for proc in (reader, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()

    assert len(reads) == 3
    for r in reads:
        assert r["tries"] == 10 and "Conflicting lock is held" in r.get("gave_up", ""), r
    reader, out, _ = _reader(tmp_path, duck, reads=1, name="after")
    (after,) = _reads(reader, out)
    assert after["tries"] == 1 and not check(after["seen"], _pg_marks(pgdb)), after
    assert _duck_tables(duck) == _pg_tables(pgdb)
