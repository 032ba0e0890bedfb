"""The flow spec: one source, its destinations, wire format, fan-out policy and DDL policy.

Loaded from JSON in the upstream WALlaby shape (options as strings or native
values)::

    {"name": "orders", "wire_format": "arrow",
     "source": {"name": "pg", "type": "postgres", "options": {"dsn": "...", "slot": "...", ...}},
     "destinations": [{"name": "duck", "type": "duckdb", "options": {"dsn": "./data/w.duckdb"}}],
     "config": {"ack_policy": "all", "ddl": {"gate": true}}}

:func:`parse_flow` / :func:`load_flow` collect *every* problem (of the flow,
and of each endpoint's options through the models of :mod:`wallaby.core.options` and, per destination type,
of :mod:`wallaby.core.registry`)
into one :class:`~wallaby.core.errors.ConfigError` before anything connects; no
message shows a password. ``spec.source_options()`` and
``spec.destination_options(i)`` give the validated, typed options;
``spec.redacted()`` is safe to log or return.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from wallaby.core import registry, secrets
from wallaby.core.errors import MASK, ConfigError, FieldProblem, redact_dsn
from wallaby.core.options import (
    SECRET_OPTIONS,
    SOURCE_OPTIONS,
    WIRE_FORMATS,
    Bool,
    Options,
    PositiveInt,
    PostgresSourceOptions,
    RequiredText,
    Text,
    choice,
    did_you_mean,
    join_path,
    parse_bool,
    parse_required_text,
    problems_from,
)

ENV_WIRE_FORMAT = "WALLABY_WIRE_FORMAT"
# DDL governance defaults when a flow does not set them (USAGE.md "DDL Governance").
DDL_ENV_DEFAULTS = {"gate": ("WALLABY_DDL_GATE", False),
                    "auto_approve": ("WALLABY_DDL_AUTO_APPROVE", True),
                    "auto_apply": ("WALLABY_DDL_AUTO_APPLY", True)}

_FLOW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def _flow_id(v: Any) -> str:
    value = parse_required_text(v)
    if not _FLOW_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid flow id (letters, digits, '_', '-', '.'; at most 128)")
    return value


def _object(v: Any) -> Any:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError("expected an object of option names to values")
    return v


def _endpoint_type(v: Any) -> str:
    return parse_required_text(v).lower()


def _destination_list(v: Any) -> Any:
    if not isinstance(v, list):
        raise ValueError("expected a list of destinations")
    if not v:
        raise ValueError("at least one destination is required")
    return v


def default_wire_format(environ: Mapping[str, str] | None = None) -> str:
    """``WALLABY_WIRE_FORMAT`` if set, else ``arrow``."""
    env = os.environ if environ is None else environ
    value = (env.get(ENV_WIRE_FORMAT) or "arrow").strip().lower()
    if value not in WIRE_FORMATS:
        raise ConfigError("environment", [FieldProblem(ENV_WIRE_FORMAT, f"expected one of {', '.join(WIRE_FORMATS)},"
                                                                        f" got {value!r}")])
    return value


def slug(name: str) -> str:
    """A stable id for a flow name: ``"Orders → DuckDB"`` -> ``orders-duckdb``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    s = re.sub(r"[^a-z0-9_]+", "-", ascii_name.lower()).strip("-_")[:63].strip("-_")
    return s or "flow-" + hashlib.sha1(name.encode()).hexdigest()[:10]


class Endpoint(BaseModel):
    """A source or destination: its name, connector type and raw options (strings or JSON values)."""

    model_config = ConfigDict(extra="forbid")

    name: RequiredText
    type: Annotated[str, BeforeValidator(_endpoint_type)]
    options: Annotated[dict[str, Any], BeforeValidator(_object)] = Field(default_factory=dict)


