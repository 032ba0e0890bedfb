"""wallaby-worker -mode backfill on a terminal: a progress bar per table (rich), drawn on stderr."""

from __future__ import annotations

import io
import sys

from sources.postgres.snapshot_source import TableProgress
from wallaby.control.progress import TerminalProgress


def test_a_bar_per_table_with_rows_rate_and_parts(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bars = TerminalProgress("f")
    bars.changed(TableProgress("public.orders", parts=2, blocks=10, read_blocks=4, rows=1234, parts_done=1))
    bars.changed(TableProgress("public.items", parts=1, blocks=0, rows=0, parts_done=0, keyed=True))
    bars.close()
    out = err.getvalue()
    assert "public.orders" in out and "1,234 rows" in out and "parts 1/2" in out
    assert "public.items" in out and "parts 0/1" in out
