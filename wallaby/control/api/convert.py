"""Between the API's ``wallaby.v1.Flow`` messages and wallaby's flow spec.

Requests come in with enum names (``ENDPOINT_TYPE_POSTGRES``, ``WIRE_FORMAT_ARROW``)
and string options; they are turned into the spec's JSON shape and validated by
:func:`wallaby.core.spec.parse_flow` like a flow file. Responses show
:meth:`FlowSpec.redacted` options only: no password leaves the server. A Flow sent
back with those masks (GetFlow -> edit -> UpdateFlow) keeps the stored secrets
(:func:`unmask`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from wallaby.core.errors import MASK, ConfigError, FieldProblem
from wallaby.core.options import parse_bool
from wallaby.core.secrets import shown_option
from wallaby.core.spec import FlowSpec, default_wire_format, parse_flow, redact_option
from wallaby.state.flowstore import StoredFlow
from wallaby.v1 import types_pb2 as pb

_STATE_ENUM = {"created": pb.FLOW_STATE_CREATED, "running": pb.FLOW_STATE_RUNNING, "paused": pb.FLOW_STATE_PAUSED,
               "stopping": pb.FLOW_STATE_STOPPING, "failed": pb.FLOW_STATE_FAILED, "stopped": pb.FLOW_STATE_STOPPED}


def _enum_word(enum, value: int, prefix: str) -> str | None:
    """``ENDPOINT_TYPE_POSTGRES`` -> ``postgres``; None for 0 (unspecified)."""
    if not value:
        return None
    return enum.Name(value).removeprefix(prefix).lower()


def _enum_value(enum, word: str, prefix: str) -> int:
    try:
        return enum.Value(prefix + word.upper())
    except ValueError:
        return 0


def _endpoint_in(ep: pb.Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {"name": ep.name, "options": dict(ep.options)}
    kind = _enum_word(pb.EndpointType, ep.type, "ENDPOINT_TYPE_")
    if kind:
        out["type"] = kind
    return out


def flow_to_spec_dict(flow: pb.Flow) -> dict[str, Any]:
    """The flow spec JSON of a Flow message (output-only fields left out)."""
    d: dict[str, Any] = {}
    if flow.id:
        d["id"] = flow.id
    if flow.name:
        d["name"] = flow.name
    wire = _enum_word(pb.WireFormat, flow.wire_format, "WIRE_FORMAT_")
    if wire:
        d["wire_format"] = wire
    if flow.parallelism:
        d["parallelism"] = flow.parallelism
    if flow.HasField("source"):
        d["source"] = _endpoint_in(flow.source)
    d["destinations"] = [_endpoint_in(e) for e in flow.destinations]
    if flow.HasField("config"):
        c = flow.config
        cfg: dict[str, Any] = {}
        for key, enum, prefix in (("ack_policy", pb.AckPolicy, "ACK_POLICY_"),
                                  ("failure_mode", pb.FailureMode, "FAILURE_MODE_"),
                                  ("give_up_policy", pb.GiveUpPolicy, "GIVE_UP_POLICY_")):
            word = _enum_word(enum, getattr(c, key), prefix)
            if word:
                cfg[key] = word
        if c.primary_destination:
            cfg["primary_destination"] = c.primary_destination
        if c.HasField("ddl"):
            cfg["ddl"] = {k: getattr(c.ddl, k) for k in ("gate", "auto_approve", "auto_apply") if c.ddl.HasField(k)}
        d["config"] = cfg
    return d


def option_text(v: Any) -> str:
    """An option value as the API's string: a list of scalars comma-joined (list options split on commas),
    other lists and objects as JSON text."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list) and all(isinstance(x, str | int | float) for x in v):
        return ",".join(str(x) for x in v)
    if isinstance(v, list | dict):
        return json.dumps(v)
    return "" if v is None else str(v)


def _endpoint_out(ep: Mapping[str, Any]) -> pb.Endpoint:
    return pb.Endpoint(name=ep["name"], type=_enum_value(pb.EndpointType, ep["type"], "ENDPOINT_TYPE_"),
                       options={k: option_text(v) for k, v in ep["options"].items()})


def _ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def _shown(key: str, value: Any) -> Any:
    """An option's value as the API shows it: redacted, but ``${env:...}`` / ``${file:...}`` references as written
    (the store keeps them unresolved; see :mod:`wallaby.core.secrets`)."""
    return shown_option(key, value, redact_option)


