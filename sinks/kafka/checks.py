"""The Kafka (and Bufstream) destination's free preflight check (:mod:`dataflows.preflight`): a metadata request
naming no topic, so nothing is auto-created."""

from __future__ import annotations

import logging

from sinks.kafka.options import KafkaDestinationOptions
from wallaby.core.errors import FieldProblem, TransientSinkError, redact_dsn
from wallaby.core.options import join_path
from wallaby.core.spec import Endpoint

KAFKA_TIMEOUT = 5.0  # seconds for the brokers' metadata

_QUIET = logging.getLogger("wallaby.preflight.librdkafka")  # librdkafka's own log lines, not for the user
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def check_kafka_brokers(i: int, dest: Endpoint, opts: KafkaDestinationOptions) -> list[FieldProblem]:
    """The brokers answer a metadata request (no topic named: nothing is auto-created), else a
    :class:`TransientSinkError` naming them."""
    # confluent_kafka (the driver) is imported when the check runs, not with the plugin
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    field = join_path("destinations", i, "options", "brokers")
    brokers = redact_dsn(",".join(opts.brokers))
    try:
        admin = AdminClient({"bootstrap.servers": ",".join(opts.brokers), "logger": _QUIET,
                             "error_cb": lambda err: None,
                             "socket.connection.setup.timeout.ms": int(KAFKA_TIMEOUT * 1000)})
    except (KafkaException, ValueError, TypeError) as exc:
        return [FieldProblem(field, f"{brokers}: not a usable broker list ({exc})")]
    try:
        metadata = admin.list_topics(timeout=KAFKA_TIMEOUT)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        why = err.str() if hasattr(err, "str") else str(err)
        raise TransientSinkError(dest.name, f"cannot reach brokers {brokers} ({field}) within"
                                            f" {KAFKA_TIMEOUT:g}s: {why}") from None
    if not metadata.brokers:
        raise TransientSinkError(dest.name, f"brokers {brokers} ({field}) answered with no broker")
    return []


__all__ = ["KAFKA_TIMEOUT", "check_kafka_brokers"]
