# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/plugins/__init__.py: general plugins are the `vllm.general_plugins`
entry points, filtered by VLLM_PLUGINS (a comma-separated list of plugin names; unset: all),
loaded and called once per process, as upstream does."""
import logging
import os
from importlib.metadata import entry_points
from typing import Any, Callable

logger = logging.getLogger(__name__)

DEFAULT_PLUGINS_GROUP = "vllm.general_plugins"

# make sure one process only loads plugins once
plugins_loaded = False


def _allowed_plugins():
    # vllm/envs.py: VLLM_PLUGINS is None when unset, else the names split on ','.
    value = os.environ.get("VLLM_PLUGINS")
    return None if value is None else value.split(",")


def load_plugins_by_group(group: str) -> dict[str, Callable[[], Any]]:
    allowed_plugins = _allowed_plugins()
    discovered_plugins = entry_points(group=group)
    if len(discovered_plugins) == 0:
        logger.debug("No plugins for group %s found.", group)
        return {}
    plugins: dict[str, Callable[[], Any]] = {}
    for plugin in discovered_plugins:
        if allowed_plugins is None or plugin.name in allowed_plugins:
            try:
                plugins[plugin.name] = plugin.load()
            except Exception:
                logger.exception("Failed to load plugin %s", plugin.name)
    return plugins


def load_general_plugins():
    """WARNING: plugins can be loaded for multiple times in different
    processes. They should be designed in a way that they can be loaded
    multiple times without causing issues.
    """
    global plugins_loaded
    if plugins_loaded:
        return
    plugins_loaded = True
    plugins = load_plugins_by_group(group=DEFAULT_PLUGINS_GROUP)
    # general plugins, we only need to execute the loaded functions
    for func in plugins.values():
        func()