def stored_to_flow(stored: StoredFlow) -> pb.Flow:
    """The API view of a stored flow: redacted options (references shown as written), state, generation, times."""
    spec = FlowSpec.model_validate(stored.spec)
    data = spec.redacted()
    for ep, raw in zip([data["source"], *data["destinations"]], [spec.source, *spec.destinations], strict=True):
        ep["options"] = {k: _shown(k, v) for k, v in raw.options.items()}
    cfg = data["config"]
    ddl = pb.DDLPolicy(**{k: v for k, v in cfg["ddl"].items() if v is not None})
    return pb.Flow(
        id=stored.id, name=data["name"], source=_endpoint_out(data["source"]),
        destinations=[_endpoint_out(d) for d in data["destinations"]],
        state=_STATE_ENUM.get(stored.state, pb.FLOW_STATE_UNSPECIFIED),
        wire_format=_enum_value(pb.WireFormat, data["wire_format"], "WIRE_FORMAT_"),
        parallelism=data["parallelism"],
        config=pb.FlowConfig(
            ack_policy=_enum_value(pb.AckPolicy, cfg["ack_policy"], "ACK_POLICY_"),
            primary_destination=cfg.get("primary_destination") or "",
            failure_mode=_enum_value(pb.FailureMode, cfg["failure_mode"], "FAILURE_MODE_"),
            give_up_policy=_enum_value(pb.GiveUpPolicy, cfg["give_up_policy"], "GIVE_UP_POLICY_"),
            ddl=ddl),
        generation=stored.generation, state_reason=stored.state_reason,
        created_at=_ts(stored.created_at), updated_at=_ts(stored.updated_at),
    )


def unmask(new: dict[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` with every masked option value (as GetFlow shows it) replaced by the stored secret it stands for."""

    def fix(ep: dict[str, Any], before: Mapping[str, Any] | None) -> None:
        if not before or not isinstance(ep.get("options"), dict):
            return
        for key, value in list(ep["options"].items()):
            if isinstance(value, str) and MASK in value and key in before.get("options", {}):
                stored = before["options"][key]
                if option_text(_shown(key, stored)) == value:
                    ep["options"][key] = stored

    if isinstance(new.get("source"), dict):
        fix(new["source"], old.get("source"))
    by_name = {d.get("name"): d for d in old.get("destinations", [])}
    for d in new.get("destinations", []):
        if isinstance(d, dict):
            fix(d, by_name.get(d.get("name")))
    return new


def wire_enforce(env: Mapping[str, str]) -> bool:
    raw = (env.get("WALLABY_WIRE_ENFORCE") or "").strip()
    try:
        return parse_bool(raw) if raw else False
    except ValueError as exc:
        raise ConfigError("environment", [FieldProblem("WALLABY_WIRE_ENFORCE", str(exc))]) from None


def check_wire_format(spec: FlowSpec, env: Mapping[str, str]) -> None:
    """With ``WALLABY_WIRE_ENFORCE=true``, the flow's and every destination's format must be the service's
    (``WALLABY_WIRE_FORMAT``)."""
    if not wire_enforce(env):
        return
    service = default_wire_format(env)
    why = f"does not match the service wire format {service!r} (WALLABY_WIRE_FORMAT, enforced by WALLABY_WIRE_ENFORCE)"
    problems = []
    if spec.wire_format != service:
        problems.append(FieldProblem("wire_format", f"{spec.wire_format!r} {why}"))
    for i, d in enumerate(spec.destinations):
        fmt = d.options.get("format")
        if isinstance(fmt, str) and fmt.strip() and fmt.strip().lower() != service:
            problems.append(FieldProblem(f"destinations[{i}].options.format", f"{fmt.strip()!r} {why}"))
    if problems:
        raise ConfigError(f"flow {spec.name!r}", problems)


def parse_api_flow(flow: pb.Flow, old: StoredFlow | None = None) -> FlowSpec:
    """Validate a Flow message like a flow file (every problem in one :class:`ConfigError`)."""
    d = flow_to_spec_dict(flow)
    if old is not None:
        d = unmask(d, old.spec)
    return parse_flow(d, origin="api")
