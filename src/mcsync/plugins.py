"""Finding adapters and targets through Python entry points.

Groups: `mcsync.adapters` and `mcsync.targets`. Entry points are loaded lazily, by name, when a
configuration asks for one; a plugin that fails to import is reported with its name and the error
(and, when listing, skipped with a warning) instead of breaking mcsync as a whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

ADAPTER_GROUP = "mcsync.adapters"
TARGET_GROUP = "mcsync.targets"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    group: str
    value: str                 # "module:attribute"
    distribution: str | None
    plugin: Any | None         # the loaded class, or None if it failed to load
    error: str | None


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def load(group: str, name: str) -> Any:
    """The plugin class registered as `name` in `group`; ConfigError if unknown or broken."""
    found = _entry_points(group)
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        kind = "adapter" if group == ADAPTER_GROUP else "target"
        raise ConfigError(f"unknown {kind} {name!r} (installed: {known})",
                          hint="install the package that provides it; `mcsync adapters` lists what is installed")
    try:
        return found[name].load()
    except Exception as exc:  # a broken plugin must not look like a bug in mcsync
        raise ConfigError(f"plugin {name!r} ({found[name].value}) failed to load: {exc!r}") from exc


def discover(group: str) -> list[PluginInfo]:
    """Every plugin in `group`, loaded; broken ones are listed with their error."""
    infos = []
    for name, ep in sorted(_entry_points(group).items()):
        dist = ep.dist.name if ep.dist is not None else None
        try:
            plugin, error = ep.load(), None
        except Exception as exc:
            log.warning("plugin %s (%s) failed to load: %r", name, ep.value, exc)
            plugin, error = None, repr(exc)
        infos.append(PluginInfo(name, group, ep.value, dist, plugin, error))
    return infos
