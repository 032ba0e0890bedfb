"""The HTTP destination's free preflight check (:mod:`dataflows.preflight`): syntax only, the URL is never
called."""

from __future__ import annotations

from urllib.parse import urlsplit

from sinks.http.options import HTTPDestinationOptions
from wallaby.core.errors import FieldProblem
from wallaby.core.options import join_path
from wallaby.core.spec import Endpoint


def check_http_url(i: int, dest: Endpoint | None, opts: HTTPDestinationOptions) -> list[FieldProblem]:
    """The URL's host and port are well formed (it is never called here)."""
    field = join_path("destinations", i, "options", "url")
    try:
        parts = urlsplit(opts.url)
        port = parts.port
    except ValueError as exc:
        return [FieldProblem(field, f"not a valid URL: {exc}")]
    if not parts.hostname:
        return [FieldProblem(field, "the URL names no host")]
    if port == 0:
        return [FieldProblem(field, "port 0 is not a port to send to")]
    return []


__all__ = ["check_http_url"]
