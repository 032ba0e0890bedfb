"""Kill -9 a command at random moments of its work (the backfill's resume tests), and the writes a kill -9 test
makes while it kills (:class:`ItemWrites`)."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path

import psycopg


def kill_at_random(cmd: list[str], env: dict, cwd: Path, logs_dir: Path, *, runs: int, started: str,
                   window: tuple[float, float], seed: int) -> list[str]:
    """Run ``cmd`` ``runs`` times, each killed (SIGKILL) a random ``window`` of seconds after its log shows
    ``started`` (or after it exits, or 120 s); the logs of the runs."""
    rnd = random.Random(seed)
    logs = []
    for i in range(runs):
        log_path = logs_dir / f"run{i}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 120
            while started not in log_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rnd.uniform(*window))
            proc.kill()
            proc.wait(timeout=30)
        logs.append(log_path.read_text())
    return logs


def kill_when(cmd: list[str], env: dict, cwd: Path, log_path: Path, ready, *, timeout: float = 120) -> None:
    """Run ``cmd`` and kill it (SIGKILL) as soon as ``ready()`` is true (or it exits, or ``timeout`` s pass)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=30)


def create_item_tables(conn: psycopg.Connection, *, events: bool = True, toast: bool = False) -> None:
    """items (keyed; ``toast``: its notes stored out of line) and, with ``events``, events (keyless, REPLICA
    IDENTITY FULL): what :class:`ItemWrites` writes to."""
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, qty int, note text)")
    if toast:
        conn.execute("ALTER TABLE items ALTER COLUMN note SET STORAGE EXTERNAL")
    if events:
        conn.execute("CREATE TABLE events (n int, note text)")
        conn.execute("ALTER TABLE events REPLICA IDENTITY FULL")


class ItemWrites:
    """A thread committing one transaction after another until the ``with`` block ends: an item inserted (and an
    event, with ``events``), an earlier item's qty updated, every 7th transaction an item deleted; with ``toast``
    every 9th note long (stored out of line, then left unchanged by the updates) and every 11th transaction a key
    change. ``written``: the transactions committed."""

    def __init__(self, dsn: str, *, seed: int = 11, events: bool = True, toast: bool = False, pause: float = 0.003):
        self.dsn, self.seed, self.events, self.toast, self.pause = dsn, seed, events, toast, pause
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ItemWrites:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        rnd = random.Random(self.seed)
        with psycopg.connect(self.dsn, autocommit=True) as c:
            i = 0
            while not self._stop.is_set():
                i += 1
                note = f"w{i}" * (2000 if i % 9 == 0 else 1) if self.toast else "w"
                with c.transaction():
                    c.execute("INSERT INTO items VALUES (%s, %s, %s)", (i, i, note))
                    if self.events:
                        c.execute("INSERT INTO events VALUES (%s, 'e')", (i,))
                    if i > 5:
                        c.execute("UPDATE items SET qty = qty + 1 WHERE id = %s", (rnd.randint(1, i - 1),))
                    if i % 7 == 0:
                        c.execute("DELETE FROM items WHERE id = %s", (rnd.randint(1, i),))
                    if self.toast and i % 11 == 0:
                        c.execute("UPDATE items SET id = -id WHERE id = %s", (rnd.randint(1, i),))
                self.written = i
                time.sleep(self.pause)
