"""USAGE.md "Postgres Stream Destination"."""

from __future__ import annotations

from pydantic import ValidationInfo, model_validator

from wallaby.core.destination_options import DestinationOptions
from wallaby.core.options import PostgresDsn, Text, WireFormat, _set


class PGStreamDestinationOptions(DestinationOptions):
    dsn: PostgresDsn
    stream: Text | None = None  # default: the destination's name
    format: WireFormat = "json"

    @model_validator(mode="after")
    def _defaults(self, info: ValidationInfo) -> PGStreamDestinationOptions:
        if self.stream is None and info.context and info.context.get("endpoint_name"):
            _set(self, "stream", info.context["endpoint_name"])
        return self


__all__ = ["PGStreamDestinationOptions"]
