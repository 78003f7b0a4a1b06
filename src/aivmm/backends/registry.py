"""The backend registry: a lazy table from name to ``"module:Class"`` plus the ``aivmm.backends``
entry-point group (an :class:`aivmm._lazy.LazyTable`). A module is imported only when its name is
looked up."""

from __future__ import annotations

import dataclasses
from typing import Any

from aivmm._lazy import LazyTable
from aivmm.backends._base import Backend, Support
from aivmm.errors import BackendUnavailableError, ConfigError

ENTRY_POINT_GROUP = "aivmm.backends"

_TABLE: LazyTable[Backend] = LazyTable(
    "backend",
    ENTRY_POINT_GROUP,
    {
        "onnxruntime": "aivmm.backends.ort:OrtBackend",
        "openvino": "aivmm.backends.openvino:OpenVinoBackend",
        "torch": "aivmm.backends.torch:TorchBackend",
        "simulated": "aivmm.backends.simulated:SimulatedBackend",
    },
    form="module:Class",
)


@dataclasses.dataclass(frozen=True)
class BackendEntry:
    name: str
    target: str
    available: Support


def refresh() -> None:
    """Re-read the entry-point group (a plugin installed while the process runs); keeps register()ed names."""
    _TABLE.refresh()


def register(name: str, target: str | type[Backend]) -> None:
    """Register a backend by ``"module:Class"`` or class. Duplicate names are refused."""
    if not isinstance(target, str) and not (isinstance(target, type) and issubclass(target, Backend)):
        raise ConfigError(f"backend {name!r}: {target!r} is not a Backend subclass")
    _TABLE.register(name, target)  # a class is instantiated by get()


def unregister(name: str) -> None:
    """Remove a backend registered at run time (tests and plugins)."""
    _TABLE.unregister(name)


def names() -> list[str]:
    return sorted(_TABLE.names())


def _instantiate(name: str, target: str) -> Any:
    def make(cls: Any) -> Backend:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise BackendUnavailableError(f"backend {name!r} ({target}) is not an aivmm.backends.Backend subclass")
        return cls()

    return make


def get(name: str) -> Backend:
    """The backend instance for ``name``; raises if unknown or if its module cannot be imported."""
    targets = dict(_TABLE.items())
    if name not in targets:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(sorted(targets))}")
    try:
        return _TABLE.resolve(name, _instantiate(name, targets[name]))
    except (ImportError, AttributeError) as exc:
        raise BackendUnavailableError(f"backend {name!r} ({targets[name]}) cannot be imported: {exc}") from exc


def entries() -> list[BackendEntry]:
    """Every registered backend with whether it is usable here and, if not, why."""
    out = []
    for name, target in sorted(_TABLE.items()):
        try:
            support = get(name).available()
        except BackendUnavailableError as exc:
            support = Support.no(str(exc))
        out.append(BackendEntry(name, target, support))
    return out


def available() -> list[Backend]:
    return [get(e.name) for e in entries() if e.available.ok]
