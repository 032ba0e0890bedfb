"""A Go WALlaby flow as a wallaby flow spec: what translates, what is dropped (named, with why), what refuses it.

The Go build (its flow store before typed endpoints) keeps an endpoint as its ``connector.Spec`` in JSON, with
Go's field names: ``{"Name": ..., "Type": "postgres", "Options": {"dsn": ..., ...}}`` (lower-case keys are read
too), and the flow's config as ``flow.Config``: ``{"AckPolicy", "PrimaryDestination", "FailureMode",
"GiveUpPolicy", "DDL": {"gate", "auto_approve", "auto_apply"}}`` (later builds: the same in snake_case). Options
are strings, as in a wallaby flow file.

- Translated: id, name, wire_format, parallelism, the endpoints (name, type, options), the config.
- Changed, each named in the report: options wallaby spells otherwise (gRPC ``address`` is ``endpoint``), and a
  Snowflake meta table of wallaby's own (the Go build's ``WALLABY_META.__METADATA`` has the same name and another
  shape; Snowpipe, which cannot name another, keeps none), and a backfill progress table of wallaby's own (the
  Go build's ``wallaby.snapshot_state`` has the same name and another shape).
- Dropped, each named in the report (:data:`DROPPED`): Go options whose job is done otherwise in wallaby
  (``start_lsn``: the migrated checkpoint is where the flow resumes; the backfill selection ``tables``/``schemas``:
  ``wallaby-worker -mode backfill -tables/-schemas``; a destination's ``flow_id`` equal to the flow's id; ...), and
  the options named with ``-drop-options``.
- Refused (the flow is not migrated, every reason named): an endpoint of a type wallaby has no connector for
  (the Go build's ``postgres`` destination, ``parquet``, ``proto``), an option or config field wallaby does not
  know (with the nearest known name), a typed endpoint of a later Go build, and whatever else
  :func:`wallaby.core.spec.parse_flow` finds wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wallaby.control.go_store import GoFlow
from wallaby.core import registry
from wallaby.core.errors import ConfigError, redact_dsn
from wallaby.core.options import SOURCE_OPTIONS, did_you_mean
from wallaby.core.spec import FlowSpec, parse_flow

# Go option -> why wallaby does without it (source options; "*" for any destination).
DROPPED: dict[str, dict[str, str]] = {
    "source": {
        "start_lsn": "the migrated checkpoint is where the flow resumes (wallaby-worker -start-lsn replays from an"
                     " LSN on purpose)",
        "tables": "the Go backfill's table selection: give it to wallaby-worker -mode backfill -tables",
        "schemas": "the Go backfill's schema selection: give it to wallaby-worker -mode backfill -schemas",
        "snapshot_state_dsn": "wallaby keeps backfill progress in the source database (snapshot_state_backend"
                              " postgres) or in a file (snapshot_state_path)",
    },
}
# Go destination options wallaby spells otherwise: type -> {Go name: wallaby's}.
RENAMED: dict[str, dict[str, str]] = {"grpc": {"address": "endpoint"}}
# The Go build's Snowflake meta table (WALLABY_META.__METADATA: a row per key, SYNCED_AT, IS_DELETED, LSN, ...) has
# wallaby's default name and another shape (a row per table: PRIMARY_KEY, COLUMNS_JSON, ...): wallaby's gets its own.
SNOWFLAKE_META_TABLE = "__WALLABY_METADATA"
# The Go build's backfill progress table has wallaby's default name (wallaby.snapshot_state) and another shape
# (partition_index, cursor, status): a migrated flow keeps its own.
SNAPSHOT_STATE_TABLE = "wallaby_snapshot_state"

# Go config keys -> wallaby's (the Go build's field names, before its JSON tags).
CONFIG_KEYS = {"AckPolicy": "ack_policy", "PrimaryDestination": "primary_destination",
               "FailureMode": "failure_mode", "GiveUpPolicy": "give_up_policy", "DDL": "ddl"}
DDL_KEYS = {"Gate": "gate", "AutoApprove": "auto_approve", "AutoApply": "auto_apply"}
# Go connector types wallaby has none of, and why no nearest name is offered.
GO_ONLY_TYPES = {
    "postgres": "the Go build's Postgres destination (rows applied to Postgres tables) has no wallaby counterpart"
                " (pgstream is a message stream, not tables)",
    "parquet": "the Go build's parquet endpoint has no wallaby counterpart (s3 with format parquet writes Parquet"
               " objects)",
    "proto": "the Go build's proto endpoint has no wallaby counterpart (grpc, kafka, http or s3 with format proto"
             " carry protobuf)",
}
TYPED_ENDPOINT = ("an endpoint in the typed form of a Go build from August 2026 on (one config per connector):"
                  " not translated; create the flow in wallaby from a flow file")


@dataclass
class Translation:
    """The wallaby spec of a Go flow (None: refused, see ``problems``), and what was left out on the way."""

    spec: dict[str, Any] | None
    dropped: list[str] = field(default_factory=list)  # "path: why"
    changed: list[str] = field(default_factory=list)  # "path: what and why"
    problems: list[str] = field(default_factory=list)  # "path: what is wrong"
    flow: FlowSpec | None = None


def _field(obj: Mapping, *names: str) -> Any:
    for n in names:
        if n in obj:
            return obj[n]
    return None


def _endpoint(raw: Any, path: str, out: Translation) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        out.problems.append(f"{path}: expected an object, found {type(raw).__name__}")
        return None
    if not ({"Type", "type", "Options", "options"} & set(raw)):
        out.problems.append(f"{path}: {TYPED_ENDPOINT}")
        return None
    options = _field(raw, "Options", "options") or {}
    if not isinstance(options, Mapping):
        out.problems.append(f"{path}.options: expected an object of option names to values")
        return None
    name, etype = _field(raw, "Name", "name"), _field(raw, "Type", "type")
    return {"name": name if name not in (None, "") else etype, "type": etype,
            "options": {str(k): v for k, v in options.items() if v is not None}}


def _drop(ep: dict[str, Any], path: str, kind: str, flow_id: str, asked: set[str], out: Translation) -> None:
    opts = ep["options"]
    for key in sorted(opts):
        why = DROPPED.get(kind, {}).get(key)
        if kind == "destination" and key == "flow_id" and str(opts[key]) == flow_id:
            why = "the Go build's id of the flow, which wallaby takes from the flow itself"
        if why is None and key in asked:
            why = "-drop-options"
        if why is not None:
            out.dropped.append(f"{path}.options.{key}: {why}")
            del opts[key]


def _adjust(ep: dict[str, Any], path: str, out: Translation) -> None:
    """Renamed options, and a Snowflake meta table of wallaby's own name."""
    opts, etype = ep["options"], str(ep.get("type") or "").strip().lower()
    for go_name, ours in RENAMED.get(etype, {}).items():
        if go_name in opts:
            value = opts.pop(go_name)
            if ours in opts:
                out.dropped.append(f"{path}.options.{go_name}: {ours} is given too, and the Go build uses that")
            else:
                opts[ours] = value
                out.changed.append(f"{path}.options.{go_name} -> {ours}: wallaby's name of it")
    enabled = str(opts.get("meta_table_enabled", "true")).strip().lower() not in ("false", "0", "no", "off")
    if etype == "snowflake" and enabled and "meta_table" not in opts:
        opts["meta_table"] = SNOWFLAKE_META_TABLE
        out.changed.append(f"{path}.options.meta_table = {SNOWFLAKE_META_TABLE}: the Go build's"
                           " WALLABY_META.__METADATA has another shape (a row per key) than wallaby's (a row per"
                           " table), and is left to it")
    elif etype == "snowpipe" and enabled:
        opts["meta_table_enabled"] = "false"
        out.changed.append(f"{path}.options.meta_table_enabled = false: the Go build's WALLABY_META.__METADATA has"
                           " another shape than wallaby's, and wallaby's Snowpipe destination cannot name another")


