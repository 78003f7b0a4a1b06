"""The probe registry: a lazy table from probe name to ``"module:function"`` plus the
``aivmm.probes`` entry-point group (an :class:`aivmm._lazy.LazyTable`, as the backend registry is).
A probe module is imported only when discovery runs it.

A probe is a callable taking no arguments and returning a :class:`ProbeReport`; it never raises
(discovery still guards it) and answers "absent: <why>" when it finds nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from aivmm._lazy import LazyTable
from aivmm.devices._types import ProbeReport
from aivmm.errors import ConfigError

ENTRY_POINT_GROUP = "aivmm.probes"
Probe = Callable[[], ProbeReport]

_TABLE: LazyTable[Probe] = LazyTable(
    "probe",
    ENTRY_POINT_GROUP,
    {
        "cpu": "aivmm.devices._cpu:probe",
        "nvidia": "aivmm.devices._nvidia:probe",
        "amd": "aivmm.devices._amd:probe",
        "intel": "aivmm.devices._intel:probe",
    },
    form="module:function",
    reserved=("simulated",),  # the simulated probe reads AIVMM_SIMULATE in discovery itself
)


@dataclasses.dataclass(frozen=True)
class ProbeEntry:
    name: str
    target: str  # "module:function" (or the qualified name of a callable registered at run time)
    builtin: bool


def register(name: str, target: str | Probe) -> None:
    """Add a probe by ``"module:function"`` or callable. Duplicate names are refused."""
    _TABLE.register(name, target)


def unregister(name: str) -> None:
    _TABLE.unregister(name)


def refresh() -> None:
    """Re-read the entry-point group; keeps register()ed probes."""
    _TABLE.refresh()


def names() -> list[str]:
    return _TABLE.names()


def entries() -> list[ProbeEntry]:
    return [ProbeEntry(name, target, name in _TABLE.builtin) for name, target in _TABLE.items()]


def _callable(name: str) -> Callable[[Any], Probe]:
    def check(fn: Any) -> Probe:
        if not callable(fn):
            raise ConfigError(f"probe {name!r} ({dict(_TABLE.items())[name]}) is not callable")
        return fn

    return check


def resolve(name: str) -> Probe:
    """The probe callable; raises ConfigError for an unknown name, ImportError if it cannot load."""
    if name not in _TABLE.names():
        raise ConfigError(f"unknown probe {name!r}; known: {', '.join(_TABLE.names())}")
    return _TABLE.resolve(name, _callable(name))
