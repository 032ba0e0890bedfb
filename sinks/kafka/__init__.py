"""The kafka destination (also ``bufstream``, Kafka-compatible): its options (:mod:`.options`), preflight check
(:mod:`.checks`) and sink (:mod:`.writer`), registered as ``PLUGIN`` (entry point ``wallaby.destinations``).
Importing this package does not import confluent_kafka: the writer is imported when a sink is built."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from sinks.kafka.checks import check_kafka_brokers
from sinks.kafka.options import KafkaDestinationOptions
from wallaby.core.registry import Plugin

if TYPE_CHECKING:
    from sinks.base import WriterSink
    from wallaby.core.identity import SourceCheck


def _writer() -> ModuleType:
    from sinks.kafka import writer  # confluent_kafka, the driver: imported when a sink is built, not with the plugin

    return writer


def make_sink(name: str, flow_id: str, options: KafkaDestinationOptions,
              source: SourceCheck | None = None) -> WriterSink:
    return _writer().make_sink(name, flow_id, options, source)


PLUGIN = Plugin(name="kafka", aliases=("bufstream",), options=KafkaDestinationOptions, make_sink=make_sink,
                checks=(check_kafka_brokers,))