def _types(ep: dict[str, Any] | None, path: str, known: list[str], kind: str, out: Translation) -> None:
    if ep is None or not isinstance(ep.get("type"), str):
        return
    etype = ep["type"].strip().lower()
    if etype not in known:
        if etype in GO_ONLY_TYPES and kind == "destination":
            hint = f": {GO_ONLY_TYPES[etype]}"
        else:
            hint = did_you_mean(etype, known) or f" (wallaby's {kind} types: {', '.join(known)})"
        out.problems.append(f"{path}.type: wallaby has no {kind} of type {etype!r}{hint}")


def _config(raw: Any, out: Translation) -> dict[str, Any]:
    if raw in (None, "", {}):
        return {}
    if not isinstance(raw, Mapping):
        out.problems.append("config: expected an object")
        return {}
    cfg: dict[str, Any] = {}
    for key, value in raw.items():
        ours = CONFIG_KEYS.get(key, key)
        if value in (None, "", {}, []):
            continue  # unset in Go (its zero values): wallaby's defaults are the same
        if ours == "ddl" and isinstance(value, Mapping):
            ddl = {DDL_KEYS.get(k, k): v for k, v in value.items() if v is not None}
            if ddl:
                cfg["ddl"] = ddl
            continue
        cfg[ours] = value  # an unknown field is refused by parse_flow, by name
    return cfg


def translate(go: GoFlow, drop_options: set[str] | None = None) -> Translation:
    """The wallaby flow spec of ``go``, what was dropped, and what refuses it."""
    out = Translation(spec=None)
    asked = set(drop_options or ())
    source = _endpoint(go.source, "source", out)
    dests_raw = go.destinations if isinstance(go.destinations, list) else None
    if dests_raw is None:
        out.problems.append("destinations: expected a list")
        dests_raw = []
    dests = [_endpoint(d, f"destinations[{i}]", out) for i, d in enumerate(dests_raw)]
    _types(source, "source", sorted(SOURCE_OPTIONS), "source", out)
    for i, d in enumerate(dests):
        _types(d, f"destinations[{i}]", sorted(registry.options_models()), "destination", out)
    if source is not None:
        _drop(source, "source", "source", go.id, asked, out)
        if "snapshot_state_table" not in source["options"]:
            source["options"]["snapshot_state_table"] = SNAPSHOT_STATE_TABLE
            out.changed.append(f"source.options.snapshot_state_table = {SNAPSHOT_STATE_TABLE}: the Go build's"
                               " wallaby.snapshot_state (backfill progress) has another shape, and is left to it")
    for i, d in enumerate(dests):
        if d is not None:
            _drop(d, f"destinations[{i}]", "destination", go.id, asked, out)
            _adjust(d, f"destinations[{i}]", out)
    spec: dict[str, Any] = {"id": go.id, "name": go.name or go.id, "source": source, "destinations": dests}
    if go.wire_format:
        spec["wire_format"] = go.wire_format
    if go.parallelism not in (None, 0):
        spec["parallelism"] = go.parallelism
    cfg = _config(go.config, out)
    if cfg:
        spec["config"] = cfg
    if out.problems:
        return out
    try:
        out.flow = parse_flow(spec, origin=f"Go flow {go.id}")
    except ConfigError as exc:
        out.problems += [redact_dsn(f"{p.path}: {p.message}" if p.path else p.message) for p in exc.problems]
        return out
    out.spec = spec
    return out
