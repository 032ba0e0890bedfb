"""The snowpipe destination: its options (:mod:`.options`) are validated, so a flow file can be checked, but this
version has no sink for it (``make_sink=None``: refused by ``dataflows.flow.check_buildable``)."""

from __future__ import annotations

from sinks.snowpipe.options import SnowpipeDestinationOptions
from wallaby.core.registry import Plugin

PLUGIN = Plugin(name="snowpipe", options=SnowpipeDestinationOptions, make_sink=None)
