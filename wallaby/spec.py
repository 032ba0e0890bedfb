"""The flow spec: one source, its destinations, wire format, fan-out policy and DDL policy.

Loaded from JSON (the upstream WALlaby shape; options as strings or native
values). Validation collects every problem, of the flow and of each endpoint's
options, into one :class:`~wallaby.errors.ConfigError` before anything is
connected to or created.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wallaby.destination_options import DESTINATION_OPTIONS
from wallaby.errors import ConfigError, FieldProblem, redact_dsn
from wallaby.options import WIRE_FORMATS, Bool, Options, PositiveInt, PostgresSourceOptions, choice, parse_bool

SOURCE_OPTIONS: dict[str, type[Options]] = {"postgres": PostgresSourceOptions}

# Option names whose values are secrets: never shown in errors or redacted() output.
SECRET_OPTIONS = {"password", "secret_key", "session_token", "access_key", "token", "api_key", "private_key"}


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: str
    options: dict[str, Any] = Field(default_factory=dict)


class DDLPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gate: Bool | None = None
    auto_approve: Bool | None = None
    auto_apply: Bool | None = None

    def effective(self, env: dict[str, str] | None = None) -> DDLPolicy:
        """Unset fields from WALLABY_DDL_GATE (false), _AUTO_APPROVE (true), _AUTO_APPLY (true)."""
        env = os.environ if env is None else env

        def pick(value: bool | None, var: str, default: bool) -> bool:
            if value is not None:
                return value
            raw = env.get(var)
            return parse_bool(raw) if raw not in (None, "") else default

        return DDLPolicy(gate=pick(self.gate, "WALLABY_DDL_GATE", False),
                         auto_approve=pick(self.auto_approve, "WALLABY_DDL_AUTO_APPROVE", True),
                         auto_apply=pick(self.auto_apply, "WALLABY_DDL_AUTO_APPLY", True))


class FlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ack_policy: choice("all", "primary") = "all"
    primary_destination: str | None = None
    failure_mode: choice("hold_slot", "drop_slot") = "hold_slot"
    give_up_policy: choice("on_retry_exhaustion", "never") = "on_retry_exhaustion"
    ddl: DDLPolicy = Field(default_factory=DDLPolicy)


def _default_wire_format() -> str:
    return (os.environ.get("WALLABY_WIRE_FORMAT") or "arrow").strip().lower()


class FlowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = ""
    name: str = ""
    source: Endpoint
    destinations: list[Endpoint] = Field(min_length=1)
    wire_format: choice(*WIRE_FORMATS) = Field(default_factory=_default_wire_format)
    parallelism: PositiveInt = 1
    config: FlowConfig = Field(default_factory=FlowConfig)

    def source_options(self) -> PostgresSourceOptions:
        return SOURCE_OPTIONS[self.source.type].model_validate(self.source.options)  # type: ignore[return-value]

    def destination_options(self, i: int) -> Options:
        d = self.destinations[i]
        return DESTINATION_OPTIONS[d.type].model_validate(d.options)

    def redacted(self) -> dict:
        """The spec as a dict that is safe to log or return: DSN passwords and secret options masked."""
        data = self.model_dump(mode="json")
        for ep in [data["source"], *data["destinations"]]:
            for k, v in list(ep["options"].items()):
                if k in SECRET_OPTIONS and v:
                    ep["options"][k] = "***"
                elif isinstance(v, str):
                    ep["options"][k] = redact_dsn(v)
        return data


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "flow"


# -- validation -------------------------------------------------------------------------------


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _problems(exc: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> list[FieldProblem]:
    known = sorted({f.alias or n for n, f in model.model_fields.items()}) if model else []
    out = []
    for err in exc.errors():
        path = _loc((prefix, *err["loc"])) if prefix else _loc(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            name = str(err["loc"][-1])
            out.append(FieldProblem(path, "unknown option" + _did_you_mean(name, known)))
        elif kind == "missing":
            out.append(FieldProblem(path, "required option missing"))
        elif kind == "value_error" and isinstance(err.get("ctx", {}).get("error"), ValueError) and isinstance(
                err["ctx"]["error"].args[0], list):
            for field, msg in err["ctx"]["error"].args[0]:
                out.append(FieldProblem(_loc((prefix, *err["loc"], field)), msg))
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            out.append(FieldProblem(path, f"must be one of {expected}, got {err['input']!r}"))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if kind in ("string_type", "int_type", "bool_type", "float_type", "dict_type", "list_type"):
                msg = f"{msg}, got {type(err['input']).__name__} {err['input']!r}"
            out.append(FieldProblem(path, msg))
    return out


def _endpoint_problems(ep: Endpoint, path: str, registry: dict[str, type[Options]], kind: str) -> list[FieldProblem]:
    model = registry.get(ep.type)
    if model is None:
        return [FieldProblem(f"{path}.type", f"unknown {kind} type {ep.type!r}"
                             + _did_you_mean(ep.type, sorted(registry)) + f" (known: {', '.join(sorted(registry))})")]
    try:
        model.model_validate(ep.options)
    except ValidationError as exc:
        return _problems(exc, f"{path}.options", model)
    return []


def parse_flow(data: dict | str, origin: str = "flow") -> FlowSpec:
    """Validate a flow (a dict or JSON text); one ConfigError lists every problem."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ConfigError(origin, [FieldProblem(f"line {exc.lineno}, column {exc.colno}",
                                                    f"not valid JSON: {exc.msg}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(origin, [FieldProblem("(top level)", "a flow must be a JSON object")])
    what = f"flow {data.get('name') or data.get('id') or origin!r}"
    try:
        spec = FlowSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(what, _problems(exc, "", FlowSpec)) from None
    problems: list[FieldProblem] = []
    problems += _endpoint_problems(spec.source, "source", SOURCE_OPTIONS, "source")
    names = [d.name for d in spec.destinations]
    for i, d in enumerate(spec.destinations):
        problems += _endpoint_problems(d, f"destinations[{i}]", DESTINATION_OPTIONS, "destination")
        if names.count(d.name) > 1 and names.index(d.name) != i:
            problems.append(FieldProblem(f"destinations[{i}].name", f"duplicate destination name {d.name!r}"))
    cfg = spec.config
    if cfg.ack_policy == "primary":
        if not cfg.primary_destination:
            problems.append(FieldProblem("config.primary_destination", "required when ack_policy=primary"))
        elif cfg.primary_destination not in names:
            problems.append(FieldProblem("config.primary_destination",
                                         f"{cfg.primary_destination!r} is not one of the destinations"
                                         + _did_you_mean(cfg.primary_destination, names)))
    if problems:
        raise ConfigError(what, problems)
    if not spec.id:
        spec.id = slug(spec.name or "flow")
    if not spec.name:
        spec.name = spec.id
    return spec


def load_flow(path: str | Path) -> FlowSpec:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"flow file {str(p)!r}", [FieldProblem("path", f"cannot read it: {exc.strerror}")]) from None
    return parse_flow(text, origin=str(p))