class DDLPolicy(BaseModel):
    """DDL governance of a flow; unset fields fall back to the environment (:meth:`effective`)."""

    model_config = ConfigDict(extra="forbid")

    gate: Bool | None = None
    auto_approve: Bool | None = None
    auto_apply: Bool | None = None

    def effective(self, environ: Mapping[str, str] | None = None) -> DDLPolicy:
        """Every field set: the flow's value, else ``WALLABY_DDL_GATE`` (false), ``WALLABY_DDL_AUTO_APPROVE``
        (true), ``WALLABY_DDL_AUTO_APPLY`` (true)."""
        env = os.environ if environ is None else environ
        values: dict[str, bool] = {}
        problems = []
        for field, (var, default) in DDL_ENV_DEFAULTS.items():
            value = getattr(self, field)
            if value is None:
                raw = (env.get(var) or "").strip()
                try:
                    value = parse_bool(raw) if raw else default
                except ValueError as exc:
                    problems.append(FieldProblem(var, str(exc)))
                    continue
            values[field] = value
        if problems:
            raise ConfigError("environment", problems)
        return DDLPolicy(**values)


class FlowConfig(BaseModel):
    """Fan-out and failure policy (USAGE.md "Flow fields you can set")."""

    model_config = ConfigDict(extra="forbid")

    ack_policy: choice("all", "primary") = "all"
    primary_destination: Text | None = None
    failure_mode: choice("hold_slot", "drop_slot") = "hold_slot"
    give_up_policy: choice("on_retry_exhaustion", "never") = "on_retry_exhaustion"
    ddl: DDLPolicy = Field(default_factory=DDLPolicy)


class FlowSpec(BaseModel):
    """A validated flow. Build it with :func:`parse_flow` / :func:`load_flow`."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, BeforeValidator(_flow_id)]
    name: RequiredText
    source: Endpoint
    destinations: Annotated[list[Endpoint], BeforeValidator(_destination_list)]
    wire_format: choice(*WIRE_FORMATS) = Field(default_factory=default_wire_format)
    parallelism: PositiveInt = 1
    config: FlowConfig = Field(default_factory=FlowConfig)

    _source_options: Options | None = PrivateAttr(default=None)
    _destination_options: dict[int, Options] = PrivateAttr(default_factory=dict)

    def _what(self) -> str:
        return f"flow {self.name!r}"

    def source_options(self) -> PostgresSourceOptions:
        """The source's options, validated and typed."""
        if self._source_options is None:
            model = SOURCE_OPTIONS[self.source.type]
            self._source_options = secrets.parse_options(model, self.source.options, what=self._what(),
                                                         path="source.options", context=self._context(self.source))
        return self._source_options  # type: ignore[return-value]

    def destination_options(self, i: int | str) -> Options:
        """Destination ``i`` (an index or a destination name)'s options, validated and typed."""
        if isinstance(i, str):
            names = [d.name for d in self.destinations]
            if i not in names:
                raise KeyError(f"no destination named {i!r} in flow {self.name!r}{did_you_mean(i, names)}")
            i = names.index(i)
        if i not in self._destination_options:
            d = self.destinations[i]
            self._destination_options[i] = secrets.parse_options(  # ${env:...}/${file:...} resolved here
                registry.options_models()[d.type], d.options, what=self._what(), path=f"destinations[{i}].options",
                context=self._context(d))
        return self._destination_options[i]

    def _context(self, endpoint: Endpoint) -> dict[str, Any]:
        return {"endpoint_name": endpoint.name, "flow_id": self.id}

    def ddl_policy(self, environ: Mapping[str, str] | None = None) -> DDLPolicy:
        """The flow's DDL policy with the environment's defaults applied."""
        return self.config.ddl.effective(environ)

    def redacted(self) -> dict[str, Any]:
        """The spec as a dict that is safe to log or return: DSN passwords, secret options and header values
        masked."""
        data = self.model_dump(mode="json")
        for ep in [data["source"], *data["destinations"]]:
            ep["options"] = {k: redact_option(k, v) for k, v in ep["options"].items()}
        return data


