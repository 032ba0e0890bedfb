"""``wallaby-admin``: manage flows, slots, publications, checkpoints and DDL through the wallaby API server.

    wallaby-admin [global flags] flow list
    wallaby-admin flow get -flow-id ID
    wallaby-admin flow create -file FLOW.json [-start]
    wallaby-admin flow update -file FLOW.json
    wallaby-admin flow start|pause|resume|stop|delete|run-once -flow-id ID
    wallaby-admin flow cleanup -flow-id ID [-drop-slot] [-drop-publication] [-drop-source-state]  (none: all three)
    wallaby-admin flow resolve-staging -flow-id ID [-tables s.t1,s.t2 | -schemas a,b] [-dest NAME]  (flow not running)
    wallaby-admin backfill status -flow-id ID  (per table: parts done, rows read, times; running, unfinished, finished)
    wallaby-admin publication list -flow-id ID
    wallaby-admin publication sync -flow-id ID [-schemas a,b] [-tables s.t1,s.t2] [-mode add|sync] [-pause] [-resume]
                                   [-snapshot]
    wallaby-admin slot list|get -flow-id ID
    wallaby-admin slot drop -flow-id ID [-if-exists]
    wallaby-admin checkpoint get -flow-id ID
    wallaby-admin checkpoint list
    wallaby-admin checkpoint reset -flow-id ID [-dest NAME]  (flow not running; -dest: one destination's high-water)
    wallaby-admin ddl list [-status pending|approved|rejected|applied|all] [-flow-id ID]
    wallaby-admin ddl approve|reject|apply -id N
    wallaby-admin stream pull -stream S -group G [-max 10] [-visibility 30] [-consumer ID]
    wallaby-admin stream ack -stream S -group G -ids 1,2,3
    wallaby-admin stream replay -stream S -group G -since 2025-01-01T00:00:00Z | -from-lsn X/Y
    wallaby-admin migrate go-wallaby -dsn GO_DSN [-dry-run] [-flow-id ID]  (the Go WALlaby's flows, state and
                                     checkpoints into our store; docs/migrating.md)

Global flags (before the command or after it): ``-addr HOST:PORT`` (``WALLABY_ADMIN_ADDR``, else
localhost:8080), ``-token T`` (``WALLABY_API_TOKEN``; sent as ``authorization: Bearer T``), ``-tls``,
``-ca-file PEM``, ``-o table|json``, ``-timeout SECONDS`` (30).

The Go wallaby-admin's spellings of them are taken too, in either place: ``-endpoint HOST:PORT`` (``-addr``),
``-insecure`` (plaintext gRPC, the default; it contradicts ``-tls``; ``-insecure=false`` asks for TLS, as ``-tls``),
``-json`` (JSON on one line), ``-pretty`` (indented JSON, as ``-o json``); Go's ``-flag=true|false`` form of them
as well. The JSON is the API's messages (field names as in the proto), not the Go tool's own shapes.

Flags take one dash or two (``-flow-id X``, ``--flow-id=X``). Exit status: 0 on success, 1 for an
API error, 2 for bad usage or a bad flow file, 3 when the API server cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from wallaby.control import migrate_go
from wallaby.control.api.convert import option_text
from wallaby.core.errors import redact_dsn
from wallaby.core.options import parse_bool
from wallaby.v1 import (
    checkpoint_pb2,
    checkpoint_pb2_grpc,
    ddl_pb2,
    ddl_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
    types_pb2,
)

PROG = "wallaby-admin"
GLOBAL_DEFAULTS: dict[str, Any] = {"token": None, "tls": False, "ca_file": None, "output": "table", "timeout": 30.0}
# Enum-valued fields of a flow file (last key of their path) -> (proto enum, prefix of its value names).
ENUM_FIELDS: dict[str, tuple[Any, str]] = {
    "wire_format": (types_pb2.WireFormat, "WIRE_FORMAT_"),
    "type": (types_pb2.EndpointType, "ENDPOINT_TYPE_"),
    "ack_policy": (types_pb2.AckPolicy, "ACK_POLICY_"),
    "failure_mode": (types_pb2.FailureMode, "FAILURE_MODE_"),
    "give_up_policy": (types_pb2.GiveUpPolicy, "GIVE_UP_POLICY_"),
}


class UsageError(Exception):
    """Bad command line or flow file: exit 2 before any RPC."""


def _flag(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    p.add_argument(f"-{name}", f"--{name}", **kw)


def _globals(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a flag given before the subcommand is not overwritten by the subparser's default.
    s = argparse.SUPPRESS
    p.add_argument("-addr", "--addr", "-endpoint", "--endpoint", dest="addr", default=s,
                   help="API server HOST:PORT (env WALLABY_ADMIN_ADDR, default localhost:8080); -endpoint: the Go"
                        " wallaby-admin's spelling")
    _flag(p, "token", default=s, help="bearer token (env WALLABY_API_TOKEN)")
    _flag(p, "tls", action="store_true", default=s, help="connect with TLS")
    _flag(p, "ca-file", dest="ca_file", default=s, help="root CA PEM file for -tls")
    p.add_argument("-o", "-output", "--output", dest="output", choices=["table", "json"], default=s,
                   help="output format (default table)")
    _flag(p, "timeout", type=float, default=s, help="RPC deadline in seconds (default 30)")
    # the Go wallaby-admin's spellings (docs/migrating.md); -insecure=false and the like: _go_bool_flags
    _flag(p, "insecure", action="store_true", default=s,
          help="plaintext gRPC, as without -tls (the Go tool's default; -insecure=false asks for TLS, as -tls)")
    _flag(p, "json", dest="json_line", action="store_true", default=s, help="JSON output on one line (as -o json,"
                                                                            " not indented)")
    _flag(p, "pretty", action="store_true", default=s, help="indented JSON output (as -o json)")


def _parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog=PROG, description="Manage wallaby flows through the API server.",
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="Run 'wallaby-admin GROUP --help' for the commands of a group.")
    _globals(root)
    groups = root.add_subparsers(dest="group", metavar="GROUP", required=True)

    def group(name: str, help_: str) -> argparse._SubParsersAction:
        g = groups.add_parser(name, help=help_, description=help_)
        _globals(g)
        return g.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    def cmd(sub: argparse._SubParsersAction, name: str, help_: str, flow_id: bool | None = True
            ) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        _globals(c)
        if flow_id is not None:
            _flag(c, "flow-id", dest="flow_id", required=flow_id, default="", help="flow id")
        return c

    flow = group("flow", "create flows and drive their lifecycle")
    cmd(flow, "list", "list flows", flow_id=None)
    cmd(flow, "get", "show one flow")
    for name, what in (("create", "create a flow from a flow JSON file"), ("update", "replace a flow's spec")):
        c = cmd(flow, name, what, flow_id=None)
        _flag(c, "file", required=True, help="flow JSON file")
        if name == "create":
            _flag(c, "start", action="store_true", help="start the flow right away")
    for name in ("start", "pause", "resume", "stop", "delete", "run-once"):
        cmd(flow, name, f"{name} a flow")
    c = cmd(flow, "cleanup", "drop a flow's slot, publication and/or source state")
    for name in ("drop-slot", "drop-publication", "drop-source-state"):
        _flag(c, name, dest=name.replace("-", "_"), action="store_true")
    c = cmd(flow, "resolve-staging", "move the rows a backfill staged (batch_mode=staging) into their target tables"
                                     " by batch_resolution (append or replace); the flow must not be running")
    _flag(c, "tables", default="", help="comma-separated schema.table names (default: every staged table)")
    _flag(c, "schemas", default="", help="comma-separated schemas whose tables are resolved")
    _flag(c, "dest", default="", help="only this destination (default: every destination that stages loads)")

    bf = group("backfill", "see what a flow's backfill (wallaby-worker -mode backfill) has done")
    cmd(bf, "status", "per table: parts done, rows read (the least over the destinations, each one's when they"
                      " differ), when it started and last moved; whether the backfill is running, unfinished (it"
                      " resumes), finished or never ran. From the flow's snapshot state store")

    pub = group("publication", "list and change the tables of a flow's publication")
    cmd(pub, "list", "list the publication's tables")
    c = cmd(pub, "sync", "add tables to the publication (mode add) or make it match (mode sync)")
    _flag(c, "schemas", default="", help="comma-separated schemas whose tables are added")
    _flag(c, "tables", default="", help="comma-separated schema.table names")
    _flag(c, "mode", choices=["add", "sync"], default="", help="add (only add) or sync (also remove others)")
    _flag(c, "pause", action="store_true", help="pause the flow's worker around the change")
    _flag(c, "resume", action="store_true", help="resume the flow after the change")
    _flag(c, "snapshot", action="store_true",
          help="backfill the named and added tables afterwards (the flow paused: with -pause; -resume resumes it"
               " when the backfill ends)")

    slot = group("slot", "inspect and drop a flow's replication slot")
    cmd(slot, "list", "list replication slots")
    cmd(slot, "get", "show the flow's slot")
    _flag(cmd(slot, "drop", "drop the flow's slot"), "if-exists", dest="if_exists", action="store_true")

    cp = group("checkpoint", "show the confirmed positions of flows, or reset them on purpose")
    cmd(cp, "get", "show one flow's checkpoint")
    cmd(cp, "list", "list every flow's checkpoint", flow_id=None)
    c = cmd(cp, "reset", "discard a stopped flow's stored positions (checkpoint, recovery store, every destination's"
                         " high-water), or one destination's high-water (-dest); the next start begins at the slot's"
                         " position")
    _flag(c, "dest", default=None, help="reset only this destination's high-water")

    ddl = group("ddl", "list, approve, reject and apply captured schema changes")
    c = cmd(ddl, "list", "list DDL events", flow_id=False)
    _flag(c, "status", choices=["pending", "approved", "rejected", "applied", "all"], default="pending")
    for name in ("approve", "reject", "apply"):
        _flag(cmd(ddl, name, f"{name} a DDL event", flow_id=None), "id", type=int, required=True, help="event id")

    stream = group("stream", "pull, ack and replay the messages of a pgstream destination")
    for name, what in (("pull", "lease messages for a consumer group"), ("ack", "acknowledge messages"),
                       ("replay", "make a group's messages since a time or LSN ready again")):
        c = cmd(stream, name, what, flow_id=None)
        _flag(c, "stream", required=True, help="stream name (the pgstream destination's stream)")
        _flag(c, "group", dest="consumer_group", required=True, help="consumer group")
        if name == "pull":
            _flag(c, "max", type=int, default=10, help="at most this many messages (default 10)")
            _flag(c, "visibility", type=int, default=30, help="lease seconds (default 30)")
            _flag(c, "consumer", default="", help="consumer id recorded with the lease")
        elif name == "ack":
            _flag(c, "ids", required=True, help="comma-separated message ids")
        else:
            _flag(c, "since", default="", help="RFC 3339 time, e.g. 2025-01-01T00:00:00Z")
            _flag(c, "from-lsn", dest="from_lsn", default="", help="LSN X/Y")
    return root


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _enum_name(value: Any, field: str) -> Any:
    enum, prefix = ENUM_FIELDS[field.rsplit(".", 1)[-1].split("[")[0]]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise UsageError(f"{field}: expected a string, got {json.dumps(value)}")
    name = value.strip().upper().replace("-", "_")
    if not name.startswith(prefix):
        name = prefix + name
    names = list(enum.keys())
    if name not in names:
        known = ", ".join(k[len(prefix):].lower() for k in names if not k.endswith("_UNSPECIFIED"))
        raise UsageError(f"{field}: unknown value {value!r} (known: {known})")
    return name


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{field}: expected an object")
    return dict(value)


def _endpoint(ep: Any, field: str) -> dict[str, Any]:
    out = _object(ep, field)
    if "type" in out:
        out["type"] = _enum_name(out["type"], f"{field}.type")
    if out.get("options") is not None:
        opts = _object(out["options"], f"{field}.options")
        out["options"] = {str(k): option_text(v) for k, v in opts.items() if v is not None}
    return out


def _bool(value: Any, field: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise UsageError(f"{field}: {exc}") from None


def flow_from_dict(data: Any) -> types_pb2.Flow:
    """A flow file (spec shape or proto-JSON shape) as a proto Flow; UsageError names the bad field.

    Proto-JSON files (camelCase keys, enum names such as ``ENDPOINT_TYPE_POSTGRES``) pass through as they are."""
    d = _object(data, "flow file")
    if d.get("wire_format") is not None:
        d["wire_format"] = _enum_name(d["wire_format"], "wire_format")
    if "source" in d:
        d["source"] = _endpoint(d["source"], "source")
    if "destinations" in d:
        if not isinstance(d["destinations"], list):
            raise UsageError("destinations: expected a list")
        d["destinations"] = [_endpoint(ep, f"destinations[{i}]") for i, ep in enumerate(d["destinations"])]
    if d.get("config") is not None:
        cfg = {k: v for k, v in _object(d["config"], "config").items() if v is not None}
        for key in ("ack_policy", "failure_mode", "give_up_policy"):
            if key in cfg:
                cfg[key] = _enum_name(cfg[key], f"config.{key}")
        if "ddl" in cfg:
            ddl = _object(cfg["ddl"], "config.ddl")
            cfg["ddl"] = {k: _bool(v, f"config.ddl.{k}") for k, v in ddl.items() if v is not None}
        d["config"] = cfg
    try:
        return json_format.ParseDict(d, types_pb2.Flow())
    except json_format.ParseError as exc:
        raise UsageError(" ".join(str(exc).split())) from None


def load_flow_file(path: str) -> types_pb2.Flow:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"-file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"-file {path}: not valid JSON: {exc}") from None
    try:
        return flow_from_dict(data)
    except UsageError as exc:
        raise UsageError(f"-file {path}: {exc}") from None


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned to their widest cell, two blanks apart; the last column is not padded."""
    cells = [[str(c) for c in header], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _short(enum: Any, value: int) -> str:
    """An enum value as a lower-case word: FLOW_STATE_RUNNING -> running."""
    prefix = enum.Name(0).removesuffix("UNSPECIFIED")
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def _ep(ep: types_pb2.Endpoint) -> str:
    return f"{ep.name}({_short(types_pb2.EndpointType, ep.type)})"


def _when(ts: Any) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat() if ts.seconds or ts.nanos else ""


def _millis(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds") if ms else ""


def _flow_detail(f: types_pb2.Flow) -> str:
    cfg, ddl, T = f.config, f.config.ddl, types_pb2
    lines = [
        ("id", f.id), ("name", f.name), ("state", _short(T.FlowState, f.state)), ("generation", f.generation),
        ("reason", f.state_reason), ("wire_format", _short(T.WireFormat, f.wire_format)),
        ("parallelism", f.parallelism), ("source", _ep(f.source)),
        ("ack_policy", _short(T.AckPolicy, cfg.ack_policy)), ("primary_destination", cfg.primary_destination),
        ("failure_mode", _short(T.FailureMode, cfg.failure_mode)),
        ("give_up_policy", _short(T.GiveUpPolicy, cfg.give_up_policy)),
        ("ddl", " ".join(f"{k}={str(getattr(ddl, k)).lower()}" for k in ("gate", "auto_approve", "auto_apply")
                         if ddl.HasField(k))),
        ("created", _when(f.created_at)), ("updated", _when(f.updated_at)),
    ]
    lines = [(k, v) for k, v in lines if v != ""]
    width = max(len(k) for k, _ in lines) + 1
    out = [f"{k + ':':<{width}} {v}" for k, v in lines]
    out.append("destinations:")
    out += [f"  - {_ep(d)}" for d in f.destinations] or ["  (none)"]
    return "\n".join(out)


def _ddl_text(ddl: str) -> str:
    one = " ".join(ddl.split())
    return one if len(one) <= 60 else one[:57] + "..."


def _slot_rows(slots: Sequence[flow_pb2.ReplicationSlotInfo]) -> str:
    rows = [(s.slot_name, s.plugin, "yes" if s.active else "no", s.restart_lsn, s.confirmed_flush_lsn, s.wal_status)
            for s in slots]
    return table(("SLOT", "PLUGIN", "ACTIVE", "RESTART_LSN", "CONFIRMED_FLUSH", "WAL_STATUS"), rows)


def _checkpoint_rows(cps: Sequence[checkpoint_pb2.FlowCheckpoint]) -> str:
    rows = [(c.flow_id, c.checkpoint.lsn, c.checkpoint.metadata.get("slot", ""),
             c.checkpoint.metadata.get("position", ""), _millis(c.checkpoint.timestamp_unix_millis)) for c in cps]
    return table(("FLOW", "LSN", "SLOT", "POSITION", "UPDATED"), rows)


def _reset_text(resp: checkpoint_pb2.ResetCheckpointResponse) -> str:
    """What ``checkpoint reset`` did, and what the flow's next start does."""
    f = resp.flow_id
    if resp.destination:
        lines = [f"flow {f}: destination {resp.destination!r}: reset asked for.",
                 f"Next start: the worker discards destination {resp.destination!r}'s stored high-water (whatever"
                 " source it came from) and writes every change again from where the flow resumes; the flow's"
                 " other positions are still checked against the source."]
    else:
        deleted = [f"slot {c.checkpoint.metadata.get('slot', '?')} at {c.checkpoint.lsn}"
                   for c in resp.deleted_checkpoints]
        lines = [f"flow {f}: every stored position reset; checkpoint rows deleted: {', '.join(deleted) or 'none'}.",
                 "Next start: the worker empties the flow's recovery store, discards every destination's stored"
                 " high-water and streams from the replication slot's position (a slot created anew starts at its"
                 " consistent point: changes made before it are not streamed; backfill them if needed)."]
    waiting = ", ".join("all" if r == "*" else repr(r) for r in resp.pending_resets)
    lines.append(f"Resets waiting for the next worker: {waiting or 'none'} (cleared once its first epoch is"
                 " confirmed).")
    return "\n".join(lines)


def _staging_text(resp: flow_pb2.ResolveStagingResponse, flow_id: str) -> str:
    if not resp.tables:
        return f"flow {resp.flow_id or flow_id}: nothing staged"
    rows = [(t.destination, t.table, t.staging_table, t.resolution if t.staged else "nothing staged",
             t.rows if t.staged else "") for t in resp.tables]
    return table(("DESTINATION", "TABLE", "STAGING_TABLE", "RESOLUTION", "ROWS"), rows)


BACKFILL_STATE_WORDS = {"never_ran": "never ran", "unknown": "unknown (no state kept)"}


def _moment(ts: Any) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds") if ts.seconds or ts.nanos else ""


def _backfill_text(resp: flow_pb2.GetBackfillStatusResponse, flow_id: str) -> str:
    """``backfill status``: a head (state, store, times), a row per table (and per destination where they differ),
    the note."""
    def word(state: int) -> str:
        short = _short(flow_pb2.BackfillState, state)
        return BACKFILL_STATE_WORDS.get(short, short)

    lines = [f"flow {resp.flow_id or flow_id}: backfill {word(resp.state)}",
             f"state store: {resp.backend}" + (f", {resp.location}" if resp.location else "")]
    times = [f"{k} {_moment(v)}" for k, v in (("started", resp.started_at), ("updated", resp.updated_at),
                                               ("finished", resp.finished_at)) if _moment(v)]
    if times:
        lines.append(", ".join(times))
    if resp.running_detail:
        lines.append(f"running: {resp.running_detail}")
    if resp.tables:
        rows: list[tuple] = []
        for t in resp.tables:
            rows.append((t.table, word(t.state), f"{t.parts_done}/{t.parts_total}", t.rows, _moment(t.started_at),
                         _moment(t.updated_at)))
            if t.destinations_differ:
                rows += [(f"  {d.destination}", "", f"{d.parts_done}/{t.parts_total}", d.rows, "", "")
                         for d in t.destinations]
        lines += ["", table(("TABLE", "STATE", "PARTS", "ROWS", "STARTED", "UPDATED"), rows)]
    if resp.note:
        lines += ["", resp.note]
    return "\n".join(lines)


def _render(resp: Message, args: argparse.Namespace) -> str:
    """The table text of a response (the JSON is generic)."""
    key = (args.group, args.cmd)
    if key == ("flow", "list"):
        rows = [(f.id, f.name, _short(types_pb2.FlowState, f.state), f.generation, _ep(f.source),
                 ", ".join(_ep(d) for d in f.destinations)) for f in resp.flows]
        return table(("ID", "NAME", "STATE", "GEN", "SOURCE", "DESTINATIONS"), rows)
    if key == ("flow", "get"):
        return _flow_detail(resp)
    if key == ("flow", "delete"):
        return f"flow {args.flow_id}: {'deleted' if resp.deleted else 'not deleted'}"
    if key == ("flow", "run-once"):
        return f"flow {args.flow_id}: {'run dispatched' if resp.dispatched else 'run not dispatched'}"
    if key == ("flow", "cleanup"):
        return f"flow {args.flow_id}: {'cleaned up' if resp.cleaned else 'nothing cleaned'}"
    if key == ("flow", "resolve-staging"):
        return _staging_text(resp, args.flow_id)
    if key == ("backfill", "status"):
        return _backfill_text(resp, args.flow_id)
    if args.group == "flow":
        return f"flow {resp.id or resp.name}: {_short(types_pb2.FlowState, resp.state)} (generation {resp.generation})"
    if key == ("publication", "list"):
        return table((f"TABLE (publication {resp.publication or '?'})",), [(t,) for t in resp.tables])
    if key == ("publication", "sync"):
        return (f"publication {resp.publication or '?'} of flow {resp.flow_id or args.flow_id}: "
                f"added {', '.join(resp.added) or 'none'}; removed {', '.join(resp.removed) or 'none'}"
                + (f"; backfill started for {', '.join(resp.snapshot_tables)}" if resp.snapshot_tables else ""))
    if key == ("slot", "list"):
        return _slot_rows(resp.slots)
    if key == ("slot", "get"):
        return _slot_rows([resp.slot]) if resp.HasField("slot") else f"flow {args.flow_id}: no slot"
    if key == ("slot", "drop"):
        state = "dropped" if resp.dropped else ("found, not dropped" if resp.found else "not found")
        return f"slot {resp.slot or '?'} of flow {resp.flow_id or args.flow_id}: {state}"
    if key == ("checkpoint", "get"):
        return _checkpoint_rows([resp])
    if key == ("checkpoint", "list"):
        return _checkpoint_rows(resp.checkpoints)
    if key == ("checkpoint", "reset"):
        return _reset_text(resp)
    if key == ("ddl", "list"):
        rows = [(e.id, e.flow_id, e.status, e.lsn, e.table, _ddl_text(e.ddl)) for e in resp.events]
        return table(("ID", "FLOW", "STATUS", "LSN", "TABLE", "DDL"), rows)
    if key == ("stream", "pull"):
        rows = [(m.id, m.namespace + "." + m.table if m.namespace else m.table, m.lsn, m.wire_format,
                 len(m.payload)) for m in resp.messages]
        return table(("ID", "TABLE", "LSN", "FORMAT", "BYTES"), rows)
    if key == ("stream", "ack"):
        return f"stream {args.stream}, group {args.consumer_group}: {resp.acked} acked"
    if key == ("stream", "replay"):
        return f"stream {args.stream}, group {args.consumer_group}: {resp.reset} messages ready again"
    e = resp.event
    return f"ddl {e.id}: {e.status} (flow {e.flow_id}, {e.table or '-'})"


# Commands whose request is only the flow id: (service, method, request type).
BY_FLOW_ID: dict[tuple[str, str], tuple[str, str, Any]] = {
    **{("flow", c): ("flow", m, getattr(flow_pb2, f"{m}Request")) for c, m in (
        ("get", "GetFlow"), ("start", "StartFlow"), ("pause", "PauseFlow"), ("resume", "ResumeFlow"),
        ("stop", "StopFlow"), ("delete", "DeleteFlow"), ("run-once", "RunFlowOnce"))},
    ("backfill", "status"): ("flow", "GetBackfillStatus", flow_pb2.GetBackfillStatusRequest),
    ("publication", "list"): ("flow", "ListPublicationTables", flow_pb2.ListPublicationTablesRequest),
    ("slot", "list"): ("flow", "ListReplicationSlots", flow_pb2.ListReplicationSlotsRequest),
    ("slot", "get"): ("flow", "GetReplicationSlot", flow_pb2.GetReplicationSlotRequest),
    ("checkpoint", "get"): ("checkpoint", "GetCheckpoint", checkpoint_pb2.GetCheckpointRequest),
}
DDL_METHODS = {"approve": "ApproveDDL", "reject": "RejectDDL", "apply": "MarkDDLApplied"}


def _request(args: argparse.Namespace) -> tuple[str, str, Message]:
    """(service, method, request) for the command; UsageError before any RPC."""
    key, fid = (args.group, args.cmd), getattr(args, "flow_id", "")
    if key in BY_FLOW_ID:
        service, method, req = BY_FLOW_ID[key]
        return service, method, req(flow_id=fid)
    if key == ("flow", "list"):
        return "flow", "ListFlows", flow_pb2.ListFlowsRequest()
    if key == ("flow", "create"):
        req = flow_pb2.CreateFlowRequest(flow=load_flow_file(args.file), start_immediately=args.start)
        return "flow", "CreateFlow", req
    if key == ("flow", "update"):
        return "flow", "UpdateFlow", flow_pb2.UpdateFlowRequest(flow=load_flow_file(args.file))
    if key == ("flow", "cleanup"):
        # No flag: the server drops all three. Some flags: only those.
        chosen = {k: getattr(args, k) for k in ("drop_slot", "drop_publication", "drop_source_state")}
        return "flow", "CleanupFlow", flow_pb2.CleanupFlowRequest(
            flow_id=fid, **(chosen if any(chosen.values()) else {}))
    if key == ("flow", "resolve-staging"):
        if args.tables.strip() and args.schemas.strip():
            raise UsageError("flow resolve-staging: give -tables or -schemas, not both")
        return "flow", "ResolveStaging", flow_pb2.ResolveStagingRequest(
            flow_id=fid, tables=_csv(args.tables), schemas=_csv(args.schemas), destination=args.dest.strip())
    if key == ("publication", "sync"):
        return "flow", "SyncPublicationTables", flow_pb2.SyncPublicationTablesRequest(
            flow_id=fid, tables=_csv(args.tables), schemas=_csv(args.schemas), mode=args.mode, pause=args.pause,
            resume=args.resume, snapshot=args.snapshot)
    if key == ("slot", "drop"):
        return "flow", "DropReplicationSlot", flow_pb2.DropReplicationSlotRequest(flow_id=fid,
                                                                                  if_exists=args.if_exists)
    if key == ("checkpoint", "list"):
        return "checkpoint", "ListCheckpoints", checkpoint_pb2.ListCheckpointsRequest()
    if key == ("checkpoint", "reset"):
        if args.dest is not None and not args.dest.strip():
            raise UsageError("checkpoint reset -dest: give a destination name, or leave -dest out to reset every"
                             " position of the flow")
        return "checkpoint", "ResetCheckpoint", checkpoint_pb2.ResetCheckpointRequest(flow_id=fid,
                                                                                      destination=args.dest)
    if key == ("ddl", "list"):
        return "ddl", "ListDDL", ddl_pb2.ListDDLRequest(status=args.status, flow_id=fid)
    if args.group == "stream":
        return _stream_request(args)
    method = DDL_METHODS[args.cmd]
    return "ddl", method, getattr(ddl_pb2, f"{method}Request")(id=args.id)


def _stream_request(args: argparse.Namespace) -> tuple[str, str, Message]:
    if args.cmd == "pull":
        return "stream", "Pull", stream_pb2.StreamPullRequest(
            stream=args.stream, consumer_group=args.consumer_group, max_messages=args.max,
            visibility_timeout_seconds=args.visibility, consumer_id=args.consumer)
    if args.cmd == "ack":
        try:
            ids = [int(x) for x in _csv(args.ids)]
        except ValueError:
            raise UsageError(f"-ids: expected comma-separated message ids, got {args.ids!r}") from None
        return "stream", "Ack", stream_pb2.StreamAckRequest(stream=args.stream, consumer_group=args.consumer_group,
                                                            ids=ids)
    req = stream_pb2.StreamReplayRequest(stream=args.stream, consumer_group=args.consumer_group,
                                         from_lsn=args.from_lsn)
    if args.since:
        try:
            req.since.FromJsonString(args.since)
        except ValueError:
            raise UsageError(f"-since: expected an RFC 3339 time like 2025-01-01T00:00:00Z, got {args.since!r}") \
                from None
    elif not args.from_lsn:
        raise UsageError("stream replay: give -since TIME or -from-lsn X/Y")
    return "stream", "Replay", req


STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "stream": stream_pb2_grpc.StreamServiceStub,
    "flow": flow_pb2_grpc.FlowServiceStub,
    "ddl": ddl_pb2_grpc.DDLServiceStub,
    "checkpoint": checkpoint_pb2_grpc.CheckpointServiceStub,
}


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls:
        if args.ca_file:
            raise UsageError("-ca-file needs -tls")
        return grpc.insecure_channel(args.addr)
    root = None
    if args.ca_file:
        try:
            root = Path(args.ca_file).read_bytes()
        except OSError as exc:
            raise UsageError(f"-ca-file {args.ca_file}: {exc.strerror or exc}") from None
    return grpc.secure_channel(args.addr, grpc.ssl_channel_credentials(root_certificates=root))


def _rpc_error(exc: grpc.RpcError, addr: str) -> int:
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    msg = f"{PROG}: {name}: {redact_dsn(' '.join(details.split()))}"
    if code == grpc.StatusCode.UNAVAILABLE:
        print(f"{msg} (is the API server running at {addr}?)", file=sys.stderr)
        return 3
    if code == grpc.StatusCode.UNAUTHENTICATED:
        msg += " (set WALLABY_API_TOKEN or -token)"
    print(msg, file=sys.stderr)
    return 1


# The Go tool's boolean flags written -name=VALUE (Go's flag package; argparse takes a bare -name only).
GO_BOOL_FLAGS = ("insecure", "json", "pretty", "tls")


def _go_bool_flags(argv: Sequence[str]) -> list[str]:
    """``-insecure=false`` -> ``-tls`` (the Go tool refuses it: no TLS there; here it asks for TLS),
    ``-json=true`` -> ``-json``, ``-pretty=0`` -> nothing, ..."""
    out = []
    for arg in argv:
        name, eq, value = arg.lstrip("-").partition("=")
        if not (arg.startswith("-") and eq and name in GO_BOOL_FLAGS):
            out.append(arg)
            continue
        try:
            on = parse_bool(value)
        except ValueError:
            raise UsageError(f"-{name}={value}: not a boolean (use true or false)") from None
        if on:
            out.append(f"-{name}")
        elif name == "insecure":
            out.append("-tls")
    return out


def _output_and_transport(args: argparse.Namespace, explicit_output: str | None) -> None:
    """Settle -json / -pretty with -o, and -insecure with -tls (UsageError when they contradict each other)."""
    if getattr(args, "insecure", False) and args.tls:
        raise UsageError("-insecure (plaintext gRPC) contradicts -tls (or -insecure=false): give one")
    if getattr(args, "json_line", False) or getattr(args, "pretty", False):
        flag = "-pretty" if getattr(args, "pretty", False) else "-json"
        if explicit_output == "table":
            raise UsageError(f"{flag} (JSON output) contradicts -o table: give one")
        args.output = "json" if getattr(args, "pretty", False) else "json-line"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if migrate_go.is_migrate(argv):  # reads the Go WALlaby's database and writes our store: no API server
        return migrate_go.main(argv)
    try:
        argv = _go_bool_flags(argv)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    explicit_output = getattr(args, "output", None)
    for key, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, default)
    if not hasattr(args, "addr"):
        args.addr = os.environ.get("WALLABY_ADMIN_ADDR") or "localhost:8080"
    if args.token is None:
        args.token = os.environ.get("WALLABY_API_TOKEN") or ""
    try:
        _output_and_transport(args, explicit_output)
        service, method, request = _request(args)
        channel = _channel(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    try:
        with channel:
            call = getattr(STUBS[service](channel), method)
            resp = call(request, timeout=args.timeout, metadata=metadata)
            while method == "ListFlows" and resp.next_page_token:  # follow every page into one response
                page = call(flow_pb2.ListFlowsRequest(page_token=resp.next_page_token), timeout=args.timeout,
                            metadata=metadata)
                resp.flows.extend(page.flows)
                resp.next_page_token = "" if page.next_page_token == resp.next_page_token else page.next_page_token
    except grpc.RpcError as exc:
        return _rpc_error(exc, args.addr)
    except KeyboardInterrupt:
        return 130
    if args.output in ("json", "json-line"):
        print(json_format.MessageToJson(resp, preserving_proto_field_name=True,
                                        indent=None if args.output == "json-line" else 2))
    else:
        print(_render(resp, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
