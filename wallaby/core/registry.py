"""The destination registry: one :class:`Plugin` record per destination type, found through entry points.

A destination is one package, ``sinks/<name>/``, whose ``__init__.py`` defines
``PLUGIN`` (a :class:`Plugin`) and is declared in ``pyproject.toml``::

    [project.entry-points."wallaby.destinations"]
    duckdb = "sinks.duckdb:PLUGIN"

The registry loads the group ``wallaby.destinations`` once (on first use) and
answers by destination type (a plugin's ``name`` or one of its ``aliases``:
``bufstream`` is the Kafka plugin). Core cannot import ``sinks`` (a higher
layer); this is how the flow spec finds a destination's options model, and how
the dataflow finds its sink, its stored position and its preflight checks.

Importing a plugin's package must stay light: ``make_sink``, ``stored_position``,
``discard_position`` and the checks import the destination's driver (duckdb,
confluent_kafka, boto3, grpc) only when called.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from wallaby.core.destination_options import DestinationOptions
from wallaby.core.errors import FieldProblem, TerminalError

if TYPE_CHECKING:
    from wallaby.core.changes import Position
    from wallaby.core.identity import SourceCheck, SourceIdentity

GROUP = "wallaby.destinations"
REINSTALL = "reinstall wallaby (`make setup`, or `.venv/bin/pip install -e .`)"


class SinkMaker(Protocol):
    """``make_sink(name, flow_id, options, source=None) -> bytewax sink`` (a :class:`sinks.base.WriterSink`)."""

    def __call__(self, name: str, flow_id: str, options: Any, source: SourceCheck | None = None) -> Any: ...


# stored_position(name, flow_id, options) -> (its high-water, the source it came from, where it is) | None:
# read without creating anything. discard_position(name, flow_id, options): forget it (a reset).
StoredPosition = Callable[[str, str, Any], "tuple[Position, SourceIdentity | None, str] | None"]
DiscardPosition = Callable[[str, str, Any], None]
# A free preflight check: (index in the flow's destinations, the destination Endpoint, its typed options) ->
# problems (raise TransientSinkError for "could not ask"). Never creates anything.
DestinationCheck = Callable[[int, Any, Any], list[FieldProblem]]
# resolve_staging(name, flow_id, options, tables=None, schemas=None) -> what was resolved, one record per table
# (sinks.sql.staging.ResolvedTable: destination, table, staging_table, rows, resolution,
# staged): move the rows a backfill staged (batch_mode=staging) into the target tables by batch_resolution.
ResolveStaging = Callable[..., list[Any]]


@dataclass(frozen=True)
class Plugin:
    """One destination type: its options model, its sink, and its optional hooks."""

    name: str
    options: type[DestinationOptions]
    # None: this version validates the destination's options but has no sink for it (refused by
    # dataflows.buildable.check_buildable as "not available in this version").
    make_sink: SinkMaker | None
    aliases: tuple[str, ...] = ()
    stored_position: StoredPosition | None = None
    discard_position: DiscardPosition | None = None
    checks: tuple[DestinationCheck, ...] = ()
    # None: the destination has no staging tables (dataflows.staging.resolve_flow_staging skips it).
    resolve_staging: ResolveStaging | None = None

    def __post_init__(self) -> None:
        if (self.stored_position is None) != (self.discard_position is None):
            raise TypeError(f"destination plugin {self.name!r}: stored_position and discard_position come together"
                            " (a stored position that is judged must be discardable on a reset)")

    @property
    def types(self) -> tuple[str, ...]:
        """Every destination type this plugin answers to: its name, then its aliases."""
        return (self.name, *self.aliases)


class RegistryError(TerminalError):
    """The installed destination plugins are unusable: a stale install, or a plugin that does not load."""


def _declared() -> dict[str, str] | None:
    """The ``wallaby.destinations`` table of the source tree's pyproject.toml (a checkout or an editable install:
    what the installed metadata must match), or None when wallaby runs from an installed wheel."""
    path = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    project = data.get("project") or {}
    if project.get("name") != "wallaby":
        return None
    return dict((project.get("entry-points") or {}).get(GROUP) or {})


def _load(ep: EntryPoint) -> Plugin:
    try:
        plugin = ep.load()
    except ImportError as exc:
        raise RegistryError(f"destination plugin {ep.name!r} ({ep.value}) does not load ({exc}); if it was moved or"
                            f" renamed, {REINSTALL}") from exc
    if not isinstance(plugin, Plugin):
        raise RegistryError(f"destination plugin {ep.name!r} ({ep.value}) is a {type(plugin).__name__}, not a"
                            " wallaby.core.registry.Plugin")
    if plugin.name != ep.name:
        raise RegistryError(f"destination plugin {ep.name!r} ({ep.value}) is named {plugin.name!r}; the entry"
                            " point and the plugin must have the same name")
    return plugin


@functools.cache
def _registry() -> dict[str, Plugin]:
    """Destination type (name or alias) -> its plugin, loaded once."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            raise RegistryError(f"two destination plugins are named {ep.name!r} ({found[ep.name].value},"
                                f" {ep.value}); uninstall one")
        found[ep.name] = ep
    declared = _declared()
    stale = sorted(set(declared) - set(found)) if declared is not None else []
    if not found or stale:
        missing = ", ".join(stale) if stale else "none"
        raise RegistryError(f"the installed wallaby is older than its code: destination plugins not registered"
                            f" ({GROUP} entry points: {missing}); {REINSTALL}")
    by_type: dict[str, Plugin] = {}
    for ep in found.values():
        plugin = _load(ep)
        for t in plugin.types:
            if t in by_type:
                raise RegistryError(f"destination type {t!r} is claimed by the plugins {by_type[t].name!r} and"
                                    f" {plugin.name!r}")
            by_type[t] = plugin
    return by_type


def plugin(type_name: str) -> Plugin | None:
    """The plugin of a destination type (a name or an alias, any case), or None when no plugin has that type."""
    return _registry().get(type_name.strip().lower())


def names() -> list[str]:
    """Every destination type, aliases included, sorted."""
    return sorted(_registry())


def plugins() -> list[Plugin]:
    """Every plugin once, by name."""
    return sorted({p.name: p for p in _registry().values()}.values(), key=lambda p: p.name)


def options_models() -> dict[str, type[DestinationOptions]]:
    """Destination type (aliases included) -> its options model."""
    return {t: p.options for t, p in sorted(_registry().items())}


__all__ = ["GROUP", "DestinationCheck", "DiscardPosition", "Plugin", "RegistryError", "ResolveStaging", "SinkMaker",
           "StoredPosition", "names", "options_models", "plugin", "plugins"]
