"""Process settings (wallaby/settings.py): every WALLABY_* tuning variable parsed in one typed place."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from wallaby.core import settings
from wallaby.core.errors import ConfigError
from wallaby.core.settings import Settings, SettingsError, load

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_when_nothing_is_set():
    assert load({}) == Settings()
    assert load({"WALLABY_DDL_POLL": "", "WALLABY_DUCKDB_THREADS": "  "}) == Settings()  # empty counts as unset
    s = Settings()
    assert (s.ddl_poll, s.epoch_interval, s.source_batch_bytes, s.toast_cache_bytes) == (2.0, 2.0, 3 << 20, 256 << 20)
    assert (s.duckdb_buffer_bytes, s.duckdb_max_tx_bytes, s.duckdb_threads, s.duckdb_lock_wait) == (
        8 << 20, 16 << 20, 1, 60.0)
    assert (s.kafka_delivery_timeout, s.spool_drain_timeout, s.worker_max_restarts, s.worker_stop_timeout) == (
        120.0, 5.0, 3, 60.0)


@pytest.mark.parametrize(("text", "seconds"), [
    ("2", 2.0), ("2.5", 2.5), ("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1m30s", 90.0), ("1h", 3600.0),
    (" 0.25 ", 0.25),
])
def test_durations(text, seconds):
    assert load({"WALLABY_DDL_POLL": text}).ddl_poll == seconds
    assert load({"WALLABY_EPOCH_INTERVAL": text}).epoch_interval == seconds


@pytest.mark.parametrize(("text", "size"), [
    ("3145728", 3145728), ("512KB", 512_000), ("3MiB", 3 << 20), ("1.5GB", 1_500_000_000), ("64 mb", 64_000_000),
    ("8MiB", 8 << 20), ("1GiB", 1 << 30), ("100B", 100),
])
def test_byte_sizes(text, size):
    assert load({"WALLABY_SOURCE_BATCH_BYTES": text}).source_batch_bytes == size


def test_a_bad_value_names_the_variable_and_the_format_on_one_line():
    with pytest.raises(SettingsError) as err:
        load({"WALLABY_DDL_POLL": "2x"})
    assert str(err.value) == "WALLABY_DDL_POLL: '2x' is not a duration (use seconds like 2.5 or 2s, 500ms, 1m)"
    assert isinstance(err.value, ConfigError)  # exit status 2, INVALID_ARGUMENT
    with pytest.raises(SettingsError) as err:
        load({"WALLABY_DDL_POLL": "-1", "WALLABY_DUCKDB_BUFFER_BYTES": "8 megs", "WALLABY_DUCKDB_THREADS": "two",
              "WALLABY_WORKER_MAX_RESTARTS": "-1", "WALLABY_LOG_LEVEL": "loud", "WALLABY_EPOCH_INTERVAL": "0"})
    text = str(err.value)
    assert "\n" not in text
    assert [p.path for p in err.value.problems] == ["WALLABY_EPOCH_INTERVAL", "WALLABY_LOG_LEVEL", "WALLABY_DDL_POLL",
                                                    "WALLABY_DUCKDB_BUFFER_BYTES", "WALLABY_DUCKDB_THREADS",
                                                    "WALLABY_WORKER_MAX_RESTARTS"]
    assert "WALLABY_DUCKDB_BUFFER_BYTES: '8 megs' is not a byte size (use a number of bytes, or a size like" in text
    assert "WALLABY_DUCKDB_THREADS: 'two' is not a whole number" in text
    assert "WALLABY_EPOCH_INTERVAL: '0' must be more than 0 seconds" in text
    assert "WALLABY_LOG_LEVEL: 'loud' is not a log level" in text


def test_variables_of_features_not_built_are_refused_by_name(monkeypatch):
    from wallaby.core import settings

    # DBOS and Kubernetes are built: their variables are the API server's (wallaby.control.scheduling) or parsed
    assert load({"WALLABY_DBOS_ENABLED": "true", "WALLABY_DBOS_QUEUE": "q", "WALLABY_K8S_NAMESPACE": "cdc"}) == \
        Settings(k8s_namespace="cdc")
    monkeypatch.setattr(settings, "UNAVAILABLE_PREFIXES", {"WALLABY_LATER_": "a later feature"})
    assert load({"WALLABY_LATER_X": ""}) == Settings()  # empty: not set
    with pytest.raises(SettingsError) as err:
        load({"WALLABY_LATER_X": "1", "WALLABY_LATER_Y": "2"})
    assert str(err.value).startswith("WALLABY_LATER_X, WALLABY_LATER_Y: not available in this version of wallaby"
                                     " (a later feature is not built")


def test_module_constants_come_from_the_settings():
    """Each module reads its variable through wallaby.core.settings (a fresh process, so the constants are computed with
    this environment); a bad value falls back to the default only until the entry point's strict load refuses it."""
    code = ("import sinks.duckdb.writer as d, sources.postgres.batcher as b, sources.postgres.ddl_gate as g, "
            "operators.toast as t, sinks.kafka.writer as k\n"
            "print(d.DUCKDB_MEMORY_LIMIT, d.DUCKDB_MAX_TX_BYTES, d.DUCKDB_THREADS, d.DUCKDB_LOCK_WAIT, "
            "b.MAX_BATCH_BYTES, g.POLL_SECONDS, t.TOAST_CACHE_BYTES, k.DELIVERY_TIMEOUT)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "WALLABY_DUCKDB_MEMORY_LIMIT": "128MiB",
           "WALLABY_DUCKDB_MAX_TX_BYTES": "0", "WALLABY_DUCKDB_THREADS": "2", "WALLABY_DUCKDB_LOCK_WAIT": "1m",
           "WALLABY_SOURCE_BATCH_BYTES": "1MiB", "WALLABY_DDL_POLL": "2s", "WALLABY_TOAST_CACHE_BYTES": "1GB",
           "WALLABY_KAFKA_DELIVERY_TIMEOUT": "90s"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"{128 << 20}B", str(1 << 62), "2", "60.0", str(1 << 20), "2.0", "1000000000",
                                  "90.0"]


