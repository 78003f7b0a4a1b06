"""The backend registry: a lazy table from name to ``"module:Class"`` plus the ``aivmm.backends``
entry-point group. A module is imported only when its name is looked up."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from importlib.metadata import entry_points

from aivmm.backends._base import Backend, Support
from aivmm.errors import BackendUnavailableError, ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "aivmm.backends"

_BUILTIN: dict[str, str] = {
    "onnxruntime": "aivmm.backends.ort:OrtBackend",
    "openvino": "aivmm.backends.openvino:OpenVinoBackend",
    "torch": "aivmm.backends.torch:TorchBackend",
    "simulated": "aivmm.backends.simulated:SimulatedBackend",
}

_lock = threading.Lock()
_table: dict[str, str] | None = None
_instances: dict[str, Backend] = {}
_runtime: dict[str, str] = {}  # names added with register(), kept across refresh()


@dataclasses.dataclass(frozen=True)
class BackendEntry:
    name: str
    target: str
    available: Support


def _load_table() -> dict[str, str]:
    global _table
    with _lock:
        if _table is None:
            table = dict(_BUILTIN)
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in table:
                    log.warning("ignoring entry point %s=%s: name already registered", ep.name, ep.value)
                    continue
                table[ep.name] = ep.value
            for name, target in _runtime.items():
                table.setdefault(name, target)
            _table = table
        return _table


def refresh() -> None:
    """Re-read the entry-point group (a plugin installed while the process runs); keeps register()ed names."""
    global _table
    with _lock:
        _table = None
        for name in [n for n in _instances if n not in _BUILTIN and n not in _runtime]:
            del _instances[name]
    _load_table()


def register(name: str, target: str | type[Backend]) -> None:
    """Register a backend by ``"module:Class"`` or class. Duplicate names are refused."""
    table = _load_table()
    with _lock:
        if name in table or name in _instances:
            raise ConfigError(f"backend {name!r} is already registered ({table.get(name)})")
        if isinstance(target, str):
            if ":" not in target:
                raise ConfigError(f"backend target {target!r} must be 'module:Class'")
            table[name] = target
        else:
            if not (isinstance(target, type) and issubclass(target, Backend)):
                raise ConfigError(f"backend {name!r}: {target!r} is not a Backend subclass")
            table[name] = f"{target.__module__}:{target.__qualname__}"
            _instances[name] = target()
        _runtime[name] = table[name]


def unregister(name: str) -> None:
    """Remove a backend registered at run time (tests and plugins)."""
    table = _load_table()
    with _lock:
        if name in _BUILTIN:
            raise ConfigError(f"cannot unregister built-in backend {name!r}")
        table.pop(name, None)
        _instances.pop(name, None)
        _runtime.pop(name, None)


def names() -> list[str]:
    return sorted(_load_table())


def get(name: str) -> Backend:
    """The backend instance for ``name``; raises if unknown or if its module cannot be imported."""
    table = _load_table()
    if name not in table:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(sorted(table))}")
    with _lock:
        inst = _instances.get(name)
    if inst is not None:
        return inst
    module_name, _, attr = table[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise BackendUnavailableError(f"backend {name!r} ({table[name]}) cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendUnavailableError(f"backend {name!r} ({table[name]}) is not an aivmm.backends.Backend subclass")
    inst = cls()
    with _lock:
        _instances.setdefault(name, inst)
        return _instances[name]


def entries() -> list[BackendEntry]:
    """Every registered backend with whether it is usable here and, if not, why."""
    out = []
    for name, target in sorted(_load_table().items()):
        try:
            support = get(name).available()
        except BackendUnavailableError as exc:
            support = Support.no(str(exc))
        out.append(BackendEntry(name, target, support))
    return out


def available() -> list[Backend]:
    return [get(e.name) for e in entries() if e.available.ok]
