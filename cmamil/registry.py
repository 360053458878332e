"""Plugin registry: models and aggregators found through Python entry points.

Discovery reads installed-package metadata only; a plugin's module is imported the first time the
plugin is used, and the result (or the import error) is cached. cmamil's own built-in models are
registered in its setup.cfg exactly as a third-party package registers its own.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from cmamil.errors import CmamilError, PluginError, UnknownPluginError

__all__ = [
    "GROUPS",
    "PluginInfo",
    "Registry",
    "aggregators",
    "models",
    "registry_for",
]

GROUPS = {"models": "cmamil.models", "aggregators": "cmamil.aggregators"}


@dataclass(frozen=True)
class PluginInfo:
    """What the metadata says about one registered plugin, before it is imported."""

    name: str
    kind: str
    value: str
    package: str
    version: str


class Registry:
    """Name → factory lookup over one entry-point group, imported lazily and cached."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.group = GROUPS[kind]
        self._infos: dict[str, PluginInfo] | None = None
        self._loaded: dict[str, Callable[..., Any]] = {}
        self._errors: dict[str, str] = {}

    def infos(self) -> dict[str, PluginInfo]:
        """Registered plugins by name, read from entry-point metadata (no plugin is imported)."""
        if self._infos is None:
            self._infos = self._discover()
        return self._infos

    def names(self) -> list[str]:
        """Sorted names of every registered plugin of this kind."""
        return sorted(self.infos())

    def refresh(self) -> None:
        """Forget cached metadata and imports, e.g. after installing a package in-process."""
        importlib.invalidate_caches()
        self._infos = None
        self._loaded.clear()
        self._errors.clear()

    def _discover(self) -> dict[str, PluginInfo]:
        found: dict[str, PluginInfo] = {}
        seen: set[tuple[str, str]] = set()
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            package = dist.name if dist is not None else "unknown"
            version = dist.version if dist is not None else "unknown"
            key = (package.lower().replace("_", "-"), ep.name)
            if key in seen:
                continue
            seen.add(key)
            info = PluginInfo(ep.name, self.kind, ep.value, package, version)
            previous = found.get(ep.name)
            if previous is None:
                found[ep.name] = info
                continue
            keep, other = (info, previous) if info.package == "cmamil" else (previous, info)
            warnings.warn(
                f"{self.kind[:-1]} '{ep.name}' is registered by both '{previous.package}' and "
                f"'{info.package}'; using the one from '{keep.package}' and ignoring '{other.package}'",
                stacklevel=3,
            )
            found[ep.name] = keep
        return found

    def info(self, name: str) -> PluginInfo:
        """Metadata of one plugin; an unknown name raises with close matches and the installed names."""
        infos = self.infos()
        if name in infos:
            return infos[name]
        close = difflib.get_close_matches(name, infos, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        installed = ", ".join(sorted(infos)) or "none"
        raise UnknownPluginError(
            f"no {self.kind[:-1]} named '{name}'; {hint}installed {self.kind}: {installed}"
            + (" (any timm architecture also works as 'timm:<arch>')" if self.kind == "models" else "")
        )

    def label(self, name: str) -> str:
        """How messages name a plugin: "model 'name' from package 'package'"."""
        return f"{self.kind[:-1]} '{name}' from package '{self.info(name).package}'"

    def build(self, name: str, options: dict[str, Any], **arguments: Any) -> Any:
        """Call the factory of `name` with the contract's `arguments` and the user's `options`; whatever the
        factory raises (other than a CmamilError, already a user message) becomes a PluginError naming it."""
        factory = self.load(name)
        try:
            return factory(**arguments, **options)
        except CmamilError:
            raise
        except TypeError as exc:
            raise PluginError(f"{self.label(name)} rejected its options {sorted(options)}: {exc}") from exc
        except ValueError as exc:
            raise PluginError(f"{self.label(name)}: {exc}") from exc
        except Exception as exc:  # a plugin's own failure is reported with its name, never as a bare traceback
            raise PluginError(f"{self.label(name)} failed to build: {type(exc).__name__}: {exc}") from exc

    def load(self, name: str) -> Callable[..., Any]:
        """Import and return the factory of `name`; a failing import raises PluginError naming the package."""
        if name in self._loaded:
            return self._loaded[name]
        info = self.info(name)
        if name in self._errors:
            raise PluginError(self._errors[name])
        module_name, _, attr = info.value.partition(":")
        try:
            obj: Any = importlib.import_module(module_name.strip())
            for part in attr.strip().split(".") if attr else []:
                obj = getattr(obj, part)
        except Exception as exc:  # a broken plugin must never break the host
            message = (
                f"{self.label(name)} {info.version} failed to load ({info.value}): {type(exc).__name__}: {exc}"
            )
            self._errors[name] = message
            raise PluginError(message) from exc
        if not callable(obj):
            message = f"{self.label(name)} is not callable ({info.value})"
            self._errors[name] = message
            raise PluginError(message)
        self._loaded[name] = obj
        return obj

    def status(self, name: str) -> str:
        """'ok' when the plugin imports, else 'broken: <reason>'."""
        try:
            self.load(name)
        except PluginError as exc:
            return f"broken: {exc}"
        return "ok"


models = Registry("models")
aggregators = Registry("aggregators")


def registry_for(kind: str) -> Registry:
    """The registry of `kind` ('models' or 'aggregators')."""
    return {"models": models, "aggregators": aggregators}[kind]
