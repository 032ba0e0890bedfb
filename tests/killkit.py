"""Kill -9 a command at random moments of its work (the backfill's resume tests)."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path


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