def redact_option(name: str, value: Any) -> Any:
    """An option's value fit to show: secrets masked, passwords in DSNs masked, header values masked."""
    lowered = name.lower()
    if value in (None, ""):
        return value
    if lowered in SECRET_OPTIONS or any(w in lowered for w in ("password", "secret", "token")):
        return MASK
    if lowered == "headers":
        if isinstance(value, Mapping):
            return {k: MASK for k in value}
        if isinstance(value, str):
            return ",".join(f"{item.partition(':')[0].strip()}:{MASK}" for item in value.split(",") if item.strip())
        return MASK
    if isinstance(value, str):
        return redact_dsn(value)
    if isinstance(value, Mapping):
        return {k: redact_option(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_dsn(v) if isinstance(v, str) else v for v in value]
    return value


# -- parsing ------------------------------------------------------------------------------------

_SECTIONS = ("id", "name", "wire_format", "parallelism", "source", "destinations", "config")
_KNOWN_AT = {
    (): list(FlowSpec.model_fields),
    ("config",): list(FlowConfig.model_fields),
    ("config", "ddl"): list(DDLPolicy.model_fields),
}


def _known_at(loc: tuple) -> list[str]:
    if loc in _KNOWN_AT:
        return _KNOWN_AT[loc]
    if loc[:1] == ("source",) or loc[:1] == ("destinations",):
        return list(Endpoint.model_fields)
    return []


def _order(problem: FieldProblem) -> tuple:
    m = re.match(r"([a-z_]+)(?:\[(\d+)\])?", problem.path)
    section = m.group(1) if m else ""
    rank = _SECTIONS.index(section) if section in _SECTIONS else len(_SECTIONS)
    return rank, int(m.group(2)) if m and m.group(2) else -1


def _what(name: Any, origin: str | None) -> str:
    what = f"flow {name!r}" if isinstance(name, str) and name.strip() else "flow"
    return f"{what} ({origin})" if origin else what


def _endpoint_problems(ep: Any, path: str, models: Mapping[str, type[Options]], kind: str,
                       flow_id: Any) -> tuple[Options | None, list[FieldProblem]]:
    """The options model of one endpoint, or the problems with its type and options."""
    if not isinstance(ep, Mapping):
        return None, []  # reported by the structural check
    etype = ep.get("type")
    if not isinstance(etype, str) or not etype.strip():
        return None, []
    model = models.get(etype.strip().lower())
    if model is None:
        known = ", ".join(sorted(models))
        hint = did_you_mean(etype.strip(), sorted(models)) or f" (known: {known})"
        return None, [FieldProblem(f"{path}.type", f"unknown {kind} type {etype.strip()!r}{hint}")]
    options = ep.get("options")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        return None, []
    context = {"endpoint_name": ep.get("name") if isinstance(ep.get("name"), str) else None, "flow_id": flow_id}
    return secrets.check_options(model, options, f"{path}.options", context)  # references stay unresolved


def _inherit_format(dests: Any, wire_format: Any) -> Any:
    """A destination with a ``format`` option that does not set it takes the flow's (or the service's)
    ``wire_format`` when one was given; else it keeps its own default (USAGE.md: Kafka arrow, S3/HTTP json)."""
    if not isinstance(dests, list) or not isinstance(wire_format, str) or not wire_format.strip():
        return dests
    out = []
    for d in dests:
        if isinstance(d, Mapping) and isinstance(d.get("type"), str):
            model = registry.options_models().get(d["type"].strip().lower())
            opts = d.get("options") if isinstance(d.get("options"), Mapping) else {}
            if model is not None and "format" in model.model_fields and "format" not in opts:
                d = {**d, "options": {**opts, "format": wire_format.strip().lower()}}
        out.append(d)
    return out


def parse_flow(data: Mapping[str, Any] | str | bytes, origin: str | None = None) -> FlowSpec:
    """A validated :class:`FlowSpec` from a dict or JSON text; else one :class:`ConfigError` listing every
    problem. ``origin`` (a file name, "api", ...) is named in the error."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"flow file {origin!r}" if origin else "flow", [FieldProblem(
                "", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]) from None
    if not isinstance(data, Mapping):
        raise ConfigError(_what(None, origin), [FieldProblem("", "a flow must be a JSON object")])

    raw = dict(data)
    problems: list[FieldProblem] = []
    if "state" in raw:
        raw.pop("state")
        problems.append(FieldProblem("state", "a flow's state is not part of its definition; remove it"
                                              " (StartFlow/StopFlow change it)"))
    for key in ("id", "name", "wire_format"):
        if raw.get(key) is None or (isinstance(raw.get(key), str) and not raw[key].strip()):
            raw.pop(key, None)
    if "id" not in raw and isinstance(raw.get("name"), str | int) and not isinstance(raw["name"], bool):
        raw["id"] = slug(str(raw["name"]))
    if "name" not in raw and isinstance(raw.get("id"), str | int):
        raw["name"] = str(raw["id"])
    if "id" not in raw and "name" not in raw:
        problems.append(FieldProblem("name", "required field missing (give the flow a name or an id)"))
        raw["id"] = raw["name"] = "flow"
    wire_from_env = "wire_format" not in raw
    if wire_from_env:
        raw["wire_format"] = (os.environ.get(ENV_WIRE_FORMAT) or "arrow").strip()
    if not wire_from_env or (os.environ.get(ENV_WIRE_FORMAT) or "").strip():
        raw["destinations"] = _inherit_format(raw.get("destinations"), raw["wire_format"])
    src = raw.get("source")
    if isinstance(src, Mapping) and not src.get("name") and isinstance(src.get("type"), str):
        raw["source"] = {**src, "name": src["type"]}

    spec: FlowSpec | None = None
    try:
        spec = FlowSpec.model_validate(raw)
    except ValidationError as exc:
        for p in problems_from(exc, "", _known_at, raw, noun="field"):
            if p.path == "wire_format" and wire_from_env:
                p = FieldProblem(p.path, f"{p.message} (from {ENV_WIRE_FORMAT})")
            problems.append(p)

    # Endpoint options, checked even when another part of the flow is wrong.
    flow_id = raw.get("id")
    source_opts, found = _endpoint_problems(raw.get("source"), "source", SOURCE_OPTIONS, "source", flow_id)
    problems += found
    dests = raw.get("destinations") if isinstance(raw.get("destinations"), list) else []
    dest_opts: dict[int, Options] = {}
    dest_models = registry.options_models()
    seen: dict[str, int] = {}
    for i, d in enumerate(dests):
        opts, found = _endpoint_problems(d, f"destinations[{i}]", dest_models, "destination", flow_id)
        problems += found
        if opts is not None:
            dest_opts[i] = opts
        name = d.get("name") if isinstance(d, Mapping) else None
        if isinstance(name, str) and name.strip():
            if name in seen:
                problems.append(FieldProblem(f"destinations[{i}].name", f"duplicate destination name {name!r}"
                                                                        f" (also destinations[{seen[name]}])"))
            else:
                seen[name] = i

    cfg = raw.get("config")
    if isinstance(cfg, Mapping):
        ack = cfg.get("ack_policy")
        primary = cfg.get("primary_destination")
        if isinstance(ack, str) and ack.strip().lower() == "primary" and not primary:
            problems.append(FieldProblem("config.primary_destination", "required when ack_policy=primary"))
        if isinstance(primary, str) and primary.strip() and dests and primary not in seen:
            hint = did_you_mean(primary, list(seen)) or f" (destinations: {', '.join(map(repr, seen))})"
            problems.append(FieldProblem("config.primary_destination",
                                         f"{primary!r} is not the name of a destination{hint}"))

    if problems or spec is None:
        problems.sort(key=_order)
        raise ConfigError(_what(raw.get("name"), origin), problems)
    spec._source_options = source_opts
    spec._destination_options = dest_opts
    return spec


def load_flow(path: str | Path) -> FlowSpec:
    """The flow of a JSON file (see :func:`parse_flow`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"flow file {str(p)!r}", [FieldProblem("", f"cannot read it: {reason}")]) from None
    return parse_flow(text, origin=str(p))


__all__ = [
    "DDL_ENV_DEFAULTS", "ENV_WIRE_FORMAT", "SECRET_OPTIONS", "SOURCE_OPTIONS",
    "DDLPolicy", "Endpoint", "FlowConfig", "FlowSpec",
    "default_wire_format", "join_path", "load_flow", "parse_flow", "redact_option", "slug",
]
