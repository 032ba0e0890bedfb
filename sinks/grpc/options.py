"""USAGE.md "gRPC Destination": the delivery options of the HTTP destination, and the gRPC target."""

from __future__ import annotations

from pydantic import ValidationInfo, model_validator

from sinks.http.options import DeliveryOptions
from wallaby.core.options import Bool, RequiredText, Text, _set


class GRPCDestinationOptions(DeliveryOptions):
    endpoint: RequiredText
    insecure: Bool = True
    tls_ca_file: Text | None = None
    tls_server_name: Text | None = None
    flow_id: Text | None = None
    destination: Text | None = None  # default: the destination's name

    @model_validator(mode="after")
    def _defaults(self, info: ValidationInfo) -> GRPCDestinationOptions:
        if self.destination is None and info.context and info.context.get("endpoint_name"):
            _set(self, "destination", info.context["endpoint_name"])
        return self


__all__ = ["GRPCDestinationOptions"]
