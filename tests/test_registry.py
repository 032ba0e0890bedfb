"""The destination registry (wallaby/core/registry.py): every destination package under sinks/ is a plugin found
through the ``wallaby.destinations`` entry points, and importing one does not import its driver."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from dataflows.buildable import available_destinations, check_buildable, sink_factory
from dataflows.preflight import destination_checks
from sinks.kafka.options import KafkaDestinationOptions
from wallaby.core import registry
from wallaby.core.destination_options import DestinationOptions
from wallaby.core.errors import ConfigError
from wallaby.core.spec import parse_flow

ROOT = Path(__file__).resolve().parents[1]
SINKS = ROOT / "sinks"
# destination -> the driver modules its package must not import (they load when a sink is built)
DRIVERS = {"duckdb": ["duckdb"], "ducklake": ["duckdb"], "snowflake": ["snowflake.connector", "duckdb"],
           "clickhouse": ["clickhouse_connect", "duckdb"],
           "kafka": ["confluent_kafka"], "s3": ["boto3", "botocore"],
           "grpc": ["grpc", "wallaby.v1.ingest_pb2_grpc"], "http": ["urllib3"], "pgstream": ["psycopg"]}
UNBUILT: set[str] = set()  # destination types validated but without a sink in this version


def _packages_with_plugin() -> dict[str, object]:
    out = {}
    for init in sorted(SINKS.glob("*/__init__.py")):
        module = importlib.import_module(f"sinks.{init.parent.name}")
        if hasattr(module, "PLUGIN"):
            out[init.parent.name] = module.PLUGIN
    return out


def test_every_plugin_package_is_registered_and_vice_versa():
    packages = _packages_with_plugin()
    installed = {ep.name: ep.value for ep in entry_points(group=registry.GROUP)}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][registry.GROUP]
    hint = "stale install? run `make setup` (or .venv/bin/pip install -e '.[dev]')"
    assert set(packages) == set(declared), "a sinks/ package with a PLUGIN is missing from pyproject.toml (or v.v.)"
    assert installed == declared, hint
    for name, plugin in packages.items():
        assert declared[name] == f"sinks.{name}:PLUGIN"
        assert plugin.name == name
        assert registry.plugin(name) is plugin
        assert issubclass(plugin.options, DestinationOptions)
    assert [p.name for p in registry.plugins()] == sorted(packages)


def test_sinks_without_a_plugin_are_shared_code():
    assert not (SINKS / "sql" / "__init__.py").read_text().count("PLUGIN")
    assert set(_packages_with_plugin()) == {p.name for p in SINKS.iterdir()
                                            if (p / "__init__.py").exists() and p.name != "sql"}


def test_aliases_and_names():
    kafka = registry.plugin("kafka")
    assert registry.plugin("bufstream") is kafka
    assert registry.plugin(" BufStream ") is kafka
    assert kafka.options is KafkaDestinationOptions
    assert registry.names() == ["bufstream", "clickhouse", "duckdb", "ducklake", "grpc", "http", "kafka",
                                "pgstream", "s3", "snowflake", "snowpipe"]
    assert registry.options_models()["bufstream"] is KafkaDestinationOptions
    assert sink_factory("bufstream") is kafka.make_sink
    assert destination_checks("bufstream") == destination_checks("kafka") != ()
    assert registry.plugin("nope") is None and sink_factory("nope") is None and destination_checks("nope") == ()


def test_buildable_and_hooks():
    assert available_destinations() == ["bufstream", "clickhouse", "duckdb", "ducklake", "grpc", "http", "kafka",
                                        "pgstream", "s3", "snowflake", "snowpipe"]
    for p in registry.plugins():
        assert (p.make_sink is None) == (p.name in UNBUILT), p.name
    for name in ("duckdb", "ducklake", "s3", "pgstream", "snowflake", "snowpipe", "clickhouse"):
        p = registry.plugin(name)
        assert p.stored_position is not None and p.discard_position is not None
    assert {p.name for p in registry.plugins() if p.checks} == {"duckdb", "ducklake", "s3", "kafka", "http", "grpc",
                                                                 "snowflake", "snowpipe", "clickhouse"}
    assert {p.name for p in registry.plugins() if p.resolve_staging} == {"duckdb", "ducklake", "snowflake"}
    with pytest.raises(TypeError, match="come together"):
        registry.Plugin(name="x", options=DestinationOptions, make_sink=None, stored_position=lambda *a: None)


def _flow(dest_type: str, options: dict) -> dict:
    return {"name": "f", "source": {"type": "postgres", "options": {
        "dsn": "postgres://u@localhost/db", "slot": "s", "publication": "p"}},
        "destinations": [{"name": "d", "type": dest_type, "options": options}]}


def test_unknown_type_gives_the_spec_error():
    with pytest.raises(ConfigError) as err:
        parse_flow(_flow("duckbd", {"dsn": ":memory:"}))
    assert [str(p) for p in err.value.problems] == [
        "destinations[0].type: unknown destination type 'duckbd'; did you mean 'duckdb'?"]
    with pytest.raises(ConfigError) as err:
        parse_flow(_flow("oracle", {}))
    assert [str(p) for p in err.value.problems] == [
        "destinations[0].type: unknown destination type 'oracle' (known: bufstream, clickhouse, duckdb, ducklake,"
        " grpc, http, kafka, pgstream, s3, snowflake, snowpipe)"]


def without_sink(monkeypatch, name: str) -> None:
    """Destination ``name`` as a plugin without a sink (``make_sink=None``: options validated, the type refused)."""
    import dataclasses

    plugins = registry._registry()
    for t in plugins[name].types:
        monkeypatch.setitem(plugins, t, dataclasses.replace(plugins[name], make_sink=None))


def test_an_unbuilt_destination_is_validated_then_refused(monkeypatch):
    without_sink(monkeypatch, "snowpipe")
    spec = parse_flow(_flow("snowpipe", {"dsn": "u:pw@acct/db", "stage": "st", "schema": "s", "table": "t"}))
    with pytest.raises(ConfigError) as err:
        check_buildable(spec)
    assert [str(p) for p in err.value.problems] == [
        "destinations[0].type: destination type 'snowpipe' is not available in this version of wallaby"
        " (available: bufstream, clickhouse, duckdb, ducklake, grpc, http, kafka, pgstream, s3, snowflake)"]


def test_importing_a_destination_package_does_not_import_its_driver():
    code = """
