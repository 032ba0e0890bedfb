"""Process tuning of worker processes: allocators and the graceful-stop flag."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from wallaby.core import runtime


def test_tune_memory_puts_arrow_on_the_system_allocator(monkeypatch):
    monkeypatch.setattr(runtime, "_memory_tuned", False)
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    try:
        runtime.tune_memory()
        assert pa.default_memory_pool().backend_name == "system"
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        runtime.tune_memory()  # once per process
        assert pa.default_memory_pool().backend_name == "mimalloc"
    finally:
        pa.set_memory_pool(pa.system_memory_pool())


def test_tune_memory_leaves_an_explicit_arrow_pool_alone(monkeypatch):
    monkeypatch.setattr(runtime, "_memory_tuned", False)
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    try:
        runtime.tune_memory()
        assert pa.default_memory_pool().backend_name == "mimalloc"
    finally:
        pa.set_memory_pool(pa.system_memory_pool())


def test_release_memory_returns_freed_heap_pages():
    """Freed blocks below a live one stay resident until malloc_trim gives their pages back."""
    import psutil

    assert runtime._glibc() is not None  # Linux with glibc: the settings apply
    proc = psutil.Process()
    blocks, keep = [], []
    for _ in range(2000):  # ~128 MB of heap blocks, each followed by a small live one
        blocks.append(bytearray(b"x" * (64 << 10)))
        keep.append(bytearray(b"k" * 1024))
    allocated = proc.memory_info().rss
    del blocks
    runtime.release_memory()
    # (measured from before the free: after other tests in the same process, glibc sometimes gives part back itself)
    assert allocated - proc.memory_info().rss > 64 << 20
    del keep


_DUCKDB_SCAN = """
import duckdb
import pyarrow as pa
from wallaby.core import runtime
runtime.tune_memory()
t = pa.table({"k": pa.array(range(200_000)), "v": pa.array([str(i) * 20 for i in range(200_000)])})
con = duckdb.connect(config={"threads": 1})
con.register("src", t)
con.execute("CREATE TABLE x AS SELECT * FROM src")
con.execute("CREATE TABLE f AS SELECT k FROM src WHERE k % 3 = 0")
con.execute("DELETE FROM x USING src, f WHERE x.k = src.k AND src.k = f.k")
print(pa.mimalloc_memory_pool().max_memory())
"""


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("package", ["wallaby", "sources", "sinks", "operators", "dataflows"])
def test_importing_wallaby_first_puts_arrow_cpp_on_the_system_allocator(package):
    """Arrow's C++ code reads ARROW_DEFAULT_MEMORY_POOL once, when pyarrow loads: whichever of the project's
    packages a process imports first sets it."""
    assert _python(f"import {package}\nimport pyarrow as pa\nprint(pa.default_memory_pool().backend_name)") == "system"


def test_duckdb_scans_of_arrow_tables_leave_mimalloc_unused():
    """DuckDB scans a registered Arrow table with Arrow code that allocates from the C++ default pool, which
    pyarrow.set_memory_pool does not change: with mimalloc there, its arena kept tens of MB resident."""
    assert int(_python("import sinks.duckdb.writer\n" + _DUCKDB_SCAN)) == 0
    # the check can fail: with pyarrow loaded before wallaby, the same scan allocates from mimalloc
    assert int(_python("import pyarrow\nimport sinks.duckdb.writer\n" + _DUCKDB_SCAN)) > 0


def test_starting_a_worker_does_not_import_pandas():
    """pyarrow imports pandas (installed here for chdb) at its first pa.array of a Python list or a numpy array:
    ~0.2 s of a worker's start-up. A catch-up run with nothing to read builds no array, so importing the worker and
    the modules its flows load must not build one at import time (the batcher's ops table once did)."""
    code = ("import sys\nimport wallaby.control.worker, sources.postgres.batcher, sinks.duckdb.writer\n"
            "print('pandas' in sys.modules)")
    assert _python(code) == "False"
