"""Finding plugins (the ``callbot.plugins`` entry point group) and preparing the enabled ones
from ``[plugins]`` in the config."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from bot.config import PluginsConfig, validate_section
from bot.errors import ConfigError
from bot.extras import missing_extras
from bot.plugin import Plugin

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "callbot.plugins"
#: Keys of a [plugins.<name>] table that the bot handles itself.
FRAMEWORK_KEYS = ("rooms",)


@dataclass(frozen=True)
class LoadedPlugin:
    cls: type[Plugin]
    config: Any
    rooms: frozenset[str] | None  # None: every room

    def make(self) -> Plugin:
        # A plugin with a Config takes it in __init__ (Plugin.Config): not Plugin's signature.
        make: Callable[..., Plugin] = self.cls
        return make(self.config) if self.cls.Config is not None else make()

    def runs_in(self, room_id: str) -> bool:
        return self.rooms is None or room_id in self.rooms


def available_plugins() -> dict[str, Any]:
    """Installed plugins by name (entry points, not yet imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugins(
    cfg: PluginsConfig, extra: dict[str, type[Plugin]] | None = None
) -> list[LoadedPlugin]:
    """The enabled plugins, imported and configured; ConfigError names what is wrong."""
    found: dict[str, Any] = {**available_plugins(), **(extra or {})}
    problems: list[str] = []
    loaded = []
    for name in cfg.enabled:
        if name not in found:
            close = difflib.get_close_matches(name, sorted(found), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"plugins.enabled: no plugin named {name!r} is installed{hint}")
            continue
        try:
            cls = found[name] if isinstance(found[name], type) else found[name].load()
        except Exception as e:  # a broken third-party package
            problems.append(f"plugins.enabled: plugin {name!r} failed to load: {e}")
            continue
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            problems.append(f"plugins.enabled: {name!r} is not a bot.plugin.Plugin subclass")
            continue
        if missing := missing_extras(cls.requires_extras):
            problems.append(f"plugins.enabled: plugin {name!r} {missing}")
            continue
        section = dict(cfg.sections.get(name, {}))
        rooms = section.pop("rooms", None)
        if rooms is not None and (
            not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms)
        ):
            problems.append(f"plugins.{name}.rooms: must be a list of room IDs")
            continue
        try:
            config = _plugin_config(cls, name, section, cfg)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        loaded.append(LoadedPlugin(cls, config, frozenset(rooms) if rooms is not None else None))
    for name in cfg.sections:
        if name not in found:
            problems.append(f"plugins.{name}: no plugin named {name!r} is installed")
    if problems:
        raise ConfigError(problems)
    return loaded


def _plugin_config(cls: type[Plugin], name: str, section: dict, cfg: PluginsConfig) -> Any:
    if cls.Config is None:
        if section:
            key = next(iter(section))
            raise ConfigError([f"plugins.{name}.{key}: unknown key (the plugin takes no options)"])
        return None
    return validate_section(cls.Config, section, f"plugins.{name}.", cfg.base_dir)
