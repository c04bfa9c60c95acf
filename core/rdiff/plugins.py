"""Plugin discovery (pluggy + the ``rdiff`` entry-point group) and the three component registries.

Environment variables:

``RDIFF_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry point at all; only the modules named in ``RDIFF_PLUGINS`` (comma-separated import
    names) are loaded. Tests use this to run against an exact set of plugins.
``RDIFF_BLOCK_PLUGINS=name,name``
    never load these plugins (entry-point names, e.g. ``oct``).

A plugin that fails to import, implements an unknown hook or raises while registering is recorded in
:attr:`Plugins.broken` with its error and left out; everything else keeps working.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any

import pluggy

from rdiff import hookspecs
from rdiff.hookspecs import Entry, NameTaken, Register  # noqa: F401 - Entry is also looked up here
from rdiff.errors import UserError, did_you_mean

KINDS = ("backbone", "adaptor", "modality")
_PLURAL = {"backbone": "backbones", "adaptor": "adaptors", "modality": "modalities"}


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: list[str]


class Plugins:
    """The loaded plugins and everything they registered."""

    def __init__(self, autoload: bool | None = None, extra: list[Any] | None = None):
        self.pm = pluggy.PluginManager("rdiff")
        self.pm.add_hookspecs(hookspecs)
        self.broken: dict[str, str] = {}
        self.info: dict[str, PluginInfo] = {}
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        blocked = _csv(os.environ.get("RDIFF_BLOCK_PLUGINS"))
        for name in blocked:
            self.pm.set_blocked(name)
        if autoload is None:
            autoload = not os.environ.get("RDIFF_DISABLE_PLUGIN_AUTOLOAD")
        if autoload:
            for ep in metadata.entry_points(group="rdiff"):
                if ep.name in blocked or self.pm.has_plugin(ep.name) or ep.name in self.broken:
                    continue
                dist = getattr(ep, "dist", None)
                self._add(ep.name, ep.load, dist.name if dist else None, dist.version if dist else None)
        for module_name in _csv(os.environ.get("RDIFF_PLUGINS")):
            already = module_name in sys.modules and self.pm.is_registered(sys.modules[module_name])
            if module_name not in blocked and not self.pm.has_plugin(module_name) and not already:
                self._add(module_name, lambda m=module_name: importlib.import_module(m), *_distribution_of(module_name))
        for obj in extra or []:
            name = getattr(obj, "__name__", type(obj).__name__)
            self._add(name, lambda o=obj: o, None, None)
        self.pm.check_pending()  # every hook left registered has a spec
        for kind in KINDS:
            self._collect(kind)

    # -- loading ----------------------------------------------------------------------------------------
    def _add(self, name: str, load: Callable[[], Any], dist: str | None, version: str | None) -> None:
        try:
            plugin = load()
            unknown = [n for n, _ in inspect.getmembers(plugin) if n.startswith("rdiff_") and not hasattr(self.pm.hook, n)]
            if unknown:
                hooks = [n for n in dir(hookspecs) if n.startswith("rdiff_")]
                raise UserError(f"unknown hook '{unknown[0]}'{did_you_mean(unknown[0], hooks)}")
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
            self.broken[name] = f"{type(exc).__name__}: {exc}"
            return
        hooks = sorted(impl_name for impl_name in dir(self.pm.hook)
                       if not impl_name.startswith("_")
                       and any(i.plugin is plugin for i in getattr(self.pm.hook, impl_name).get_hookimpls()))
        module = getattr(plugin, "__name__", type(plugin).__name__)
        self.info[name] = PluginInfo(name, module, dist, version, hooks)

    def _collect(self, kind: str) -> None:
        hook = getattr(self.pm.hook, f"rdiff_register_{_PLURAL[kind]}")
        # rdiff's own plugins register first, whatever order the entry points come in: a third-party plugin
        # cannot take over a built-in name (and make existing runs of the built-in stop loading)
        builtin = {name for name, info in self.info.items() if info.distribution == "rdiff"}
        for impl in sorted(hook.get_hookimpls(), key=lambda impl: self.pm.get_name(impl.plugin) not in builtin):
            name = self.pm.get_name(impl.plugin)
            try:
                impl.function(register=Register(self.entries[kind], kind, name, origin=self.origin))
            except NameTaken as exc:
                self.broken[name] = str(exc)
            except Exception as exc:  # noqa: BLE001
                self.broken[name] = f"{type(exc).__name__} while registering {_PLURAL[kind]}: {exc}"

    def origin(self, name: str) -> str:
        """Where plugin ``name`` comes from, for messages: its distribution, or its module."""
        info = self.info.get(name)
        if info is None:
            return "unknown origin"
        if info.distribution:
            return f"distribution '{info.distribution}'" + (f" {info.version}" if info.version else "")
        return f"module '{info.module}', no distribution"

    def warn_broken(self) -> None:
        for name, error in self.broken.items():
            print(f"rdiff: plugin '{name}' failed to load and was skipped: {error}", file=sys.stderr)

    # -- lookup -----------------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Entry:
        table = self.entries[kind]
        if name in table:
            return table[name]
        installed = ", ".join(sorted(table)) or "none"
        hint = did_you_mean(name, table)
        known = catalogue().get(_PLURAL[kind], {}).get(name)
        if known:
            package, plugin = known.get("package", "rdiff"), known.get("plugin", name)
            why = (f", whose plugin '{plugin}' failed to load: {self.broken[plugin]}" if plugin in self.broken
                   else f"; check that it is installed and that its plugin '{plugin}' is not blocked (RDIFF_BLOCK_PLUGINS)")
            hint += f"; '{name}' is provided by the '{package}' package{why}"
        raise UserError(f"unknown {kind} '{name}'{hint}; installed {_PLURAL[kind]}: {installed}.")


@lru_cache(maxsize=None)
def declarations(package: str, resource: str = "plugin.yaml") -> dict[str, dict[str, dict[str, Any]]]:
    """A plugin's declarations file, parsed: ``{"backbones"|"adaptors"|"modalities": {name: {summary,
    capabilities, requires, presets}}}``, read from the ``resource`` file inside ``package``. A plugin passes
    a component's entry to ``register(name, build, config=..., **declarations(__name__)["backbones"][name])``,
    so what it says about itself (and its presets) is declared once, as data."""
    from importlib import resources

    import yaml

    text = resources.files(package).joinpath(resource).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise UserError(f"'{resource}' of plugin package '{package}' must be a mapping of backbones, adaptors "
                        f"and modalities.")
    return data


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Any]:
    """registry.yaml, shipped inside the ``rdiff`` package (a link to the repository root's): the catalogue of
    the built-in plugins, generated by tools/docgen.py from what they register. Data only, never code: it
    names the package and plugin of each built-in component, so that a component that is not loaded (its
    plugin blocked or broken) is reported with where it comes from."""
    return declarations("rdiff", "registry.yaml")


def _distribution_of(module: str) -> tuple[str | None, str | None]:
    """The distribution (and version) whose ``rdiff`` entry point is ``module``, for a plugin loaded by
    module name (``RDIFF_PLUGINS``), so a built-in keeps its priority however it was loaded."""
    for ep in metadata.entry_points(group="rdiff"):
        if ep.value == module and getattr(ep, "dist", None) is not None:
            return ep.dist.name, ep.dist.version
    return None, None


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@lru_cache(maxsize=1)
def plugins() -> Plugins:
    """The process-wide plugin set (loaded once)."""
    return Plugins()


def reset() -> None:
    """Forget the loaded plugins (tests change the environment and reload)."""
    plugins.cache_clear()
