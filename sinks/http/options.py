"""USAGE.md "HTTP / Webhook Destination", and the delivery options the gRPC destination shares with it."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from wallaby.core.destination_options import DestinationOptions
from wallaby.core.options import (
    Duration,
    Headers,
    HttpUrl,
    NonNegativeInt,
    PayloadMode,
    PositiveDuration,
    PositiveFloat,
    RequiredText,
    WireFormat,
    _http_method,
)


class DeliveryOptions(DestinationOptions):
    """Shared by the HTTP and gRPC destinations (defaults as upstream: 3 retries, 200ms..5s, x2)."""

    format: WireFormat = "json"
    payload_mode: PayloadMode = "wire"
    timeout: PositiveDuration = 10.0
    headers: Headers = Field(default_factory=dict)
    max_retries: NonNegativeInt = 3
    backoff_base: Duration = 0.2
    backoff_max: Duration = 5.0
    backoff_factor: PositiveFloat = 2.0


class HTTPDestinationOptions(DeliveryOptions):
    url: HttpUrl
    method: Annotated[str, BeforeValidator(_http_method)] = "POST"
    idempotency_header: RequiredText = "Idempotency-Key"


__all__ = ["DeliveryOptions", "HTTPDestinationOptions"]