def test_duckdb_takes_the_sizes_it_is_given():
    import duckdb

    s = load({"WALLABY_DUCKDB_MEMORY_LIMIT": "96MiB", "WALLABY_DUCKDB_CHECKPOINT_THRESHOLD": "256MiB"})
    con = duckdb.connect(":memory:", config={"memory_limit": f"{s.duckdb_memory_limit}B",
                                             "checkpoint_threshold": f"{s.duckdb_checkpoint_threshold}B"})
    assert con.execute("SELECT current_setting('memory_limit'), current_setting('checkpoint_threshold')"
                       ).fetchone() == ("96.0 MiB", "256.0 MiB")


# Variables read outside wallaby/settings.py on purpose (see its docstring): stores, the API server's own settings,
# a flow's defaults, the inputs of dataflows.flow:flow and dataflows.backfill:flow, and WALLABY_DEBUG (the worker's
# traceback switch).
ELSEWHERE = {"WALLABY_CHECKPOINT_BACKEND", "WALLABY_CHECKPOINT_PATH", "WALLABY_CHECKPOINT_DSN", "WALLABY_POSTGRES_DSN",
             "WALLABY_GRPC_LISTEN", "WALLABY_GRPC_REFLECTION", "WALLABY_GRPC_TLS_CERT", "WALLABY_GRPC_TLS_KEY",
             "WALLABY_API_TOKEN", "WALLABY_API_INSECURE", "WALLABY_ADMIN_ADDR", "WALLABY_WIRE_FORMAT",
             "WALLABY_WIRE_ENFORCE", "WALLABY_DDL_GATE", "WALLABY_DDL_AUTO_APPROVE", "WALLABY_DDL_AUTO_APPLY",
             "WALLABY_FLOW_FILE", "WALLABY_FLOW_ID", "WALLABY_FLOW_GENERATION", "WALLABY_START_LSN",
             "WALLABY_MAX_EMPTY_READS", "WALLABY_BACKFILL_TABLES", "WALLABY_DEBUG"}


def test_every_variable_the_code_reads_is_a_setting_or_known_to_live_elsewhere():
    """A new WALLABY_* variable read with os.environ must be added to wallaby/settings.py (typed, with its format)
    or, if it is not a process setting, to the list above."""
    read = set()
    for package in ("wallaby", "sources", "sinks", "operators", "dataflows"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            read |= set(re.findall(r"""environ(?:\.get\(|\[)\s*["'](WALLABY_[A-Z0-9_]+)["']""", text))
            read |= set(re.findall(r"""getenv\(\s*["'](WALLABY_[A-Z0-9_]+)["']""", text))
    assert read, "the scan found nothing: the pattern no longer matches how the code reads variables"
    unknown = read - set(settings.VARIABLES) - ELSEWHERE
    assert not unknown, f"read with os.environ but not parsed by wallaby/settings.py: {sorted(unknown)}"
    # and the tuning variables are no longer parsed where they are used
    scattered = read & (set(settings.VARIABLES) - {"WALLABY_RECOVERY_DIR"})
    assert not scattered, f"parsed outside wallaby/settings.py: {sorted(scattered)}"
