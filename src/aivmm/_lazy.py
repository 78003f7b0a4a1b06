"""Lazy names: a table from a public name to the ``"module:attr"`` that defines it, imported on first use.

The one mechanism behind every deferred import of aivmm:

- a package ``__init__`` lists the public names that would import something heavy (a runtime,
  numpy-heavy tooling, Ray, prometheus-client) or close an import cycle in a ``{name: "module:attr"}``
  table and sets ``__getattr__ = LazyExports(__name__, TABLE)``; its other names are imported
  eagerly. The package still names each lazy export under ``TYPE_CHECKING`` so type checkers see
  the real object;
- a plugin registry (backends, device probes) is a :class:`LazyTable`: built-in
  ``"module:attr"`` entries plus an entry-point group, imported when a name is resolved.

``tests/unit/test_layering.py`` checks that every table entry resolves to a name in its package's
``__all__``, and that no module imports another package's private module.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from aivmm.errors import ConfigError

T = TypeVar("T")


def load(target: str) -> Any:
    """The object ``"module:attr"`` names (``attr`` may be dotted); ``"module"`` alone is the module.

    Raises ImportError when the module cannot be imported and AttributeError when it lacks ``attr``."""
    module_name, sep, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    if not sep:
        return obj
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class LazyExports:
    """A module-level ``__getattr__`` for ``package`` resolving the names of ``table`` on first use.

    A resolved name is stored in the package namespace, so later look-ups are plain attribute reads
    and this is not called again. ``table`` stays readable (the layering test checks it)."""

    def __init__(self, package: str, table: Mapping[str, str]) -> None:
        self.package = package
        self.table: Mapping[str, str] = dict(table)

    def __call__(self, name: str) -> Any:
        target = self.table.get(name)
        if target is None:
            raise AttributeError(f"module {self.package!r} has no attribute {name!r}")
        value = load(target)
        setattr(sys.modules[self.package], name, value)
        return value


def entry_points(group: str) -> Iterable[Any]:
    """The installed entry points of ``group``.

    importlib.metadata (and logging, for the warning about a shadowing entry point) are imported
    only when a registry is first read: together they cost ~100x what ``import aivmm`` does."""
    from importlib.metadata import entry_points as installed

    return installed(group=group)


def label(target: object) -> str:
    """The ``"module:attr"`` a registered object would be looked up by (a string is its own label)."""
    if isinstance(target, str):
        return target
    named = target if hasattr(target, "__qualname__") else type(target)
    return f"{named.__module__}:{named.__qualname__}"


class LazyTable(Generic[T]):
    """A registry of plugins: name -> ``"module:attr"``, the built-in entries plus an entry-point group.

    The backend registry (``aivmm.backends``) and the probe registry (``aivmm.probes``) are both
    one of these. A target is imported only when its name is resolved; duplicate names are refused
    (an entry point cannot shadow a built-in: it is logged and ignored); names registered at run
    time, as a string or as the object itself, survive :meth:`refresh`, which re-reads the entry
    points. Order is built-ins, then entry points, then run-time names.
    """

    def __init__(
        self,
        kind: str,
        group: str,
        builtin: Mapping[str, str],
        *,
        form: str = "module:attr",
        reserved: Iterable[str] = (),
    ) -> None:
        self.kind = kind  # "backend", "probe": named in errors
        self.form = form  # how a target is spelled, for errors: "module:Class"
        self.group = group
        self.builtin: Mapping[str, str] = dict(builtin)
        self._reserved = frozenset(reserved)  # names nobody may register (e.g. the simulated probe)
        self._lock = threading.RLock()
        self._table: dict[str, object] | None = None  # name -> "module:attr" or the object itself
        self._runtime: dict[str, object] = {}
        self._resolved: dict[str, T] = {}

    def _targets(self) -> dict[str, object]:
        with self._lock:
            if self._table is None:
                table: dict[str, object] = dict(self.builtin)
                for ep in entry_points(group=self.group):
                    if ep.name in table or ep.name in self._reserved:
                        import logging

                        logging.getLogger(__name__).warning(
                            "ignoring %s entry point %s=%s: name already registered", self.kind, ep.name, ep.value
                        )
                        continue
                    table[ep.name] = ep.value
                for name, target in self._runtime.items():
                    table.setdefault(name, target)
                self._table = table
            return self._table

    def refresh(self) -> None:
        """Re-read the entry-point group (a plugin installed while the process runs)."""
        with self._lock:
            self._table = None
            for name in [n for n in self._resolved if n not in self.builtin and n not in self._runtime]:
                del self._resolved[name]
        self._targets()

    def register(self, name: str, target: object) -> None:
        """Add ``name`` as ``"module:attr"`` or as the object itself; a name already there is refused."""
        with self._lock:
            table = self._targets()
            if name in table or name in self._reserved:
                raise ConfigError(f"{self.kind} {name!r} is already registered ({label(table.get(name, name))})")
            if isinstance(target, str) and ":" not in target:
                raise ConfigError(f"{self.kind} target {target!r} must be '{self.form}'")
            table[name] = self._runtime[name] = target

    def unregister(self, name: str) -> None:
        """Remove a name registered at run time or by entry point (tests, plugins); built-ins stay."""
        with self._lock:
            if name in self.builtin:
                raise ConfigError(f"cannot unregister built-in {self.kind} {name!r}")
            self._targets().pop(name, None)
            self._runtime.pop(name, None)
            self._resolved.pop(name, None)

    def names(self) -> list[str]:
        return list(self._targets())

    def items(self) -> list[tuple[str, str]]:
        """Every (name, ``"module:attr"`` label), in table order."""
        return [(name, label(target)) for name, target in self._targets().items()]

    def resolve(self, name: str, make: Callable[[Any], T]) -> T:
        """The object ``name`` stands for, imported on first use and kept; ``make`` turns the imported
        object into the one kept (a class into its instance, after checking it).

        Raises KeyError for an unknown name, ImportError/AttributeError when the target cannot be
        loaded, and whatever ``make`` raises."""
        with self._lock:
            if name in self._resolved:
                return self._resolved[name]
            target = self._targets()[name]
        loaded = load(target) if isinstance(target, str) else target
        value = make(loaded)
        with self._lock:
            return self._resolved.setdefault(name, value)
