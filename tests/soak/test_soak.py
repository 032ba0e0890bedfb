"""The soak (``make test-soak``; not part of ``make test``): a real Postgres under continuous inserts, updates and
deletes while ``wallaby-worker`` streams it into DuckDB (target and append), Kafka and S3, through

1. kill -9 of the worker (``WALLABY_SOAK_KILLS`` cycles in all, 50 by default, spread over the four);
2. the walsender terminated mid-stream (``pg_terminate_backend`` of the slot's ``active_pid``);
3. Postgres restarted mid-stream (a server of the soak's own; fast and immediate shutdowns);
4. each destination down for ``WALLABY_SOAK_DOWN`` seconds (30): the Kafka broker stopped; S3 paused (SIGSTOP:
   requests hang) and refusing connections (a gate in front of it closed); the DuckDB file locked by another
   process while the worker restarts; the DuckDB directory and files made unwritable (``chattr +i``, which binds
   root too, and fails writes through descriptors already open);
5. the recovery store's file system full (a small tmpfs, else a loop device, as ``-recovery-dir``).

After each: the load stops, the worker drains (``-max-empty-reads``) and every destination is compared with the
audit of what the source produced (tests/soak/harness.py): nothing lost; nothing duplicated in DuckDB; Kafka and
S3 duplicates counted per cycle, each cycle's above the checkpoint the one before left. The table is printed at
the end and written to .cache/soak-results.md; what a failure found (flow, LSNs, rows, worker logs) is kept in
.cache/soak-evidence/.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.soak.harness import (
    Dest,
    Row,
    Run,
    lsn_text,
    record,
    render,
    slot_info,
    sql,
    wait_streaming,
)
from wallaby.control.localpg import LocalPostgres

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]

KILLS = int(os.environ.get("WALLABY_SOAK_KILLS", "50"))
WALSENDER_KILLS = int(os.environ.get("WALLABY_SOAK_WALSENDER", "6"))
PG_RESTARTS = int(os.environ.get("WALLABY_SOAK_PG_RESTARTS", "3"))
DOWN = float(os.environ.get("WALLABY_SOAK_DOWN", "30"))
MODES = ["duckdb target", "duckdb append", "kafka", "s3"]


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower())


def dest(mode: str, tmp_path: Path, request) -> Dest:
    if mode == "duckdb target":
        return Dest.duck_target(tmp_path / "duck" / "target.duckdb")
    if mode == "duckdb append":
        return Dest.duck_append(tmp_path / "duck" / "append.duckdb")
    if mode == "kafka":
        return Dest.kafka(request.getfixturevalue("kafka_broker").bootstrap, f"soak-{uuid.uuid4().hex[:8]}")
    moto = request.getfixturevalue("moto")
    return Dest.s3(moto.url, moto.bucket(f"soak-{uuid.uuid4().hex[:8]}"))


def fanout(tmp_path: Path, request) -> list[Dest]:
    return [dest(m, tmp_path, request) for m in MODES]


def progress(run: Run) -> str:
    """How many cycles moved the checkpoint on (a kill before the first epoch of a run moves nothing)."""
    cps = [m.checkpoint for m in run.marks]
    moved = sum(1 for a, b in zip([0, *cps], cps, strict=False) if b > a)
    return f"{moved} of {len(cps)} cycles moved the checkpoint on"


def check(rows: list[Row]) -> None:
    bad = [r for r in rows if r.lost or (r.destination.startswith("duckdb") and r.duplicated)
           or any(n.startswith("VIOLATION") for n in r.notes)]
    assert not bad, "\n" + render()


# -- 1. kill -9 ----------------------------------------------------------------------------------------------------


def kills_for(mode: str) -> int:
    i = MODES.index(mode)
    return KILLS // len(MODES) + (1 if i < KILLS % len(MODES) else 0)


@pytest.mark.parametrize("mode", MODES)
def test_kill_9(mode, pgdb, tmp_path, request):
    cycles = kills_for(mode)
    if cycles == 0:
        pytest.skip("WALLABY_SOAK_KILLS gives this destination no cycle")
    run = Run("kill -9 of the worker", f"soak_kill_{slug(mode)}", pgdb, tmp_path, [dest(mode, tmp_path, request)],
              seed=MODES.index(mode))
    rnd = random.Random(42 + MODES.index(mode))
    run.begin()
    walsender = None
    for i in range(cycles):
        if i:
            run.worker.start()
        if i % 5 == 4:  # one kill in five while the worker starts (slot, publication, sinks opening)
            time.sleep(rnd.uniform(0.2, 3.0))
        else:  # the others while it streams (its own walsender is up)
            wait_streaming(pgdb, run.slot, not_pid=walsender, worker=run.worker)
            time.sleep(rnd.uniform(0.3, 4.0))
        walsender = slot_info(pgdb, run.slot)[1]
        run.worker.kill9()
        if mode in ("kafka", "s3"):
            time.sleep(1)  # requests the worker sent before it died land first
        run.mark()
    run.notes.append(progress(run))
    check(run.finish(cycles))


# -- 2. the walsender terminated ------------------------------------------------------------------------------------


def test_walsender_terminated(pgdb, tmp_path, request):
    run = Run("walsender terminated", "soak_walsender", pgdb, tmp_path, fanout(tmp_path, request), seed=5)
    rnd = random.Random(5)
    run.begin()
    back = []
    for _ in range(WALSENDER_KILLS):
        run.worker.sleep(rnd.uniform(3, 6))
        wait_streaming(pgdb, run.slot, worker=run.worker)
        _, pid, _ = slot_info(pgdb, run.slot)
        sql(pgdb, f"SELECT pg_terminate_backend({int(pid)})")
        back.append(wait_streaming(pgdb, run.slot, not_pid=pid, worker=run.worker))
        run.mark()
    run.worker.sleep(3)
    run.notes.append("streaming again after " + ", ".join(f"{s:.1f}" for s in back) + " s")
    check(run.finish(WALSENDER_KILLS))


# -- 3. Postgres restarted --------------------------------------------------------------------------------------------


def test_postgres_restarted(tmp_path, request):
    server = LocalPostgres(tmp_path / "pg")
    server.start()
    server.wait_ready()
    try:
        sql(server.dsn(), "CREATE DATABASE soak")
        dsn = server.dsn("soak")
        run = Run("Postgres restarted", "soak_pg_restart", dsn, tmp_path / "flow", fanout(tmp_path, request), seed=6)
        rnd = random.Random(6)
        run.begin()
        modes = (["fast", "immediate"] * PG_RESTARTS)[:PG_RESTARTS]
        for mode in modes:
            run.worker.sleep(rnd.uniform(4, 7))
            t0 = time.monotonic()
            server.stop(mode)
            time.sleep(rnd.uniform(0.5, 2.0))
            server.start()
            server.wait_ready()
            wait_streaming(dsn, run.slot, worker=run.worker)
            run.notes.append(f"{mode} restart: streaming again after {time.monotonic() - t0:.1f} s")
            run.mark()
        run.worker.sleep(3)
        check(run.finish(len(modes)))
    finally:
        with contextlib.suppress(Exception):
            server.destroy()


# -- 4. a destination down --------------------------------------------------------------------------------------------


def _outage(run: Run, down, up, what: str) -> None:
    """Take the destination down (``down()``) for DOWN seconds while the load and the worker (restarted whenever
    it exits) go on, then bring it back (``up()``) and let the worker catch up."""
    run.begin()
    run.worker.sleep(5)
    t0 = time.monotonic()
    down()
    try:
        run.worker.sleep(DOWN)
    finally:
        up()
    run.notes.append(f"{what} for {time.monotonic() - t0:.0f} s")
    run.worker.sleep(8)
    run.mark()


def test_kafka_broker_stopped(pgdb, tmp_path, kafka_broker):
    run = Run(f"destination down {DOWN:.0f} s: Kafka broker stopped", "soak_down_kafka", pgdb, tmp_path,
              [Dest.kafka(kafka_broker.bootstrap, f"soak-{uuid.uuid4().hex[:8]}")], seed=7)
    _outage(run, kafka_broker.stop, kafka_broker.start, "broker stopped (SIGTERM) and started again")
    check(run.finish(1))


def test_s3_paused(pgdb, tmp_path, moto):
    run = Run(f"destination down {DOWN:.0f} s: S3 paused (SIGSTOP)", "soak_down_s3_paused", pgdb, tmp_path,
              [Dest.s3(moto.url, moto.bucket(f"soak-{uuid.uuid4().hex[:8]}"))], seed=8)
    _outage(run, moto.pause, moto.resume, "moto paused (requests hang)")
    check(run.finish(1))


def test_s3_refusing(pgdb, tmp_path, moto):
    from tests.soak.harness import Gate

    gate = Gate(moto.port)
    try:
        bucket = moto.bucket(f"soak-{uuid.uuid4().hex[:8]}")
        run = Run(f"destination down {DOWN:.0f} s: S3 refusing connections", "soak_down_s3_refused", pgdb,
                  tmp_path, [Dest.s3(gate.url, bucket, read_endpoint=moto.url)], seed=9)
        _outage(run, gate.close, gate.open, "S3 endpoint refused connections")
        check(run.finish(1))
    finally:
        gate.close()


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])  # read-write, as the DuckDB CLI opens a file: the file is locked
con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_duckdb_locked(pgdb, tmp_path):
    d = Dest.duck_target(tmp_path / "duck" / "target.duckdb")
    run = Run(f"destination down {DOWN:.0f} s: DuckDB file locked by another process", "soak_down_duck_locked",
              pgdb, tmp_path, [d], seed=10)
    run.begin()
    run.worker.sleep(5)
    rc = run.worker.term()  # a redeploy; the worker comes back while someone holds the file
    t0 = time.monotonic()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(d.path), str(DOWN)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        run.worker.start()
        run.worker.sleep(DOWN - (time.monotonic() - t0))
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
    run.notes.append(f"worker stopped (exit {rc}), file held for {time.monotonic() - t0:.0f} s while it started"
                     " again")
    run.worker.sleep(8)
    run.mark()
    check(run.finish(1))


def test_duckdb_directory_unwritable(pgdb, tmp_path):
    d = Dest.duck_append(tmp_path / "duck" / "append.duckdb")
    d.path.parent.mkdir(parents=True)
    if subprocess.run(["chattr", "+i", str(d.path.parent)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not possible here (not root, or a file system without the immutable flag)")
    subprocess.run(["chattr", "-i", str(d.path.parent)], check=True)
    run = Run(f"destination down {DOWN:.0f} s: DuckDB directory and files unwritable", "soak_down_duck_dir", pgdb,
              tmp_path, [d], seed=11)

    def down():  # the files too: a write through an open descriptor then fails (EPERM), as on a read-only volume
        files = [str(p) for p in d.path.parent.iterdir()]
        subprocess.run(["chattr", "+i", *files, str(d.path.parent)], check=True)
        run.notes.append("made immutable: " + ", ".join(p.name for p in sorted(d.path.parent.iterdir())))

    def up():
        subprocess.run(["chattr", "-i", str(d.path.parent), *map(str, d.path.parent.iterdir())], check=True)

    try:
        _outage(run, down, up, "chattr +i on the DuckDB directory and its files")
    finally:
        up()
    check(run.finish(1))


# -- 5. the recovery store's disk full --------------------------------------------------------------------------------


def _mount_small(mnt: Path, size_mb: int) -> tuple[str, list[str]]:
    """Mount a small file system on ``mnt``: tmpfs, else an ext4 loop device. ("", reasons) when neither works."""
    reasons = []
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "soak-recovery", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode == 0:
        return f"tmpfs of {size_mb} MiB", []
    reasons.append(f"tmpfs: {r.stderr.strip() or r.returncode}")
    img = mnt.parent / "recovery.img"
    steps = [["truncate", "-s", f"{size_mb}M", str(img)], ["mkfs.ext4", "-q", "-F", str(img)],
             ["mount", "-o", "loop", str(img), str(mnt)]]
    for step in steps:
        try:
            r = subprocess.run(step, capture_output=True, text=True)
        except OSError as exc:
            reasons.append(f"{step[0]}: {exc}")
            return "", reasons
        if r.returncode != 0:
            reasons.append(f"{' '.join(step[:2])}: {r.stderr.strip() or r.returncode}")
            return "", reasons
    return f"ext4 loop device of {size_mb} MiB", []


def _fill(path: Path) -> int:
    """Write ``path`` until the file system refuses a single byte more; the bytes written."""
    written = 0
    with path.open("ab", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 512, 1):
            data = b"\0" * chunk
            while True:
                try:
                    written += f.write(data)
                except OSError:
                    break
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    return written


def test_recovery_disk_full(pgdb, tmp_path, request):
    scenario = "recovery store's disk full"
    mnt = tmp_path / "recovery-fs"
    mnt.mkdir()
    how, reasons = _mount_small(mnt, 16)
    if not how:
        record(Row(scenario, "-", 0, 0, 0, 0, None, 0, ["not run: no small file system could be mounted: "
                                                          + "; ".join(reasons)]))
        pytest.skip("; ".join(reasons))
    run = None
    try:
        store = mnt / "store"
        run = Run(scenario, "soak_disk_full", pgdb, tmp_path / "flow", fanout(tmp_path, request), seed=12,
                  worker_args=("-recovery-dir", str(store)))
        run.begin()
        run.worker.sleep(5)
        filler = mnt / "filler"
        t0 = time.monotonic()
        total = 0
        while run.worker.alive and time.monotonic() - t0 < 90:
            total += _fill(filler)  # top it up: space SQLite gives back is taken again
            time.sleep(0.5)
        usage = shutil.disk_usage(mnt)
        if run.worker.alive:
            run.notes.append(f"NOT FAILED: the worker kept running {time.monotonic() - t0:.0f} s with the recovery"
                             f" file system full ({usage.free} bytes free)")
            run.worker.kill9()
        else:
            run.worker.kill9()  # reaps it: its exit status and line go to the summary
            rc, line = run.worker.exits[-1]
            run.notes.append(f"{how} filled ({total} bytes): the worker exited {rc} after"
                             f" {time.monotonic() - t0:.1f} s: '{line[:300]}'")
        # started again while the disk is still full: it must refuse clearly, not run without its store
        run.worker.start()
        deadline = time.monotonic() + 60
        while run.worker.alive and time.monotonic() < deadline:
            time.sleep(0.2)
        if run.worker.alive:
            run.notes.append("restarted on the full disk: still running after 60 s")
            run.worker.kill9()
        else:
            run.worker.kill9()
            rc, line = run.worker.exits[-1]
            run.notes.append(f"restarted on the full disk: exit {rc}: '{line[:300]}'")
        cp = run.marks and run.marks[-1].checkpoint
        filler.unlink()
        run.notes.append("space freed; worker started again" + (f" (checkpoint was {lsn_text(cp)})" if cp else ""))
        run.worker.start()
        run.worker.sleep(8)
        run.mark()
        check(run.finish(1))
    finally:
        if run is not None and run.worker.alive:
            run.worker.kill9()
        r = subprocess.run(["umount", str(mnt)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
