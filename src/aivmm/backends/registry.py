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
            _table = table
        return _table


def register(name: str, target: str | type[Backend]) -> None:
    """Register a backend by ``"module:Class"`` or class. Duplicate names are refused."""
    table = _load_table()
    with _lock:
        if name in table or name in _instances:
            raise ConfigError(f"backend {name!r} is already registered ({table.get(name)})")
        if isinstance(target, str):
            table[name] = target
        else:
            table[name] = f"{target.__module__}:{target.__qualname__}"
            _instances[name] = target()


def unregister(name: str) -> None:
    """Remove a backend registered at run time (tests and plugins)."""
    table = _load_table()
    with _lock:
        if name in _BUILTIN:
            raise ConfigError(f"cannot unregister built-in backend {name!r}")
        table.pop(name, None)
        _instances.pop(name, None)


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
