"""Process tuning of worker processes: allocators and the graceful-stop flag."""

from __future__ import annotations

import pyarrow as pa

from wallaby import runtime


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
    del blocks
    held = proc.memory_info().rss
    runtime.release_memory()
    assert held - proc.memory_info().rss > 64 << 20
    del keep
