"""The s3 destination: its options (:mod:`.options`), preflight check (:mod:`.checks`) and sink (:mod:`.writer`),
registered as ``PLUGIN`` (entry point ``wallaby.destinations``). Importing this package does not import boto3:
the writer is imported when a sink is built, a stored position read or the bucket checked."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.s3.checks import check_s3_bucket
from sinks.s3.options import S3DestinationOptions
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from wallaby.core.changes import Position
    from wallaby.core.errors import FieldProblem
    from wallaby.core.identity import SourceCheck, SourceIdentity
    from wallaby.core.spec import Endpoint


def _writer() -> ModuleType:
    from sinks.s3 import writer  # boto3, the driver: imported when a sink is built, not with the plugin

    return writer


def make_sink(name: str, flow_id: str, options: S3DestinationOptions, source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


def stored_position(name: str, flow_id: str,
                    options: S3DestinationOptions) -> tuple[Position, SourceIdentity | None, str] | None:
    return _writer().stored_position(name, flow_id, options)


def discard_position(name: str, flow_id: str, options: S3DestinationOptions) -> None:
    _writer().discard_position(name, flow_id, options)


def check_bucket(i: int, dest: Endpoint, opts: S3DestinationOptions) -> list[FieldProblem]:
    """:func:`sinks.s3.checks.check_s3_bucket` with the writer's S3 client."""
    return check_s3_bucket(i, dest, opts, _writer())


PLUGIN = Plugin(name="s3", options=S3DestinationOptions, make_sink=make_sink, stored_position=stored_position,
                discard_position=discard_position, checks=(check_bucket,))
