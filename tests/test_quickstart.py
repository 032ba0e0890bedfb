"""`make quickstart` end to end: the script a new user runs first must work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_and_duckdb_equals_postgres():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "DuckDB equals Postgres: yes" in r.stdout
    assert "Zoë 🦘" in r.stdout
