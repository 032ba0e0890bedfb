"""USAGE.md "Kafka Destination" and "Bufstream Destination" (Kafka-compatible: the same options)."""

from __future__ import annotations

from pydantic import model_validator

from wallaby.core.destination_options import DestinationOptions
from wallaby.core.options import PositiveInt, RequiredCsvList, RequiredText, WireFormat, _set, choice


class KafkaDestinationOptions(DestinationOptions):
    """USAGE.md "Kafka Destination"; also Bufstream (Kafka-compatible)."""

    brokers: RequiredCsvList
    topic: RequiredText
    format: WireFormat = "arrow"
    compression: choice("none", "gzip", "snappy", "lz4", "zstd") = "none"
    acks: choice("all", "leader", "none", aliases={"-1": "all", "1": "leader", "0": "none"}) = "all"
    max_message_bytes: PositiveInt = 900000
    max_batch_bytes: PositiveInt | None = None  # default: max_message_bytes
    max_record_bytes: PositiveInt | None = None  # default: max_message_bytes
    oversize_policy: choice("error", "drop") = "error"

    @model_validator(mode="after")
    def _defaults(self) -> KafkaDestinationOptions:
        for name in ("max_batch_bytes", "max_record_bytes"):
            if getattr(self, name) is None:
                _set(self, name, self.max_message_bytes)
        return self


__all__ = ["KafkaDestinationOptions"]
