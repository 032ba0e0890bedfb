"""Structured logs: one JSON object per line, naming the flow.

Every record carries ``flow`` (from ``extra={"flow": ...}`` or the process's
default flow set with :func:`setup`). Messages go through ``redact_dsn`` so a
DSN with a password never reaches a log.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

from wallaby.core.errors import redact_dsn
from wallaby.core.settings import log_level_or_default

_default_flow: str | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "flow": getattr(record, "flow", None) or _default_flow,
            "msg": redact_dsn(record.getMessage()),
        }
        if record.exc_info:
            out["error"] = redact_dsn(self.formatException(record.exc_info))
        return orjson.dumps(out).decode()


def setup(flow: str | None = None, level: str | None = None) -> None:
    """Send wallaby's logs to stderr as JSON lines (``WALLABY_LOG_LEVEL``, default info)."""
    global _default_flow
    _default_flow = flow
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("wallaby")
    root.handlers[:] = [handler]
    root.setLevel((level or log_level_or_default()).upper())  # WALLABY_LOG_LEVEL (checked by wallaby.core.settings)
    root.propagate = False
