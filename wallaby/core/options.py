"""Connector options: the parsing helpers every connector shares, and the source's model.

Options arrive as strings (the gRPC API's ``map<string, string>``) or as
native JSON values; the annotated types below (:data:`Bool`, :data:`Int`,
:data:`Duration`, :data:`CsvList`, :func:`choice`, ...) accept both, so the
models stay declarative. An option given as ``null`` or ``""`` counts as not
given (the upstream API sends ``""`` for "unset").

Every name and default is the one USAGE.md promises ("Postgres Source
Options", "Backfill + Replay", one section per destination, "Destination
Metadata + Append/Soft Delete", "Destination Type Mappings");
tests/test_spec.py checks each of them (by tests/data/usage_facts.json,
made from USAGE.md by tests/usage_facts.py). The options every destination
has are in :mod:`wallaby.core.destination_options`; each destination's own
model is beside its sink (``sinks/<name>/options.py``, the type mappings in
``sinks/sql/options.py``), found through :mod:`wallaby.core.registry`.

:func:`validate_options` turns pydantic's errors into :class:`FieldProblem`\\ s
(unknown option with a did-you-mean, wrong type, missing required option) so
that a flow reports every problem at once; no message echoes a DSN or a secret.
"""

from __future__ import annotations

import difflib
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from wallaby.core.errors import MASK, ConfigError, FieldProblem, redact_dsn

WIRE_FORMATS = ("arrow", "parquet", "avro", "proto", "json")

# -- parsers ------------------------------------------------------------------------------------

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


def _kind(v: Any) -> str:
    """A value's JSON kind for messages that must not show the value itself."""
    return {dict: "an object", list: "a list", tuple: "a list", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, int | float) else type(v).__name__)


def _shown(v: Any) -> str:
    return repr(v) if isinstance(v, str | int | float | bool) else _kind(v)


def did_you_mean(name: str, known: list[str] | tuple[str, ...] | set[str]) -> str:
    """``"; did you mean 'slot'?"`` when ``name`` is close to one of ``known``, else ``""``."""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


def parse_bool(v: Any) -> bool:
    """``true/false``, ``1/0``, ``yes/no`` (also ``t/f``, ``y/n``, ``on/off``), any case, or a real bool."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError(f"expected a boolean (true or false), got {_shown(v)}")


def parse_int(v: Any) -> int:
    """``"500"``, ``500`` or ``500.0`` -> 500."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*[-+]?\d+\s*", v):
        return int(v)
    raise ValueError(f"expected an integer, got {_shown(v)}")


