"""A backfill's progress on a terminal: one bar per table (rows, rows/s, blocks or key-range parts, parts done,
time left).

``wallaby-worker -mode backfill`` uses it when its stderr is a terminal; elsewhere (a service, a file, the API
server's workers) the backfill logs a structured line per table instead
(:class:`sources.postgres.snapshot_source.Progress`).
"""

from __future__ import annotations

import sys
from typing import Any

from sources.postgres.snapshot_source import Progress as LogProgress
from sources.postgres.snapshot_source import TableProgress


class TerminalProgress(LogProgress):
    """Bars on stderr, updated as the parts read (the log lines are left out while the bars show)."""

    def __init__(self, flow_id: str):
        # rich only here: every worker imports this module, few draw bars (~30 ms of a worker's start otherwise)
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        super().__init__(flow_id)
        self.bars = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.fields[rows]:>12,} rows"), TextColumn("{task.fields[rate]:>9,.0f} rows/s"),
            TextColumn("parts {task.fields[done]}/{task.fields[parts]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(file=sys.stderr), transient=False)
        self.tasks: dict[str, Any] = {}  # table -> rich's TaskID
        self.bars.start()

    def changed(self, t: TableProgress) -> None:
        task = self.tasks.get(t.table)
        total = max(t.parts if t.keyed else t.blocks, 1)  # key-range parts: the bar counts parts, not blocks
        if task is None:
            task = self.tasks[t.table] = self.bars.add_task(t.table, total=total, rows=0, rate=0.0,
                                                            done=0, parts=t.parts)
        finished = t.parts_done >= t.parts
        done = t.parts_done if t.keyed else min(t.read_blocks, t.blocks)
        self.bars.update(task, total=total, completed=total if finished else done,
                         rows=t.rows, rate=t.rate, done=t.parts_done, parts=t.parts)

    def close(self) -> None:
        self.bars.stop()
