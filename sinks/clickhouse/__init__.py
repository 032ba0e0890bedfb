"""The clickhouse destination: its options (:mod:`.options`) are validated, so a flow file can be checked, but this
version has no sink for it (``make_sink=None``: refused by ``dataflows.flow.check_buildable``)."""

from __future__ import annotations

from sinks.clickhouse.options import ClickHouseDestinationOptions
from wallaby.core.registry import Plugin

PLUGIN = Plugin(name="clickhouse", options=ClickHouseDestinationOptions, make_sink=None)