def parse_float(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str) and re.fullmatch(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*", v):
        return float(v)
    raise ValueError(f"expected a number, got {_shown(v)}")


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(v: Any) -> float:
    """Seconds from ``'200ms'``, ``'1s'``, ``'1.5s'``, ``'1m'``, ``'1h'``, Go's ``'1m30s'``, or a bare number
    of seconds (``'10'``, ``10``, ``0.5``)."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        if v < 0:
            raise ValueError(f"a duration cannot be negative, got {v!r}")
        return float(v)
    if isinstance(v, str):
        text = v.strip()
        if _NUMBER.fullmatch(text):
            return float(text)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNITS[u] for n, u in parts)
    raise ValueError(f"expected a duration like '200ms', '1s', '1m' or a number of seconds, got {_shown(v)}")


def parse_csv(v: Any) -> list[str]:
    """``"a, b,,c"`` -> ``['a', 'b', 'c']``; a JSON list works too."""
    if v is None:
        return []
    if isinstance(v, str):
        items = v.split(",")
    elif isinstance(v, list | tuple) and all(isinstance(x, str | int | float) for x in v):
        items = [str(x) for x in v]
    else:
        raise ValueError(f"expected a comma-separated list, got {_kind(v)}")
    return [x.strip() for x in items if x.strip()]


def parse_text(v: Any) -> str:
    """A string; numbers are accepted as their text (``5432`` -> ``'5432'``)."""
    if isinstance(v, str):
        return v
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    raise ValueError(f"expected a string, got {_kind(v)}")


def parse_headers(v: Any) -> dict[str, str]:
    """``"Authorization:Bearer x, X-Team:cdc"`` (or a JSON object) -> ``{name: value}``.

    Values may be secrets, so errors name the item's position, never its text.
    """
    if isinstance(v, Mapping):
        out = {}
        for k, val in v.items():
            if not isinstance(val, str | int | float) or isinstance(val, bool):
                raise ValueError(f"header {str(k)!r}: expected a string value, got {_kind(val)}")
            out[str(k).strip()] = str(val).strip()
        return out
    out = {}
    for i, item in enumerate(parse_csv(v), 1):
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"expected a comma-separated list of Key:Value, item {i} is not Key:Value")
        out[key.strip()] = value.strip()
    return out


def parse_required_text(v: Any) -> str:
    """A non-blank string, stripped."""
    text = parse_text(v)
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _non_empty_list(v: Any) -> list[str]:
    items = parse_csv(v)
    if not items:
        raise ValueError("must list at least one item")
    return items


def _at_least(minimum: int | float, parse: Callable[[Any], Any], strict: bool = False) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        value = parse(v)
        if value < minimum or (strict and value == minimum):
            raise ValueError(f"must be {'greater than' if strict else 'at least'} {minimum}, got {_shown(v)}")
        return value

    return check


_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def _slot_name(v: Any) -> str:
    name = parse_text(v)
    if not _SLOT_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid replication slot name"
                         " (lower-case letters, digits and _, at most 63 characters)")
    return name


def _identifier(v: Any) -> str:
    name = parse_text(v)
    if not _IDENTIFIER.fullmatch(name) or len(name.encode()) > 63:
        raise ValueError(f"{name!r} is not a valid Postgres identifier"
                         " (a letter or _, then letters, digits, _ or $; at most 63 bytes)")
    return name


_LIBPQ_KEYWORDS: set[str] | None = None


def _libpq_keywords() -> set[str]:
    global _LIBPQ_KEYWORDS
    if _LIBPQ_KEYWORDS is None:
        from psycopg import pq

        _LIBPQ_KEYWORDS = {o.keyword.decode() for o in pq.Conninfo.get_defaults()}
    return _LIBPQ_KEYWORDS


def _postgres_dsn(v: Any) -> str:
    """A libpq connection string (URI or key/value). libpq's complaint is kept, but any quoted fragment of
    the DSN in it that is not a libpq keyword is elided: it could be part of a password."""
    dsn = parse_required_text(v)
    from psycopg import conninfo

    try:
        conninfo.conninfo_to_dict(dsn)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        reason = re.sub(r'"([^"]*)"', lambda m: m.group(0) if m.group(1) in _libpq_keywords() else '"…"', reason)
        raise ValueError(f"not a valid Postgres connection string ({reason}); expected"
                         " postgres://user:password@host:port/dbname or key=value pairs") from None
    return dsn


def _http_url(v: Any) -> str:
    url = parse_required_text(v)
    if not re.match(r"(?i)https?://[^/\s]", url):
        raise ValueError("expected an http:// or https:// URL")
    return url


def _http_method(v: Any) -> str:
    method = parse_required_text(v).upper()
    if not re.fullmatch(r"[A-Z]+", method):
        raise ValueError(f"expected an HTTP method like POST or PUT, got {_shown(v)}")
    return method


_PARTITION_GRAINS = ("day", "hour", "month", "year")


def _partition_by(v: Any) -> list[str]:
    items = parse_csv(v)
    for item in items:
        column, sep, grain = item.partition(":")
        if not column.strip() or (sep and grain.strip().lower() not in _PARTITION_GRAINS):
            raise ValueError(f"{item!r} is not 'column' or 'column:day|hour|month|year'")
    return [c.strip() + (":" + g.strip().lower() if s else "") for c, s, g in (i.partition(":") for i in items)]


def choice(*values: str, aliases: Mapping[str, str] | None = None, case: Callable[[str], str] = str.lower) -> Any:
    """An enum option: one of ``values`` (any case, surrounding blanks ignored); ``aliases`` map to a value.

    The error lists the allowed values and suggests the closest one.
    """
    aliases = dict(aliases or {})

    def check(v: Any) -> str:
        if isinstance(v, str):
            key = case(v.strip())
            key = aliases.get(key, key)
            if key in values:
                return key
        allowed = ", ".join(repr(x) for x in values)
        hint = did_you_mean(v, values) if isinstance(v, str) else ""
        raise ValueError(f"expected one of {allowed}, got {_shown(v)}{hint}")

    return Annotated[Literal[values], BeforeValidator(check)]  # type: ignore[valid-type]


Bool = Annotated[bool, BeforeValidator(parse_bool)]
Int = Annotated[int, BeforeValidator(parse_int)]
PositiveInt = Annotated[int, BeforeValidator(_at_least(1, parse_int))]
NonNegativeInt = Annotated[int, BeforeValidator(_at_least(0, parse_int))]
Float = Annotated[float, BeforeValidator(parse_float)]
PositiveFloat = Annotated[float, BeforeValidator(_at_least(0, parse_float, strict=True))]
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(_at_least(0, parse_duration, strict=True))]
CsvList = Annotated[list[str], BeforeValidator(parse_csv)]
RequiredCsvList = Annotated[list[str], BeforeValidator(_non_empty_list)]
Text = Annotated[str, BeforeValidator(parse_text)]
RequiredText = Annotated[str, BeforeValidator(parse_required_text)]
Identifier = Annotated[str, BeforeValidator(_identifier)]
SlotName = Annotated[str, BeforeValidator(_slot_name)]
PostgresDsn = Annotated[str, BeforeValidator(_postgres_dsn)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]
Headers = Annotated[dict[str, str], BeforeValidator(parse_headers)]


def parse_slot_tables(v: Any) -> dict[str, int]:
    """``"public.orders:0, public.items:0"`` (or a JSON object ``{"public.orders": 0}``) -> ``{table: slot}``."""
    items: list[tuple[Any, Any]]
    if isinstance(v, Mapping):
        items = list(v.items())
    elif isinstance(v, str):
        items = []
        for i, part in enumerate(x.strip() for x in v.split(",")):
            if not part:
                continue
            table, sep, index = part.rpartition(":")
            if not sep or not table.strip():
                raise ValueError(f"item {i + 1} ({part!r}) is not table:slot (e.g. public.orders:0)")
            items.append((table.strip(), index.strip()))
    else:
        raise ValueError(f"expected table:slot pairs or an object of them, got {_kind(v)}")
    out: dict[str, int] = {}
    for table, index in items:
        try:
            out[str(table)] = _at_least(0, parse_int)(index)
        except ValueError as exc:
            raise ValueError(f"{table}: {exc}") from None
    return out


SlotTables = Annotated[dict[str, int], BeforeValidator(parse_slot_tables)]
WireFormat = choice(*WIRE_FORMATS)
PayloadMode = choice("wire", "record_json", "wal", aliases={"raw": "record_json", "record": "record_json"})

# -- models -------------------------------------------------------------------------------------


# Options whose values are secrets: masked in repr() and in FlowSpec.redacted().
SECRET_OPTIONS = frozenset({"password", "sslpassword", "secret_key", "session_token", "access_key", "token",
                            "api_key", "private_key", "client_secret"})


class OptionProblems(ValueError):
    """Raised by a model's cross-field check: ``[(option, message), ...]``."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = problems


def _set(model: BaseModel, name: str, value: Any) -> None:
    # Defaults derived from other options; the models are frozen, and a derived
    # value must not count as "set by the user" (model_fields_set stays as given).
    object.__setattr__(model, name, value)


class Options(BaseModel):
    """Base of every connector's options: unknown names are errors (reported with a did-you-mean)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_unset(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None and not (isinstance(v, str) and not v.strip())}
        return data

    def __repr_args__(self) -> Any:  # repr() and str() never show a password or a secret option
        for name, value in super().__repr_args__():
            if name in SECRET_OPTIONS and value:
                yield name, MASK
            elif name == "headers" and isinstance(value, dict):
                yield name, {k: MASK for k in value}
            elif isinstance(value, str):
                yield name, redact_dsn(value)
            else:
                yield name, value

    @classmethod
    def option_names(cls) -> list[str]:
        """The option names as written in a flow (``schema``, not ``schema_``)."""
        return [f.alias or n for n, f in cls.model_fields.items()]

    @classmethod
    def parse(cls, options: Mapping[str, Any], *, what: str = "options", path: str = "options",
              context: Mapping[str, Any] | None = None) -> Any:
        """Validated options, or a :class:`ConfigError` listing every problem."""
        model, problems = validate_options(cls, options, path, context)
        if problems:
            raise ConfigError(what, problems)
        return model


class PostgresSourceOptions(Options):
    """USAGE.md "Postgres Source Options" and "Backfill + Replay"."""

    dsn: PostgresDsn
    slot: SlotName
    publication: Identifier
    create_slot: Bool = True
    ensure_publication: Bool = True
    publication_tables: CsvList = Field(default_factory=list)
    publication_schemas: CsvList = Field(default_factory=list)
    validate_replication: Bool = True
    batch_size: PositiveInt = 100
    batch_timeout: PositiveDuration = 1.0
    status_interval: PositiveDuration = 10.0
    emit_empty: Bool = False
    resolve_types: Bool = True
    sync_publication: Bool = False
    sync_publication_mode: choice("add", "sync") = "add"
    ensure_state: Bool = True
    state_schema: Identifier = "wallaby"
    state_table: Identifier = "source_state"
    flow_id: Text | None = None
    capture_ddl: Bool = False
    ddl_trigger_schema: Identifier = "wallaby"
    ddl_trigger_name: Identifier = "wallaby_ddl_capture"
    ddl_message_prefix: RequiredText = "wallaby_ddl"
    toast_fetch: choice("off", "source", "full", "cache") = "off"
    toast_cache_size: PositiveInt = 10000
    # Values in their types' binary send format (pgoutput's binary option, Postgres >= 14; docs/type_mappings.md
    # "Binary values"): auto = on when the server is 14 or later and every published column's type decodes from
    # binary (sources/postgres/pgbinary.py), else off; the choice is logged. A YAML true/false is taken too.
    # Off by default: measured (200k changes, bench/binary_decode.py) it spared the walsender 0-19% CPU per narrow
    # row and ~nothing on wide rows, while the client's decode cost 7-14% more; on where the server's CPU is short
    binary: Annotated[choice("auto", "true", "false", aliases={"on": "true", "yes": "true", "1": "true",
                                                                 "off": "false", "no": "false", "0": "false"}),
                      BeforeValidator(lambda v: ("true" if v else "false") if isinstance(v, bool) else v)] = "false"
    aws_rds_iam: Bool = False
    aws_region: Text | None = None
    aws_profile: Text | None = None
    aws_role_arn: Text | None = None
    aws_role_session_name: Text | None = None
    aws_role_external_id: Text | None = None
    aws_endpoint: Text | None = None
    format: WireFormat | None = None  # upstream examples set the wire format on the source too
    # Scaling (docs/scaling.md): the tables split over this many slots, one publication each, each slot one input
    # partition of the dataflow; slot_tables places tables (the same slot keeps them together), others by hash
    slots: PositiveInt = 1
    slot_tables: SlotTables = Field(default_factory=dict)
    # Idle slots (docs/heartbeat.md): while no change has come for heartbeat_interval, write a little WAL in the
    # source database (a non-transactional logical message, or a row of heartbeat_table), so its slot moves on
    heartbeat: choice("off", "message", "table") = "off"
    heartbeat_interval: PositiveDuration = 10.0
    heartbeat_table: Text = "wallaby.heartbeat"
    # Backfill + Replay
    snapshot_workers: PositiveInt = 1
    parallel_tables: PositiveInt | None = None  # alias of snapshot_workers
    partition_column: Text | None = None
    partition_count: PositiveInt = 1
    snapshot_consistent: Bool = True
    snapshot_state_backend: choice("postgres", "file", "none") = "postgres"
    snapshot_state_schema: Identifier = "wallaby"
    snapshot_state_table: Identifier = "snapshot_state"
    snapshot_state_path: Text | None = None

    @model_validator(mode="after")
    def _check(self) -> PostgresSourceOptions:
        problems = []
        if self.parallel_tables is not None:
            if "snapshot_workers" in self.model_fields_set and self.snapshot_workers != self.parallel_tables:
                problems.append(("parallel_tables", f"is an alias of snapshot_workers; they disagree"
                                                    f" ({self.parallel_tables} vs {self.snapshot_workers}), set one"))
            else:
                _set(self, "snapshot_workers", self.parallel_tables)
        if self.aws_rds_iam and not self.aws_region:
            region = rds_region_from_dsn(self.dsn)
            if region:
                _set(self, "aws_region", region)
            else:
                problems.append(("aws_region", "required when aws_rds_iam=true (no region could be inferred from"
                                               " the dsn host; RDS hosts look like <id>.<hash>.<region>"
                                               ".rds.amazonaws.com)"))
        if self.snapshot_state_backend == "file" and not self.snapshot_state_path:
            problems.append(("snapshot_state_path", "required when snapshot_state_backend=file"))
        if self.sync_publication and not (self.publication_tables or self.publication_schemas):
            problems.append(("sync_publication", "needs publication_tables or publication_schemas to sync from"))
        problems += self._slot_problems()
        if self.heartbeat == "table" and not re.fullmatch(r"[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*",
                                                          self.heartbeat_table):
            problems.append(("heartbeat_table", f"{self.heartbeat_table!r} is not schema.table (lower-case"
                                                " identifiers, e.g. wallaby.heartbeat)"))
        if problems:
            raise OptionProblems(problems)
        return self

    def _slot_problems(self) -> list[tuple[str, str]]:
        if self.slots == 1:
            return [("slot_tables", "places tables in slots; it needs slots > 1")] if self.slot_tables else []
        problems = []
        if not self.publication_tables:
            problems.append(("slots", "needs publication_tables: each slot publishes its share of the listed"
                                      " tables (a publication of all tables, or of schemas, cannot be split)"))
        if self.publication_schemas:
            problems.append(("publication_schemas", "cannot be split over slots (slots > 1): list the tables in"
                                                    " publication_tables"))
        if len(f"{self.slot}_{self.slots - 1}") > 63 or len(f"{self.publication}_{self.slots - 1}") > 63:
            problems.append(("slots", f"slot i is named {self.slot}_<i> and its publication"
                                      f" {self.publication}_<i>: shorten slot / publication to fit 63 characters"))
        listed = {_table_key(t) for t in self.publication_tables}
        for table, index in self.slot_tables.items():
            if index >= self.slots:
                problems.append(("slot_tables", f"{table}: slot {index} does not exist (slots are 0 to"
                                                f" {self.slots - 1})"))
            if self.publication_tables and _table_key(table) not in listed:
                hint = did_you_mean(table, list(self.publication_tables))
                problems.append(("slot_tables", f"{table} is not in publication_tables{hint}"))
        if self.publication_tables and not problems:
            used = {slot_of(self, t) for t in self.publication_tables}
            empty = [i for i in range(self.slots) if i not in used]
            if empty:
                problems.append(("slots", f"slot(s) {', '.join(map(str, empty))} would publish no table: lower"
                                          " slots, or place tables in them with slot_tables"))
        return problems

    def slot_views(self) -> list[PostgresSourceOptions]:
        """One source per slot: with ``slots`` > 1, slot i is ``<slot>_<i>`` publishing its share of
        ``publication_tables`` as ``<publication>_<i>`` (:func:`slot_of`); with one slot, these options."""
        if self.slots == 1:
            return [self]
        return [self.model_copy(update={
            "slot": f"{self.slot}_{i}", "publication": f"{self.publication}_{i}", "slots": 1, "slot_tables": {},
            "publication_tables": [t for t in self.publication_tables if slot_of(self, t) == i]})
            for i in range(self.slots)]

    @property
    def region(self) -> str | None:
        """The AWS region for RDS IAM: ``aws_region``, else inferred from the dsn host."""
        return self.aws_region or rds_region_from_dsn(self.dsn)


def _table_key(table: str) -> str:
    """``orders`` / ``public.orders`` / ``"public"."orders"`` -> ``public.orders`` (how tables are compared)."""
    schema, _, name = table.strip().rpartition(".")
    return f"{(schema or 'public').strip(chr(34))}.{name.strip(chr(34))}"


def slot_of(opts: PostgresSourceOptions, table: str) -> int:
    """The slot index of ``table``: its place in ``slot_tables``, else a stable hash of its name (CRC-32 of
    ``schema.table``: the same on every host and run) modulo ``slots``."""
    key = _table_key(table)
    for t, index in opts.slot_tables.items():
        if _table_key(t) == key:
            return index
    return zlib.crc32(key.encode()) % opts.slots


_RDS_HOST = re.compile(r"\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.rds\.amazonaws\.com(?:\.cn)?\.?$", re.IGNORECASE)


def rds_region_from_host(host: str) -> str | None:
    """``us-east-1`` from ``db.abc123.us-east-1.rds.amazonaws.com`` (clusters and proxies too), else None."""
    m = _RDS_HOST.search(host.strip())
    return m.group("region").lower() if m else None


def rds_region_from_dsn(dsn: str) -> str | None:
    """The region of the first RDS host of a DSN, else None."""
    from psycopg import conninfo

    try:
        hosts = str(conninfo.conninfo_to_dict(dsn).get("host") or "")
    except Exception:
        return None
    for host in hosts.split(","):
        region = rds_region_from_host(host)
        if region:
            return region
    return None


SOURCE_OPTIONS: dict[str, type[Options]] = {"postgres": PostgresSourceOptions}


# -- pydantic errors -> problems -------------------------------------------------------------------


def join_path(prefix: str, *parts: str | int) -> str:
    """``join_path("destinations", 0, "options", "dsn")`` -> ``destinations[0].options.dsn``."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from(exc: ValidationError, prefix: str, known: list[str] | Callable[[tuple], list[str]],
                  raw: Mapping[str, Any] | None = None, noun: str = "option") -> list[FieldProblem]:
    """Our problems for pydantic's errors: did-you-mean for unknown names; values never echoed by pydantic.

    ``known`` is the list of valid names, or a function of an error's location giving the names valid there.
    """
    out: list[FieldProblem] = []
    for err in exc.errors():
        loc = err["loc"]
        path = join_path(prefix, *loc)
        kind = err["type"]
        error = (err.get("ctx") or {}).get("error")
        if kind == "extra_forbidden":
            names = known(loc[:-1]) if callable(known) else known
            out.append(FieldProblem(path, f"unknown {noun}" + did_you_mean(str(loc[-1]), names)))
        elif kind == "missing":
            given = raw is not None and len(loc) == 1 and loc[0] in raw
            out.append(FieldProblem(path, f"required {noun} is empty" if given else f"required {noun} missing"))
        elif isinstance(error, OptionProblems):
            out += [FieldProblem(join_path(prefix, *loc, field), msg) for field, msg in error.problems]
        elif kind == "value_error" and error is not None:
            out.append(FieldProblem(path, str(error)))
        else:  # pydantic's own wording; it does not include the input
            out.append(FieldProblem(path, err["msg"]))
    return out


def validate_options(model: type[Options], options: Any, path: str,
                     context: Mapping[str, Any] | None = None) -> tuple[Any, list[FieldProblem]]:
    """``(options model or None, problems)``; ``path`` prefixes every problem (``source.options``)."""
    if not isinstance(options, Mapping):
        return None, [FieldProblem(path, f"expected an object of option names to values, got {_kind(options)}")]
    try:
        return model.model_validate(options, context=dict(context or {})), []
    except ValidationError as exc:
        return None, problems_from(exc, path, model.option_names(), options)

