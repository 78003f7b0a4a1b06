"""Runtimes as plugins: one adapter per runtime behind :class:`Backend`, and the registry."""

from aivmm.backends._base import Backend, Config, LoadReport, Session, Support
from aivmm.backends._info import BackendInfo, OptionEffect, distribution_versions
from aivmm.backends.registry import BackendEntry, entries, get, names, refresh, register, unregister

__all__ = [
    "Backend",
    "BackendEntry",
    "BackendInfo",
    "Config",
    "LoadReport",
    "OptionEffect",
    "Session",
    "Support",
    "distribution_versions",
    "entries",
    "get",
    "names",
    "refresh",
    "register",
    "unregister",
]