import importlib, json, sys
name, drivers = sys.argv[1], json.loads(sys.argv[2])
importlib.import_module("sinks." + name)
from wallaby.core import registry
registry.plugins()  # every plugin loaded, as the flow spec does
print(json.dumps(sorted(d for d in drivers if d in sys.modules)))
"""
    everything = sorted({d for ds in DRIVERS.values() for d in ds})
    for name in sorted(_packages_with_plugin()):
        out = subprocess.run([sys.executable, "-c", code, name, json.dumps(everything)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [], f"importing sinks.{name} imported {out.stdout.strip()}"


def test_building_a_sink_imports_the_writer():
    code = """
import sys
from wallaby.core import registry
from sinks.duckdb.options import DuckDBDestinationOptions
assert "duckdb" not in sys.modules
registry.plugin("duckdb").make_sink("d", "f", DuckDBDestinationOptions(dsn=":memory:"))
assert "duckdb" in sys.modules and "sinks.duckdb.writer" in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_stale_install_is_one_clear_error(monkeypatch):
    registry._registry.cache_clear()
    monkeypatch.setattr(registry, "entry_points", lambda group: [])
    try:
        with pytest.raises(registry.RegistryError, match=r"older than its code.*make setup.*pip install -e"):
            registry.plugin("duckdb")
        declared = registry._declared()
        assert declared is not None and set(declared) == set(_packages_with_plugin())
        registry._registry.cache_clear()
        all_but_s3 = [ep for ep in entry_points(group=registry.GROUP) if ep.name != "s3"]
        monkeypatch.setattr(registry, "entry_points", lambda group: all_but_s3)
        with pytest.raises(registry.RegistryError, match=r"not registered \(wallaby.destinations entry points: s3\)"):
            registry.plugin("duckdb")
    finally:
        monkeypatch.undo()
        registry._registry.cache_clear()
    assert registry.plugin("duckdb") is not None
