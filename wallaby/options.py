"""Option parsing shared by every connector, and the source's option model.

Options arrive as strings (the gRPC API's ``map<string, string>``) or as
native JSON values; the annotated types below accept both.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


def parse_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {v!r}")


def parse_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"expected an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and re.fullmatch(r"\s*[-+]?\d+\s*", v):
        return int(v)
    raise ValueError(f"expected an integer, got {v!r}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(v: Any) -> float:
    """``'200ms'``, ``'1s'``, ``'1.5s'``, ``'2m'``, ``'1h'``, or a number of seconds -> seconds."""
    if isinstance(v, bool):
        raise ValueError(f"expected a duration like '1s' or '200ms', got {v!r}")
    if isinstance(v, int | float):
        if v < 0:
            raise ValueError(f"a duration cannot be negative, got {v!r}")
        return float(v)
    if isinstance(v, str):
        total, rest = 0.0, v.strip()
        # Go-style compound durations: 1m30s
        parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", rest)
        if parts and "".join(a + b for a, b in parts) == rest.replace(" ", ""):
            return sum(float(a) * _UNITS[b] for a, b in parts)
        m = _DURATION.match(rest)
        if m:
            total = float(m.group(1)) * _UNITS[m.group(2)]
            return total
    raise ValueError(f"expected a duration like '1s' or '200ms', got {v!r}")


def parse_csv(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list | tuple):
        items = [str(x).strip() for x in v]
    elif isinstance(v, str):
        items = [x.strip() for x in v.split(",")]
    else:
        raise ValueError(f"expected a comma-separated list, got {v!r}")
    return [x for x in items if x]


def _positive(v: int) -> int:
    if v <= 0:
        raise ValueError(f"must be greater than 0, got {v}")
    return v


Bool = Annotated[bool, BeforeValidator(parse_bool)]
Int = Annotated[int, BeforeValidator(parse_int)]
PositiveInt = Annotated[int, BeforeValidator(lambda v: _positive(parse_int(v)))]
Duration = Annotated[float, BeforeValidator(parse_duration)]
CsvList = Annotated[list[str], BeforeValidator(parse_csv)]


def _lower(v: Any) -> Any:
    return v.strip().lower() if isinstance(v, str) else v


def choice(*values: str) -> Any:
    """A Literal that also accepts any case and surrounding blanks."""
    return Annotated[Literal[values], BeforeValidator(_lower)]  # type: ignore[valid-type]


_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_RDS_HOST = re.compile(r"\.([a-z]{2}(?:-gov)?-[a-z]+-\d)\.rds\.amazonaws\.com(?:\.cn)?$")

WIRE_FORMATS = ("arrow", "parquet", "avro", "proto", "json")


class Options(BaseModel):
    """Base of every connector's options: unknown names are errors (reported with a did-you-mean)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def rds_region_from_dsn(dsn: str) -> str | None:
    """``us-east-1`` from a host like ``db.abc123.us-east-1.rds.amazonaws.com``."""
    from psycopg import conninfo

    try:
        host = conninfo.conninfo_to_dict(dsn).get("host") or ""
    except Exception:
        return None
    m = _RDS_HOST.search(str(host))
    return m.group(1) if m else None


class PostgresSourceOptions(Options):
    """USAGE.md, "Postgres Source Options" and "Backfill + Replay": names and defaults as promised there."""

    dsn: str
    slot: str
    publication: str
    create_slot: Bool = True
    ensure_publication: Bool = True
    publication_tables: CsvList = Field(default_factory=list)
    publication_schemas: CsvList = Field(default_factory=list)
    validate_replication: Bool = True
    batch_size: PositiveInt = 100
    batch_timeout: Duration = 1.0
    status_interval: Duration = 10.0
    emit_empty: Bool = False
    resolve_types: Bool = True
    sync_publication: Bool = False
    sync_publication_mode: choice("add", "sync") = "add"
    ensure_state: Bool = True
    state_schema: str = "wallaby"
    state_table: str = "source_state"
    flow_id: str | None = None
    capture_ddl: Bool = False
    ddl_trigger_schema: str = "wallaby"
    ddl_trigger_name: str = "wallaby_ddl_capture"
    ddl_message_prefix: str = "wallaby_ddl"
    toast_fetch: choice("off", "source", "full", "cache") = "off"
    toast_cache_size: PositiveInt = 10000
    aws_rds_iam: Bool = False
    aws_region: str | None = None
    aws_profile: str | None = None
    aws_role_arn: str | None = None
    aws_role_session_name: str | None = None
    aws_role_external_id: str | None = None
    aws_endpoint: str | None = None
    format: choice(*WIRE_FORMATS) | None = None  # upstream examples set it on the source
    # backfill
    snapshot_workers: PositiveInt = 1
    parallel_tables: PositiveInt | None = None
    partition_column: str | None = None
    partition_count: PositiveInt = 1
    snapshot_consistent: Bool = True
    snapshot_state_backend: choice("postgres", "file", "none") = "postgres"
    snapshot_state_schema: str = "wallaby"
    snapshot_state_table: str = "snapshot_state"
    snapshot_state_path: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PostgresSourceOptions:
        problems = []
        if not _SLOT_NAME.match(self.slot):
            problems.append(("slot", f"{self.slot!r} is not a valid replication slot name"
                                     " (lower-case letters, digits and _, at most 63)"))
        for name in ("publication", "state_schema", "state_table", "ddl_trigger_schema", "ddl_trigger_name",
                     "snapshot_state_schema", "snapshot_state_table"):
            value = getattr(self, name)
            if not _IDENT.match(value):
                problems.append((name, f"{value!r} is not a valid Postgres identifier"))
        if self.aws_rds_iam and not self.aws_region and not rds_region_from_dsn(self.dsn):
            problems.append(("aws_region", "required when aws_rds_iam=true (it could not be inferred from the"
                                           " dsn host)"))
        if self.snapshot_state_backend == "file" and not self.snapshot_state_path:
            problems.append(("snapshot_state_path", "required when snapshot_state_backend=file"))
        if problems:
            raise ValueError(problems)
        return self

    @property
    def region(self) -> str | None:
        return self.aws_region or rds_region_from_dsn(self.dsn)
